"""Proof of scale: sample -> decode -> prerelax (a subset) -> dedup at 10k, 100k and
1M generated rows on this machine, with a memory limit per worker; and the
parallel efficiency of one stage with 1 and 2 worker processes, and threads.

    python benchmarks/scale.py [--sizes 10000,100000,1000000] [--memory-limit 2GB]

A small VAE is trained first, as in the quick start (a small augmented set, 60
epochs: the subject here is throughput and memory, not quality).  Peak memory is each worker
process's peak resident set (``ru_maxrss``), read from the workers at the end of
each stage; every stage runs on a fresh LocalCluster so peaks do not carry over.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

OUT = Path(__file__).parent / "results"


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def on_cluster(fn: Callable[[], Any], workers: int, threads: int = 1,
               memory_limit: str = "2GB", processes: bool = True) -> tuple[float, list[float], Any]:
    """Run ``fn`` on a fresh LocalCluster: (seconds, peak RSS MB per worker, result)."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=workers, threads_per_worker=threads, processes=processes,
                      memory_limit=memory_limit, dashboard_address=None) as lc, Client(lc) as c:
        t = time.perf_counter()
        result = fn()
        dt = time.perf_counter() - t
        peaks = list(c.run(_peak_rss_mb).values()) if processes else [_peak_rss_mb()]
    return dt, [round(p, 1) for p in peaks], result


def prepare(run_dir: Path) -> None:
    """Ingest the training set, augment it and train a small VAE, as the quick
    start does (once)."""
    from legodask.augment.params import preset
    from legodask.sources.sacada import sacada_db
    from legodask.stages import augment, ingest, train
    from legodask.store import Run

    run = Run(run_dir)
    if not run.is_complete("ingested"):
        on_cluster(lambda: ingest.ingest(run, sacada_db()), 2)
    if not run.is_complete("augmented"):
        params = preset("v1", tries=4, max_per_subgroup=4, max_per_structure=24)
        on_cluster(lambda: augment.augment(run, params), 2)
    if not (run.path / "models" / "vae-cont").exists():
        on_cluster(lambda: train.train_stage(run, "vae", "cont", epochs=60), 1)


def one_size(base: Path, n: int, memory_limit: str, prerelax_n: int) -> dict[str, Any]:
    from legodask.analysis import dedup
    from legodask.stages import sample
    from legodask.stages.prerelax import prerelax
    from legodask.store import Run

    run_dir = base / f"n{n}"
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.copytree(base / "prep", run_dir)
    run = Run(run_dir)
    row: dict[str, Any] = {"rows": n}
    per_part = min(50_000, max(1_000, n // 20))
    t, peaks, _ = on_cluster(lambda: sample.sample_stage(run, "vae-cont", n, seed=1,
                                                        rows_per_part=per_part), 2,
                             memory_limit=memory_limit)
    valid = int(run.read("samples", columns=["valid_xtal"])["valid_xtal"].sum().compute())
    row.update(sample_decode_s=round(t, 1), sample_rows_per_s_core=round(n / t / 2, 1),
               sample_peak_mb_per_worker=max(peaks), valid_xtal=round(valid / n, 4))
    m = min(prerelax_n, valid)
    t, peaks, _ = on_cluster(lambda: prerelax(run, "samples", limit=m), 2,
                             memory_limit=memory_limit)
    pre = run.read("prerelaxed", columns=["loss", "valid_env"])
    n_env = int(pre["valid_env"].fillna(False).astype(bool).sum().compute())
    row.update(prerelax_rows=m, prerelax_s=round(t, 1),
               prerelax_core_s_per_structure=round(2 * t / max(m, 1), 3),
               prerelax_peak_mb_per_worker=max(peaks), valid_env=n_env)
    t, peaks, _ = on_cluster(lambda: dedup.dedup(run, "prerelaxed"), 2, memory_limit=memory_limit)
    fp = run.read("fingerprints", columns=["is_new"])
    row.update(dedup_s=round(t, 1), dedup_peak_mb_per_worker=max(peaks),
               unique=int(fp["is_new"].fillna(False).astype(bool).sum().compute()))
    shutil.rmtree(run_dir)
    return row


def scaling(base: Path, n: int, memory_limit: str) -> list[dict[str, Any]]:
    """sample+decode of ``n`` rows with 1 and 2 processes, and 1 process x 2 threads."""
    from legodask.stages import sample
    from legodask.store import Run

    out = []
    for label, workers, threads in (("1 process", 1, 1), ("2 processes", 2, 1),
                                    ("1 process x 2 threads", 1, 2)):
        run_dir = base / f"scaling-{workers}-{threads}"
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.copytree(base / "prep", run_dir)
        run = Run(run_dir)
        t, _, _ = on_cluster(lambda: sample.sample_stage(run, "vae-cont", n, seed=2,
                                                        rows_per_part=max(1000, n // 16)),
                             workers, threads, memory_limit)
        out.append({"setup": label, "rows": n, "seconds": round(t, 1)})
        shutil.rmtree(run_dir)
    t1 = out[0]["seconds"]
    for r in out:
        cores = 2 if r["setup"] != "1 process" else 1
        r["speedup"] = round(t1 / r["seconds"], 2)
        r["parallel_efficiency"] = round(t1 / (cores * r["seconds"]), 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--memory-limit", default="2GB")
    ap.add_argument("--prerelax", type=int, default=200, help="rows pre-relaxed per size")
    ap.add_argument("--scaling-rows", type=int, default=20000)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    base = Path(args.workdir or tempfile.mkdtemp(prefix="legodask-scale-"))
    prepare(base / "prep")
    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict[str, Any] = {"memory_limit_per_worker": args.memory_limit, "workers": 2,
                               "sizes": [], "scaling": []}
    OUT.mkdir(exist_ok=True)
    for n in sizes:                  # saved after each size: a long run keeps what it measured
        results["sizes"].append(one_size(base, n, args.memory_limit, args.prerelax))
        (OUT / "scale.json").write_text(json.dumps(results, indent=1))
    results["scaling"] = scaling(base, args.scaling_rows, args.memory_limit)
    (OUT / "scale.json").write_text(json.dumps(results, indent=1))
    lines = ["| rows | sample+decode s | rows/s/core | valid_xtal | prerelaxed | prerelax s "
             "| core-s/structure | valid_env | dedup s | dedup rows/s | unique "
             "| peak MB/worker (sample / prerelax / dedup) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["sizes"]:
        lines.append(f"| {r['rows']:,} | {r['sample_decode_s']} | {r['sample_rows_per_s_core']} "
                     f"| {r['valid_xtal']:.3f} | {r['prerelax_rows']} | {r['prerelax_s']} "
                     f"| {r['prerelax_core_s_per_structure']} | {r['valid_env']} "
                     f"| {r['dedup_s']} | {r['rows'] / max(r['dedup_s'], 1e-9):,.0f} "
                     f"| {r['unique']} | {r['sample_peak_mb_per_worker']:.0f} / "
                     f"{r['prerelax_peak_mb_per_worker']:.0f} / "
                     f"{r['dedup_peak_mb_per_worker']:.0f} |")
    lines += ["", "| sample+decode setup | rows | seconds | speedup | parallel efficiency |",
              "|---|---|---|---|---|"]
    for r in results["scaling"]:
        lines.append(f"| {r['setup']} | {r['rows']:,} | {r['seconds']} | {r['speedup']} "
                     f"| {r['parallel_efficiency']} |")
    lines += ["", f"Command: `OMP_NUM_THREADS=1 python benchmarks/scale.py --sizes {args.sizes} "
              f"--prerelax {args.prerelax} --scaling-rows {args.scaling_rows}` (one run: "
              f"2 worker processes with a {args.memory_limit} memory limit each, on this "
              "2-core machine).  The model is a VAE trained as in the quick start (60 "
              "epochs on a small augmented set); throughput and memory are the subject, "
              "see `generate` for the models' quality.  Every stage runs on a fresh "
              "LocalCluster and its peak is the largest worker's resident set: a worker "
              "holds one partition at a time, so the peak follows the partition size "
              "(n/20 rows, at most 50,000: 500, 5,000 and 50,000 rows at 10k, 100k and "
              "1M), not the row count.  Pre-relaxation runs on the first valid rows "
              "(spread over the partitions); dedup reads every row and fingerprints the "
              "valid-environment ones, joining each partition against the fingerprints "
              "seen so far."]
    (OUT / "scale.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
