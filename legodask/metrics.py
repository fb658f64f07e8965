"""The paper's counts for a run (Table IV) and the overlap between runs (Table III).

Every count is a DuckDB query over the run's Parquet tables, so it costs a scan,
not memory.  A table or column that a run does not have makes its counts null,
with a note saying why, never an error: a run stopped after ``prerelax`` still
gets the counts it can have.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from . import dedup as D
from . import fingerprint as F
from . import schema as S
from .query import columns, connect, sql_list, table_files
from .store import Run

log = logging.getLogger("legodask")

WINDOW = 0.5                 # eV/atom above the ground state: "low energy"
CUBIC = 195                  # space groups 195-230
TRAIN_TABLE = "train_fingerprints"
TRAIN_SOURCE = "ingested"
COUNTS = ["n_total", "n_valid_xtal", "n_valid_env", "n_unique", "n_train",
          "n_lowE_all", "n_lowE_cubic"]
ENERGY_PREFIX = "e_above_"


def energy_models(con: Any, table: str) -> list[str]:
    """Energy models with an ``e_above_<model>`` column in ``table``, in column order."""
    return [c[len(ENERGY_PREFIX):] for c in columns(con, table) if c.startswith(ENERGY_PREFIX)]


def train_fingerprints(run: Run, matcher: str = "env") -> list[Path]:
    """Fingerprints of the run's training structures (``ingested``), made once."""
    if not run.is_complete(TRAIN_TABLE):
        D.dedup(run, TRAIN_SOURCE, TRAIN_TABLE, matcher=matcher, require=["valid_xtal"])
    return table_files(run, TRAIN_TABLE)


def compute_metrics(run: Run, window: float = WINDOW, matcher: str = "env",
                    energy_table: str = "ranked") -> dict[str, Any]:
    """The Table IV counts of ``run`` and notes on the ones it cannot have."""
    con = connect(run)
    tables = set(run.tables())
    out: dict[str, Any] = {c: None for c in COUNTS}
    notes: list[str] = []

    def scalar(sql: str) -> int:
        return int(con.execute(sql).fetchone()[0] or 0)

    if "samples" in tables:
        out["n_total"] = scalar("SELECT count(*) FROM samples")
        if "valid_xtal" in columns(con, "samples"):
            out["n_valid_xtal"] = scalar("SELECT count(*) FROM samples WHERE valid_xtal")
        else:
            notes.append("samples has no valid_xtal column (not decoded)")
    else:
        notes.append("no samples table: n_total and n_valid_xtal unknown")
    if "prerelaxed" in tables and "valid_env" in columns(con, "prerelaxed"):
        out["n_valid_env"] = scalar("SELECT count(*) FROM prerelaxed WHERE valid_env")
    else:
        notes.append("no prerelaxed table with valid_env: n_valid_env unknown")

    if D.TABLE not in tables:
        notes.append("no fingerprints table (run `legodask dedup`): n_unique, n_train "
                     "and low-energy counts unknown")
        return {**out, "window": window, "notes": notes}
    out["n_unique"] = scalar(f"SELECT count(DISTINCT {D.FIRST_ID}) FROM {D.TABLE} "
                             f"WHERE {S.FINGERPRINT} IS NOT NULL")
    fp_files = table_files(run, D.TABLE)
    if TRAIN_SOURCE in tables:
        out["n_train"] = D.overlap(train_fingerprints(run, matcher), fp_files, matcher)
    else:
        notes.append(f"no {TRAIN_SOURCE} table: n_train unknown")

    source = energy_table
    models = energy_models(con, source) if source in tables else []
    if not models:
        notes.append(f"no e_above_<model> columns in {source!r}: low-energy counts unknown")
    else:
        out["n_lowE_all"], out["n_lowE_cubic"] = {}, {}
        for m in models:
            all_, cubic = con.execute(f"""
                SELECT count(DISTINCT f.{D.FIRST_ID}),
                       count(DISTINCT f.{D.FIRST_ID}) FILTER (WHERE f.{F.FP_SPG} >= {CUBIC})
                FROM {D.TABLE} f JOIN "{source}" r ON f.id = r.id
                WHERE f.{S.FINGERPRINT} IS NOT NULL AND r.{ENERGY_PREFIX}{m} <= ?""",
                                      [window]).fetchone()
            out["n_lowE_all"][m], out["n_lowE_cubic"][m] = int(all_), int(cubic)
    return {**out, "window": window, "models": models, "notes": notes}


def overlap_matrix(runs: Sequence[str | Path], train: str | Path | None = None,
                   matcher: str = "env") -> pd.DataFrame:
    """Table III: shared unique crystals between runs (and the training set), from
    their fingerprints tables; the diagonal is each one's number of unique crystals."""
    names, files = [], []
    if train is not None:
        names.append("Train")
        files.append(train_fingerprints(Run(train), matcher))
    for r in runs:
        name = Path(r).name
        names.append(name if name not in names else str(r))
        files.append(D.table_files(r))
    n = len(names)
    mat = pd.DataFrame(0, index=names, columns=names, dtype="int64")
    for i in range(n):
        for j in range(i, n):
            mat.iloc[i, j] = mat.iloc[j, i] = (_n_unique(files[i]) if i == j
                                                else D.overlap(files[i], files[j], matcher))
    return mat


def _n_unique(files: Sequence[Path]) -> int:
    import duckdb

    return int(duckdb.connect().execute(
        f"SELECT count(DISTINCT {D.FIRST_ID}) FROM read_parquet({sql_list(list(files))}) "
        f"WHERE {S.FINGERPRINT} IS NOT NULL").fetchone()[0])


def table_iv(metrics: dict[str, Any], name: str) -> str:
    """The run's metrics as a row of the paper's Table IV (Markdown)."""
    def cell(v: Any) -> str:
        if v is None:
            return "–"
        if isinstance(v, dict):
            return " / ".join(f"{k}: {x}" for k, x in v.items()) or "–"
        return str(v)

    head = ["run", *[c.replace("n_", "N_") for c in COUNTS]]
    row = [name, *[cell(metrics.get(c)) for c in COUNTS]]
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
                      "| " + " | ".join(row) + " |"])


def write_metrics(run: Run, metrics: dict[str, Any]) -> Path:
    path = run.file("metrics.json")
    path.write_text(json.dumps(metrics, indent=1, default=_json_default))
    return path


def _json_default(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return None
    if hasattr(v, "item"):
        return v.item()
    raise TypeError(f"cannot write {type(v).__name__} to JSON")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--window", type=float, default=WINDOW,
                   help="eV/atom above the ground state counted as low energy")
    p.add_argument("--matcher", choices=F.MATCHERS, default="env",
                   help="fine comparison for n_train and overlaps")
    p.add_argument("--energy-table", default="ranked",
                   help="table with the e_above_<model> columns")
    p.add_argument("--compare", action="append", default=[],
                   help="another run: print the overlap matrix (Table III) with it "
                        "(repeatable)")


def command(args: argparse.Namespace) -> int:
    run = Run(args.run, create=False)
    metrics = compute_metrics(run, args.window, args.matcher, args.energy_table)
    if args.compare:
        train = run.path if TRAIN_SOURCE in run.tables() else None
        mat = overlap_matrix([run.path, *args.compare], train, args.matcher)
        metrics["overlap"] = mat.to_dict()
        print("Shared unique crystals (Table III):")
        print(mat.to_string())
    path = write_metrics(run, metrics)
    print(table_iv(metrics, run.path.name))
    for note in metrics["notes"]:
        print(f"note: {note}")
    print(f"wrote {path}")
    return 0
