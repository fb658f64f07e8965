"""The house rules of the code, checked: small modules, stages that do not import
stages, no import circle, one owner for run-file, table and column names, and a
``status`` command that stays light."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

from legodask import schema as S
from legodask import stages, store

PKG = Path(__file__).resolve().parents[1] / "legodask"
MODULES = sorted(PKG.rglob("*.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


NAMES = {module_name(p): p for p in MODULES}


def imports(path: Path) -> set[str]:
    """legodask modules that ``path`` imports, at any depth of its code."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for a in node.names:
                sub = f"{base}.{a.name}"
                found.add(sub if sub in NAMES else base)
    return {m for m in found if m in NAMES and m != name}


def test_no_module_over_500_lines():
    long = {module_name(p): n for p in MODULES if (n := len(p.read_text().splitlines())) > 500}
    assert not long


def test_stages_do_not_import_stages():
    mods = [p for p in MODULES if p.parent.name == "stages" and p.name != "__init__.py"]
    assert len(mods) >= 10
    for p in mods:
        others = {m for m in imports(p) if m.startswith("legodask.stages.")}
        assert not others, f"{module_name(p)} imports {others}"


def test_no_import_circle():
    graph = {name: imports(path) for name, path in NAMES.items()}
    # a package's __init__ importing its own submodules is its face, not a circle
    for name in graph:
        graph[name] = {m for m in graph[name] if not name.startswith(m + ".")}
    state: dict[str, int] = {}

    def visit(n: str, trail: list[str]) -> None:
        state[n] = 1
        for m in graph[n]:
            assert state.get(m) != 1, "import circle: " + " -> ".join([*trail, n, m])
            if m not in state:
                visit(m, [*trail, n])
        state[n] = 2

    for n in graph:
        if n not in state:
            visit(n, [])


def test_one_stage_registry():
    from legodask import cli, pipeline

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == set(stages.STAGES)
    for name, stage in stages.STAGES.items():
        assert stage.module.startswith("legodask.stages."), name
    assert not hasattr(cli, "COMMANDS")
    assert getattr(pipeline, "STAGES", stages.STAGES) is stages.STAGES


def test_status_stays_light(tmp_path):
    code = ("import sys; from legodask.cli import main; rc = main(['status', '--run', sys.argv[1]]);"
            "heavy = [m for m in sys.modules if m.split('.')[0] in ('torch', 'pyxtal')"
            " or m.startswith('distributed')]; print('HEAVY', heavy); sys.exit(rc)")
    run = tmp_path / "run"
    (run / "logs").mkdir(parents=True)
    out = subprocess.run([sys.executable, "-c", code, str(run)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout


def _literals(path: Path) -> list[str]:
    """The string constants of a module's code (its docstrings left out)."""
    tree = ast.parse(path.read_text())
    docs = {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and node.body and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)}
    return [n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs]


def test_run_file_names_only_in_store():
    files = set(store.RUN_FILES)
    assert {"metrics.json", "features.zarr", "report.html"} <= files
    pattern = re.compile("|".join(re.escape(f) for f in sorted(files)))
    found = {}
    for p in MODULES:
        if p.name == "store.py":
            continue
        hits = [s for s in _literals(p) if pattern.search(s)]
        if hits:
            found[module_name(p)] = hits
    assert not found, f"run-file names outside store.py: {found}"


# Words that are column or table names but mean something else where they stand.
OTHER_MEANINGS = {
    "legodask.models": {"loss", "seconds"},       # keys of a model's training history
    "legodask.stages": {"train", "known"},        # command names in the registry
    "legodask.sources.readers": {"id"},           # an ASE database's own column
    "legodask": {"source"},                       # where a table or features come from
}


def test_table_and_column_names_only_in_schema():
    names = set(S.TABLES) | set(S.ALL_COLUMNS)
    assert {"samples", "ranked", "valid_xtal", "spg", "fp_spg", "is_new"} <= names
    sql_table = re.compile(r"\b(?:FROM|JOIN|from|join)\s+\"?(\w+)")
    found = {}
    for p in MODULES:
        if p.name == "schema.py":
            continue
        name = module_name(p)
        allowed = set().union(*(words for prefix, words in OTHER_MEANINGS.items()
                                if name == prefix or name.startswith(prefix + ".")))
        hits = [s for s in _literals(p) if s in names - allowed]
        hits += [t for s in _literals(p) for t in sql_table.findall(s) if t in S.TABLES]
        if hits:
            found[module_name(p)] = sorted(set(hits))
    assert not found, f"table or column names outside schema.py: {found}"
