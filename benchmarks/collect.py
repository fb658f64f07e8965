"""Assemble benchmarks/README.md from the texts the benchmarks wrote in results/.

    python benchmarks/collect.py

One section per benchmark, in a fixed order.  A benchmark with several result files
(another model, another stage) gets one subsection per file.  Each section starts
with the commands that make its inputs from a clean checkout; the results' own
"Command:" lines then rerun the measurement.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).parent
RESULTS = HERE / "results"

INTRO = """# Benchmarks

Each script measures legodask beside its baseline in the same run. It writes
`results/<name>.json` and `results/<name>.md`; this page is assembled from the
latter by `python benchmarks/collect.py`.

Machine: 2 CPU cores of a shared machine, no GPU. Other jobs shared the cores
during the runs, so rates per core are lower bounds. Ratios are measured side by
side and hold.

To rerun a benchmark from a clean checkout: `make venv`, then the commands of its
section with `.venv/bin` on the PATH. The training data is found as for the tests
(`LEGODASK_SACADA_DB`, see the top-level README). Run directories go under `runs/`,
which git ignores.

The GPU checks (batched pre-relaxation per minute, sampling against ctgan's
`sample` on the same GPU, the rank stage's batched CHGNet relaxer against CHGNet
one structure at a time on a CPU core, a round of the optimize stage) are
prepared as one device run (`benchmarks/gpu.py`, `bash benchmarks/gpu.sh`), not
yet measured.
"""

# The v1 training set of the paper (Table I), shared by the runs below.
V1 = ["legodask ingest --run {run}",
      "legodask augment --run {run} --preset v1 --check env"]


@dataclass(frozen=True)
class Section:
    """One benchmark: its title, its result files in order, and the commands that
    make its inputs (empty when the script makes its own)."""

    name: str
    title: str
    parts: tuple[str, ...]
    setup: list[str] = field(default_factory=list)


SECTIONS = [
    Section("decode", "decode: rows into crystals, against pyxtal's decoder", ("decode",)),
    Section("augment", "augment: the paper's training sets (Table I), speed and memory",
            ("augment",)),
    Section("prerelax", "prerelax: towards the sp2 environment, against PyXtal's chain",
            ("prerelax",)),
    Section("generate", "generate: our GAN and VAE against the ctgan package",
            ("generate", "generate_stage"),
            ["python3 -m venv .venv-ctgan && .venv-ctgan/bin/pip install 'ctgan>=0.10'",
             "legodask run pipelines/quickstart.toml --run runs/quickstart --workers 1"
             "   # for generate_stage"]),
    Section("validity", "validity: why sampled rows are invalid",
            ("validity-v1", "validity-v1-gan", "validity"),
            [*(c.format(run="runs/v1") for c in V1),
             "legodask train --run runs/v1 --model vae --sites as-given --epochs 250 --name vae-cont",
             "legodask train --run runs/v1 --model gan --sites as-given --epochs 40 --name gan-cont",
             "legodask train --run runs/v1 --model vae --sites generator --epochs 250 --name vae-gen",
             "legodask train --run runs/v1 --model gan --sites generator --epochs 40 --name gan-gen",
             "legodask train --run runs/v1 --model gan --sites generator --epochs 135 --name gan-long",
             "legodask run pipelines/quickstart.toml --run runs/quickstart --workers 1"
             "   # for the 2,702-row subsection",
             "legodask train --run runs/quickstart --model vae --mode cont --epochs 300 --name vae300",
             "legodask train --run runs/quickstart --model gan --mode cont --epochs 40 --name gan40",
             "legodask train --run runs/quickstart --model vae --mode cont --epochs 60 "
             "--batch-size 100 --name vae-b100"]),
    Section("conditional", "conditional: cubic rows from the two-stage model, against "
            "rejection sampling", ("conditional",)),
    Section("yield", "yield: what each generator gives per drawn row and per core-hour",
            ("yield",)),
    Section("stage1", "stage1: the two-stage model's learned discrete proposals, against "
            "the training combinations", ("stage1",),
            ["python benchmarks/yield.py --run runs/yield --n 200 --epochs 60   # its models"]),
    Section("rank", "rank: energy models against VASP", ("rank",)),
    Section("quickstart_rank", "quickstart_rank: the quick start's ranking, fast relaxers "
            "against ASE's FIRE", ("quickstart_rank",)),
    Section("dedup", "dedup: incremental deduplication against StructureMatcher", ("dedup",)),
    Section("topology", "topology: dimensionality and nets, against CrystalNets", ("topology",)),
    Section("novelty", "novelty: same crystal against StructureMatcher, Table IV with SUN",
            ("novelty",), ["legodask run pipelines/quickstart.toml --run runs/quickstart"]),
    Section("scale", "scale: 10,000 to 1,000,000 samples on 2 workers", ("scale",)),
    Section("counts", "counts: the paper's Table IV per 100,000 samples",
            ("counts-vae-cont", "counts-gan-long"),
            [*(c.format(run="runs/counts-vae") for c in V1),
             "legodask train --run runs/counts-vae --model vae --epochs 250",
             *(c.format(run="runs/counts-gan") for c in V1),
             "legodask train --run runs/counts-gan --model gan --epochs 135 --name gan-long"]),
    Section("digest", "digest: the quick start's tables across a change of code", ("digest",)),
    Section("gpu", "gpu: the device checks", ("gpu",),
            ["python benchmarks/yield.py --run runs/yield   # the trained models and the "
             "rows the direct pass missed",
             "python benchmarks/gpu.py prepare --run runs/yield && "
             "python benchmarks/gpu.py wheels"]),
]

HEADING = re.compile(r"^(#+) (.*)$")


def split(text: str) -> tuple[str | None, list[str]]:
    """A result text's top heading (``None`` when it has none) and its other lines,
    whose headings are made relative: level 1 is just below the top heading."""
    lines = text.strip().splitlines()
    first = HEADING.match(lines[0]) if lines else None
    if not first:
        return None, lines
    top = len(first.group(1))
    body = []
    for line in lines[1:]:
        m = HEADING.match(line)
        body.append("#" * max(len(m.group(1)) - top, 1) + " " + m.group(2) if m else line)
    return first.group(2), body


def nest(lines: list[str], level: int) -> str:
    """Relative headings (level 1 = just below the parent) placed under a heading
    of ``level``."""
    return "\n".join("#" * level + line if HEADING.match(line) else line for line in lines).strip()


def result_files(section: Section) -> list[Path]:
    """The section's result texts: a full run's supersedes its ``-quick`` one."""
    files = []
    for stem in section.parts:
        for candidate in (RESULTS / f"{stem}.md", RESULTS / f"{stem}-quick.md"):
            if candidate.exists():
                files.append(candidate)
                break
    return files


def render(section: Section) -> str | None:
    """The section's Markdown, or ``None`` when it has no results yet."""
    files = result_files(section)
    if not files:
        return None
    out = [f"## {section.title}"]
    if section.setup:
        out += ["Inputs, made once from a clean checkout:",
                "```bash\n" + "\n".join(section.setup) + "\n```"]
    if len(files) == 1:
        _, body = split(files[0].read_text())
        out.append(nest(body, 2))
    else:
        for f in files:
            title, body = split(f.read_text())
            title = (title or f.stem).removeprefix(f"{section.name}: ")
            out += [f"### {title}", nest(body, 3)]
    return "\n\n".join(out)


def main() -> None:
    claimed = {f for s in SECTIONS for f in result_files(s)}
    quick = {f for f in RESULTS.glob("*-quick.md")}
    unclaimed = sorted(set(RESULTS.glob("*.md")) - claimed - quick)
    if unclaimed:
        raise SystemExit(f"results without a section in collect.py: {[f.name for f in unclaimed]}")
    parts = [INTRO.strip(), *filter(None, map(render, SECTIONS))]
    (HERE / "README.md").write_text("\n\n".join(parts) + "\n")


if __name__ == "__main__":
    main()
