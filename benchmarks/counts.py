"""The paper's counts (Table IV) per 100,000 samples, estimated on this machine from a
random subset: a trained model's samples pre-relaxed, ranked and deduplicated by the
stages' own commands, as a user runs them.

    python benchmarks/counts.py --run RUN --model vae-cont [--n 100000] [--relax 500]

``RUN`` holds the training set (``ingested``) and the trained model.  All ``n`` rows
are sampled and decoded (``--min-distance 0``, as ``pipelines/sp2_carbon.toml``: the
paper pre-relaxes crystals whose atoms overlap too), the first ``--relax`` valid rows
(the partitions' draws are independent, so these are a random subset) are
pre-relaxed towards graphite (batched path), the valid-environment ones ranked by ReaxFF (one row
per distinct crystal) and deduplicated.  Shares measured on the subset scale to the
paper's 100,000 samples for N_valid_env; N_unique, N_train and the low-energy counts
of a subset do not scale linearly (repeats and regenerated training crystals
accumulate with the sample), so they are reported as measured, with their share of
the subset's valid environments.  Each stage skips what a previous run of it wrote.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).parent / "results"
# the paper's Table IV per 100,000 samples (../shared/METHOD.md, section 6)
PAPER = {"n_valid_xtal": "~98,000", "n_valid_env": "15,000-22,000",
         "n_unique": "3,235-5,156", "n_train": "62-133 of 140", "n_lowE_all": "30-426", "n_lowE_cubic": "28-70"}


def stage(*args: str) -> float:
    """Run ``legodask ARGS``; its wall seconds."""
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "legodask.cli", *args], check=True)
    return round(time.perf_counter() - t, 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--relax", type=int, default=500, help="valid rows pre-relaxed")
    ap.add_argument("--device", default="torch",
                    help="pre-relaxation path (the batched one is ~4x faster per "
                    "structure on these rows than scipy's, the CPU default)")
    ap.add_argument("--energy", default="reaxff")
    ap.add_argument("--workers", default="1")
    ap.add_argument("--name", default=None, help="results/<name>.json/.md")
    args = ap.parse_args()
    from legodask.analysis.metrics import compute_metrics
    from legodask.store import Run

    r, c = ["--run", args.run], ["--workers", args.workers, "--threads", "1"]
    seconds = {
        "sample": stage("sample", *r, "--model", args.model, "--n", str(args.n),
                        "--min-distance", "0", *c),
        "prerelax": stage("prerelax", *r, "--input", "samples", "--limit", str(args.relax),
                          "--device", args.device, *c),
        "rank": stage("rank", *r, "--models", args.energy, "--only-valid-env", "--unique",
                      "--timeout", "300", *c),
        "dedup": stage("dedup", *r, "--input", "ranked", *c),
    }
    m = compute_metrics(Run(args.run), window=0.55)  # Table IV's window
    low = {k: (m[k] or {}).get(args.energy) for k in ("n_lowE_all", "n_lowE_cubic")}
    relaxed = min(args.relax, m["n_valid_xtal"])
    env_share = m["n_valid_env"] / relaxed
    scale = 100_000 / m["n_total"]
    est = {"n_valid_xtal": round(m["n_valid_xtal"] * scale),
           "n_valid_env": round(env_share * m["n_valid_xtal"] * scale)}
    res = {"model": args.model, "n": args.n, "relaxed": relaxed, "energy": args.energy,
           "seconds": seconds, "metrics": m, "valid_env_share_of_relaxed": env_share,
           "per_100k": est}
    name = args.name or f"counts-{args.model}"
    OUT.mkdir(exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps(res, indent=1, default=str))
    env = max(m["n_valid_env"], 1)
    rows = [("N_valid_xtal", f"{m['n_valid_xtal']:,} of {m['n_total']:,}",
             f"{est['n_valid_xtal']:,}", PAPER["n_valid_xtal"]),
            ("N_valid_env", f"{m['n_valid_env']} of {relaxed} relaxed ({100 * env_share:.1f} %)",
             f"{est['n_valid_env']:,}", PAPER["n_valid_env"]),
            ("N_unique", f"{m['n_unique']} ({100 * (m['n_unique'] or 0) / env:.0f} % of "
             "valid_env)", "", PAPER["n_unique"]),
            ("N_train", f"{m['n_train']}", "", PAPER["n_train"]),
            (f"N_lowE_all ({args.energy}, 0.55 eV/atom)", f"{low['n_lowE_all']}", "",
             PAPER["n_lowE_all"]),
            ("N_lowE_cubic", f"{low['n_lowE_cubic']}", "", PAPER["n_lowE_cubic"])]
    cmd = f"python benchmarks/counts.py {' '.join(sys.argv[1:])}"
    lines = [f"## counts: Table IV per 100,000 samples ({args.model}, {relaxed} rows "
             "pre-relaxed)", "", f"Command: `{cmd}`", "",
             "| count | measured | per 100,000 samples (estimate) | paper (per 100,000) |",
             "| --- | --- | --- | --- |"]
    lines += [f"| {a} | {b} | {e} | {p} |" for a, b, e, p in rows]
    lines += ["", "Wall seconds: " + ", ".join(f"{k} {v}" for k, v in seconds.items())
              + f" ({args.workers} worker process(es), one thread each)."]
    if m.get("notes"):
        lines += ["", "Notes of `legodask metrics`: " + "; ".join(m["notes"])]
    (OUT / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
