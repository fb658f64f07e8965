"""Digest of a fixed-seed quick start: the same code gives the same tables.

    python benchmarks/digest.py run             # run the quick start, write results/digest.json
    python benchmarks/digest.py check           # run it again, compare with results/digest.json

For each table (ingested, augmented, samples, prerelaxed) the digest is its row
count and a SHA-256 of its rows sorted by id, floats rounded to 1e-9 (timings
dropped); for the run, the counts of ``metrics.json``.  A refactor that moves
code keeps every digest; one that changes results does not.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd

HERE = Path(__file__).parent
ROOT = HERE.parent
TABLES = ["ingested", "augmented", "samples", "prerelaxed"]
TIMINGS = {"seconds", "iterations"}     # wall-clock, or its budget share
RESULT = HERE / "results" / "digest.json"
REPORT = HERE / "results" / "digest.md"


def table_digest(path: Path, columns: list[str] | None = None) -> dict[str, object]:
    """Row count and content hash of one Parquet table folder (of ``columns`` only,
    when given: a table that gained columns keeps the digest of the ones it had)."""
    df = pd.concat([pd.read_parquet(p) for p in sorted(path.glob("part-*.parquet"))],
                   ignore_index=True)
    df = df.drop(columns=[c for c in df.columns if c in TIMINGS])
    added = sorted(set(df.columns) - set(columns)) if columns else []
    missing = [c for c in columns or [] if c not in df.columns]
    df = df[[c for c in columns if c in df.columns]] if columns else df
    df = df.sort_values("id", kind="stable").reset_index(drop=True)
    for c in df.columns:
        if df[c].dtype.kind == "f":
            df[c] = df[c].round(9)
    text = df.to_csv(index=False, float_format="%.9g")
    return {"rows": len(df), "columns": list(df.columns) + missing,
            **({"missing": missing} if missing else {}),
            "sha256": hashlib.sha256(text.encode()).hexdigest(), **({"added": added} if added else {})}


def digest(run: Path, like: dict[str, Any] | None = None) -> dict[str, object]:
    """The digests of a run's tables (of the columns ``like``'s digests had)."""
    out: dict[str, object] = {t: table_digest(run / f"{t}.parquet",
                                              (like or {}).get(t, {}).get("columns"))
                              for t in TABLES}
    metrics = json.loads((run / "metrics.json").read_text())
    out["metrics"] = {k: v for k, v in metrics.items() if k.startswith("n_")}
    return out


def commit() -> str:
    """The checked-out commit, for the record."""
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                         capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def write_report(action: str, lines: list[str], note: str = "") -> None:
    """The section of benchmarks/README.md: what was stored or checked, at which commit."""
    what = ("Stored the digest of the fixed-seed quick start" if action == "run"
            else "Checked the fixed-seed quick start against the stored digest")
    REPORT.write_text("\n".join([
        "## digest", "", "```bash", f"python benchmarks/digest.py {action}", "```", "",
        f"{what} at commit {commit()} (tables ingested, augmented, samples, prerelaxed: "
        "rows and a hash of their values; the counts of metrics.json).", "",
        *[f"- {line}" for line in lines], "", *([note, ""] if note else [])]))


def difference(key: str, want: Any, got: Any) -> str:
    """One line on how a stored digest and a new one differ."""
    if key in TABLES and got and got.get("missing"):
        return (f"{key}: columns no longer there: {', '.join(got['missing'])} "
                f"(its other columns not compared)")
    if key in TABLES:
        return f"{key}: rows or values differ ({want['rows']} rows stored, {got['rows']} now)"
    return f"{key}: stored {want}, now {got}"


def run_quickstart(run: Path) -> None:
    shutil.rmtree(run, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "legodask.cli", "run", "pipelines/quickstart.toml",
                    "--run", str(run)], cwd=ROOT, check=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("action", choices=["run", "check"])
    p.add_argument("--run", default=str(ROOT / "runs" / "digest"), help="run directory")
    p.add_argument("--no-run", action="store_true", help="digest an existing run directory")
    p.add_argument("--note", default="", help="a sentence for the section (what changed since)")
    args = p.parse_args()
    run = Path(args.run)
    if not args.no_run:
        run_quickstart(run)
    want = json.loads(RESULT.read_text()) if args.action == "check" else None
    got = digest(run, want)
    if args.action == "run":
        RESULT.write_text(json.dumps(got, indent=1) + "\n")
        write_report("run", [f"{t}: {got[t]['rows']} rows" for t in TABLES]
                     + [f"metrics: {got['metrics']}"], args.note)
        print(json.dumps(got, indent=1))
        return 0
    lines = [f"{t}: columns added since the stored digest, not compared: "
             f"{', '.join(added)}" for t in TABLES if (added := got[t].pop("added", None))]
    diff = {k: (want.get(k), got.get(k)) for k in set(want) | set(got) if want.get(k) != got.get(k)}
    lines += [difference(k, w, g) for k, (w, g) in diff.items()]
    lines.append("same tables" if not diff else f"{len(diff)} differ")
    write_report("check", lines, args.note)
    print("\n".join(lines))
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main())
