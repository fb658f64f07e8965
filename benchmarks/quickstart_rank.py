"""The quick start's ranking, fast relaxers against ASE's FIRE, on the same run.

    legodask run pipelines/quickstart.toml --run runs/quickstart
    python benchmarks/quickstart_rank.py --run runs/quickstart

Ranks the quick start's pre-relaxed table again with the pipeline's own rank
options, once with ``--relaxer fast`` (ReaxFF inside LAMMPS, CHGNet batched) and
once with ``--relaxer ase``, each into a table of its own, and writes the
wall-clock seconds, the rows relaxed and converged, and the low-energy count of
each to ``results/quickstart_rank.json|md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from legodask import schema as S
from legodask.pipeline import load, stage_argv

HERE = Path(__file__).parent
ROOT = HERE.parent
RELAXERS = ("fast", "ase")
WINDOW = 0.5           # eV/atom above graphite: "low energy", as metrics


def measure(run: Path, relaxer: str, options: list[str]) -> dict[str, object]:
    """Rank the run's pre-relaxed rows with ``relaxer`` into ``ranked_<relaxer>``."""
    table = f"ranked_{relaxer}"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "legodask.cli", "rank", "--run", str(run),
                    *options, "--relaxer", relaxer, "--output", table, "--overwrite"],
                   cwd=ROOT, check=True)
    seconds = time.perf_counter() - t0
    df = pd.concat([pd.read_parquet(p) for p in sorted((run / f"{table}.parquet").glob("part-*"))])
    out: dict[str, object] = {"relaxer": relaxer, "seconds": round(seconds, 1)}
    for model in [c[len(S.ENERGY):] for c in df.columns if c.startswith(S.ENERGY)]:
        energy, e_above, *_, converged, _, _ = S.energy_columns(model)
        done = df[energy].notna()
        out[model] = {"relaxed": int(done.sum()),
                      "converged": int(df.loc[done, converged].fillna(False).sum()),
                      "low_energy": int((df[e_above] <= WINDOW).sum())}
    return out


def markdown(results: list[dict[str, object]], command: str) -> str:
    models = [k for k in results[0] if k not in ("relaxer", "seconds")]
    head = ["relaxer", "seconds", *[f"{m}: relaxed / converged / low energy" for m in models]]
    rows = [[r["relaxer"], r["seconds"],
             *[f"{r[m]['relaxed']} / {r[m]['converged']} / {r[m]['low_energy']}"
               for m in models]] for r in results]
    ratio = results[1]["seconds"] / results[0]["seconds"]
    return "\n".join([
        "# quickstart_rank: the quick start's ranking, fast relaxers against ASE's FIRE", "",
        "```bash", "legodask run pipelines/quickstart.toml --run runs/quickstart", command, "```",
        "", "Machine: 2 CPU cores of a shared machine. The same pre-relaxed rows and rank "
        "options (the quick start's: ReaxFF and CHGNet, one relaxation per distinct sp2 "
        f"crystal), one relaxer after the other; low energy: within {WINDOW} eV/atom of "
        "graphite.", "",
        "| " + " | ".join(head) + " |", "|" + "---|" * len(head),
        *["| " + " | ".join(map(str, r)) + " |" for r in rows], "",
        f"The fast relaxers rank the quick start in 1/{ratio:.1f} of the time ASE's FIRE "
        "takes.", ""])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="runs/quickstart", help="a finished quick start")
    p.add_argument("--pipeline", default="pipelines/quickstart.toml")
    args = p.parse_args()
    run = (ROOT / args.run).resolve()
    options = stage_argv(load(ROOT / args.pipeline)["rank"])
    results = [measure(run, r, options) for r in RELAXERS]
    out = HERE / "results"
    (out / "quickstart_rank.json").write_text(json.dumps(results, indent=1) + "\n")
    command = f"python benchmarks/quickstart_rank.py --run {args.run}"
    (out / "quickstart_rank.md").write_text(markdown(results, command))
    print(markdown(results, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
