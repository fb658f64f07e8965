"""Benchmark of the augment stage: dataset sizes and unique symmetries of the presets
against the paper's Table I, rows per second per core against the paper's 0.2-0.5
min per 1,000 samples (and against the reference loop, pyxtal-only, run here), and
peak memory per worker as the row count grows (v1 -> v3 -> 2M).

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/augment.py [--quick] [--workers 1]

Writes ``benchmarks/results/augment.json`` and ``augment.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import dask
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from legodask.augment import frame as AF  # noqa: E402
from legodask.augment import params as AP  # noqa: E402
from legodask.crystal.convert import row_to_pyxtal, symmetry_key  # noqa: E402
from legodask import schema as S  # noqa: E402
from legodask.cluster import compute, connect  # noqa: E402
from legodask.stages import augment as augment_stage  # noqa: E402
from legodask.stages import ingest as ingest_stage  # noqa: E402
from legodask.store import Run  # noqa: E402

DB = Path(os.environ.get("LEGODASK_SACADA_DB", ROOT.parent / "shared/data/sp2_sacada.db"))
RESULTS = ROOT / "benchmarks/results"
PAPER = {"raw": (140, 127), "v1": (63_114, 419), "v2": (122_322, 449), "v3": (242_766, 485),
         "2m": (None, None)}
PAPER_MIN_PER_1000 = (0.2, 0.5)   # one CPU, Table II


def ingest(base: Run) -> pd.DataFrame:
    """The 140 training structures of the SACADA db as ``base/ingested``."""
    if not base.is_complete("ingested"):
        with dask.config.set(scheduler="synchronous"):
            ingest_stage.ingest(base, DB)
    df = base.read("ingested").compute()   # 150 rows: small
    return df[df["train"]].reset_index(drop=True)


def unique_symmetries(run: Run, table: str) -> int:
    """Unique (space group, sorted Wyckoff) keys of a table's valid rows, computed
    per partition so that no process holds the table."""
    ddf = run.read(table, columns=["spg", *S.WP, "valid_xtal"])
    keys = ddf.map_partitions(lambda d: symmetry_key(d[d["valid_xtal"]]).drop_duplicates(),
                              meta=pd.Series(dtype=object, name="symmetry"))
    (uniq,) = compute([keys.drop_duplicates()])
    return int(len(uniq))


def run_preset(name: str, train: pd.DataFrame, work: Path, workers: int,
               check: str) -> dict:
    """Augment ``train`` with a preset on a fresh LocalCluster; time, rows, memory."""
    run = Run(work / name)
    run.write_frame_table("ingested", train)
    p = AP.preset(name, check=check)
    with connect(n_workers=workers, threads_per_worker=1, quiet=True) as client:
        t0 = time.perf_counter()
        result = augment_stage.augment(run, p)
        wall = time.perf_counter() - t0
        rss = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    status = run.status().set_index("table")
    rows = int(status.loc["augmented", "rows"])
    (failed,) = compute([(~run.read("augmented", columns=["valid_xtal"])["valid_xtal"]).sum()])
    part_rows = [len(pd.read_parquet(f, columns=["id"]))
                 for f in sorted(run.table_path("augmented").glob("part-*.parquet"))]
    return {
        "preset": name, "structures": len(train), "rows": rows, "failed_structures": int(failed),
        "unique_symmetries": unique_symmetries(run, "augmented"),
        "wall_s": round(wall, 1), "workers": workers,
        "rows_per_s_per_core": round(rows / (wall * workers), 1),
        "min_per_1000_rows_one_core": round(wall * workers / 60 / rows * 1000, 3),
        "peak_rss_mb_per_worker": round(max(rss.values()) / 1024, 1),
        "largest_partition_rows": max(part_rows), "written": result.rows,
        "params": {k: v for k, v in vars(p).items()},
    }


# ---------------------------------------------------------------------------
# the baseline: the reference loop (pyxtal only: subgroup_once, its pre-relaxation
# with the SO(3) builder, get_tabular_representations), on a few structures
# ---------------------------------------------------------------------------

def reference_loop(row: dict, cap: int) -> int:
    """Rows the reference algorithm makes for one structure (METHOD.md section 2):
    pre-relax, up to 0.6 cap swaps of the parent, then up to 20 t- and 20 k-subgroup
    tries, each accepted one pre-relaxed and giving up to 0.2 cap swaps."""
    from pyxtal import pyxtal
    from pyxtal.lego.builder import builder
    from pyxtal.util import new_struc_wo_energy

    ref = pyxtal()
    ref.from_prototype("graphite")
    tmp = tempfile.mkdtemp(prefix="legodask-bench-pyxtal-")  # else mof-0.log/.db in the cwd
    bu = builder(["C"], [1], db_file=f"{tmp}/b.db", log_file=f"{tmp}/b.log", verbose=False)
    bu.set_descriptor_calculator(mykwargs={"rcut": 2.0})
    bu.set_reference_enviroments(ref.to_pymatgen())
    bu.set_criteria(CN={"C": [3]})
    xtal = row_to_pyxtal(row)
    opt, _, _ = bu.optimize_xtal(xtal, add_db=False)
    if opt is None or not opt.check_validity(bu.criteria):
        return 0
    n = len(opt.get_tabular_representations(N_wp=8, N_max=int(0.6 * cap)))
    seen = [opt]
    max_cell = max(500 / sum(opt.numIons), 1.0)
    for gtype in ("t", "k"):
        for _ in range(20):
            if n >= cap:
                return n
            sub = opt.subgroup_once(eps=5e-4, group_type=gtype, max_cell=max_cell, mut_lat=False)
            if sub is None:
                continue
            para = sub.lattice.get_para(degree=True)
            if not (sub.get_dof() <= 24 and len(sub.atom_sites) <= 8 and max(para[:3]) < 50
                    and 30 < min(para[3:]) and max(para[3:]) < 150):
                continue
            if not new_struc_wo_energy(sub, seen, 0.025, 0.025, 1.0):
                continue
            try:
                sub_opt, _, _ = bu.optimize_xtal(sub, add_db=False)
            except Exception:
                continue
            if sub_opt is None or not sub_opt.check_validity(bu.criteria):
                continue
            seen.append(sub_opt)
            n += len(sub_opt.get_tabular_representations(N_wp=8, N_max=int(0.2 * cap)))
    return n


def baseline(train: pd.DataFrame, n: int) -> dict:
    """Reference loop and our kernel (same caps as v1, one core) on ``n`` structures."""
    sub = train.iloc[:: max(1, len(train) // n)].head(n)
    t0 = time.perf_counter()
    ref_rows = sum(reference_loop(r, 500) for r in sub.to_dict("records"))
    ref_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = AF.augment_frame(sub, AP.preset("v1", check="env"))
    ours_s = time.perf_counter() - t0
    return {"structures": len(sub), "ids": sub["id"].tolist(),
            "reference_rows": ref_rows, "reference_s": round(ref_s, 1),
            "reference_rows_per_s": round(ref_rows / ref_s, 1),
            "ours_rows": len(ours), "ours_s": round(ours_s, 1),
            "ours_rows_per_s": round(len(ours) / ours_s, 1)}


def markdown(res: dict, cmd: str) -> str:
    lo, hi = PAPER_MIN_PER_1000
    by_command: dict[str, list[str]] = {}   # the command that made each preset's row
    for r in res["presets"]:
        by_command.setdefault(r.get("command", cmd), []).append(r["preset"])
    out = ["# augment: the paper's training sets (Table I), speed and memory", "",
           *[f"Command ({', '.join(names)}): `{c}`  " for c, names in by_command.items()],
           f"Machine: shared 2-core CPU, worker processes as in the table, 1 thread each, "
           f"`OMP_NUM_THREADS=1`; environment test `{res['check']}`.", "",
           "| dataset | structures | rows (ours) | rows (paper) | unique symmetries (ours) "
           "| (paper) | min per 1,000 rows, one core | rows/s/core | workers "
           "| peak RSS per worker (MB) | largest partition (rows) |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
           f"| raw | {res['raw']['structures']} | {res['raw']['structures']} | 140 | "
           f"{res['raw']['unique_symmetries']} | 127 | | | | | |"]
    for r in res["presets"]:
        rows_p, sym_p = PAPER[r["preset"]]
        note = ""
        if r.get("fraction"):
            note = f" (1/{r['fraction']} of the structures; x{r['fraction']} = " \
                   f"{r['rows'] * r['fraction']:,} extrapolated)"
        out.append(f"| {r['preset']} | {r['structures']} | {r['rows']:,}{note} | "
                   f"{'' if rows_p is None else f'{rows_p:,}'} | {r['unique_symmetries']} | "
                   f"{'' if sym_p is None else sym_p} | {r['min_per_1000_rows_one_core']} | "
                   f"{r['rows_per_s_per_core']} | {r.get('workers', res['workers'])} | "
                   f"{r['peak_rss_mb_per_worker']} | "
                   f"{r['largest_partition_rows']:,} |")
    b = res["baseline"]
    out += ["", f"Paper (Table II): {lo}-{hi} min per 1,000 samples on one CPU, i.e. "
            f"{1000 / (hi * 60):.0f}-{1000 / (lo * 60):.0f} rows/s.", "",
            f"Baseline measured here on {b['structures']} structures (v1 caps, one core): "
            f"the reference loop (pyxtal subgroup_once + SO(3) pre-relaxation of each "
            f"subgroup + get_tabular_representations) made {b['reference_rows']} rows in "
            f"{b['reference_s']} s ({b['reference_rows_per_s']} rows/s); our kernel made "
            f"{b['ours_rows']} rows in {b['ours_s']} s ({b['ours_rows_per_s']} rows/s)."]
    out += ["", "## Speed", "",
            "Rows per second per core are wall time x workers on this shared machine "
            "(load about 4 on its 2 cores while they ran), so they are lower bounds.  The "
            "cost of a structure is mostly its subgroup search (a fixed number of "
            "`subgroup_once` tries, each checked), so larger caps give more rows per "
            "second.  The reference loop spends most of its time pre-relaxing every "
            "subgroup with pyxtal's SO(3) builder; our default test is the plain "
            "environment check, which is why the same structures and caps take about a "
            "tenth of the time with about the same rows.  `--check prerelax` (our own "
            "pre-relaxation as the filter) costs 3-10x more per structure."]
    rss = ", ".join(f"{r['preset']} {r['peak_rss_mb_per_worker']:.0f} MB "
                    f"({r['rows']:,} rows, largest partition {r['largest_partition_rows']:,})"
                    for r in res["presets"])
    out += ["", "## Memory", "",
            f"Peak RSS per worker: {rss}.  A worker holds one structure's rows at a time "
            "(one task and one output partition per training structure, rows gathered as "
            "one frame per representation), so its memory follows the per-structure cap, "
            "not the table's size; about 300 MB of it is the worker itself (dask, pyxtal, "
            "pymatgen, ASE imported).  The driver only builds one task per structure and "
            "never reads the augmented table whole (unique symmetries are counted per "
            "partition)."]
    out += [f"\n{r['preset']}: {r['note']}" for r in res["presets"] if r.get("note")]
    if res.get("note"):
        out += ["", res["note"]]
    frac = [r for r in res["presets"] if r.get("fraction")]
    for r in frac:
        out += ["", f"The {r['preset']} preset ran on every {r['fraction']}th structure "
                f"({r['structures']} of 140) to keep this shared machine usable: "
                f"{r['rows']:,} rows in {r['wall_s']} s; the full preset extrapolates to "
                f"about {r['rows'] * r['fraction']:,} rows and "
                f"{r['wall_s'] * r['fraction'] / 3600:.1f} core-hours, with the same "
                f"per-worker memory (it depends on the per-structure cap only)."]
    return "\n".join(out) + "\n" + DIFFERENCES


DIFFERENCES = """
## Why our numbers differ from Table I

* **Raw: 125, not 127, unique symmetries.** The 140 training structures have 125
  unique (space group, sorted Wyckoff) keys, both as we symmetrise them (spglib,
  1e-3) and by the `space_group_number`/`wps` stored in the db.  The reference
  script counts its keys before its dof filter, over the 142 structures with <= 8
  sites and <= 500 atoms: that adds db ids 47 and 48 (both P1, eight 1a sites), one
  new key, 126.  The last one we cannot trace (another symmetrisation tolerance or
  db version in the paper); it is not in this db.

* **Caps.** The paper does not give its caps; the reference script takes up to 0.6 x its
  per-structure cap of swaps for the parent's own representation and 0.2 x for each
  accepted subgroup, and stops trying subgroups once the cap is reached (20 t- and
  20 k-subgroup tries).  Caps of 500, 1,000 and 2,000 (v1, v2, v3) give the paper's
  sizes; the presets use them.  With them, rows differ from Table I by -0.4 %,
  +0.2 % and -0.4 % and unique symmetries by +1, +6 and +1 (out of 419-485).  Seed
  to seed, v1 moves by about 0.25 % in rows and 1 in symmetries (seed 0: 62,865 /
  420; seed 1: 62,712 / 421, from `legodask augment --preset v1 --seed 1` and
  `legodask stats`), so v1 and v3 match Table I to within chance; v2's +6 is more
  than that and we can only guess why (the paper's v2 caps are not published and
  may not be exactly 1,000/200/600).  A structure gives fewer rows than its cap
  when its orbits offer few choices (an 8-atom crystal on one 8a site has 8) and
  its subgroups are few or rejected by the limits.
* **Distinct rows.** The reference samples orbit choices *with* replacement
  (`random_state.choice(ids, N_max)`), so its tables hold repeated rows; ours samples
  without replacement, so every row of a structure is distinct.  Both take every
  combination when there are at most N_max and N_max rows above that, so the
  counts agree; only the reference's rows repeat.
* **Environment test.** The reference pre-relaxes the parent and every subgroup
  with pyxtal's SO(3) builder and keeps the relaxed geometry; the presets here test
  the unrelaxed subgroup crystal (`--check env`: every carbon with 3 neighbours,
  bond lengths and angles in their windows, planar) and keep the parent's exact
  geometry plus a 0.001 Å distortion, so that every row is the parent structure.
  `--check prerelax` uses our pre-relaxation as the filter instead (rows are still
  the unrelaxed geometry); it is several times slower (3-10x on the structures we
  tried).  All 140 training structures
  pass the environment test, so no structure is lost to it.
* **Novelty test.** The reference compares a subgroup crystal with those kept
  before by pymatgen's StructureMatcher (tolerances 0.025); we compare space group,
  sorted Wyckoff positions and cell (0.05 Å, 0.5 degrees).  Both drop the same
  repeats of one subgroup; ours also drops the same symmetry reached through
  another path with the same cell.
* **Two-step subgroups.** When `subgroup_once` finds nothing, the reference goes
  through an intermediate t-subgroup built with pyxtal's defaults (`eps=0.1`,
  lattice mutated by up to 10 %) and relies on the pre-relaxation to repair it; we
  take the same path with no perturbation, so the crystal is unchanged.
* **Randomness and pyxtal version.** Which maximal subgroups a structure reaches in
  its 40 tries is random (pyxtal 1.1.5 here; the paper's version may list subgroups
  in another order), so the counts move a little between seeds (see Caps).
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="14 structures, v1 and v3 only")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--check", default="env", choices=["env", "prerelax", "none"])
    ap.add_argument("--presets", default=None, help="comma-separated (default v1,v2,v3,2m)")
    ap.add_argument("--fraction-2m", type=int, default=10,
                    help="run the 2m preset on every Nth structure and extrapolate")
    ap.add_argument("--baseline-structures", type=int, default=6)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--merge", action="store_true",
                    help="keep the saved presets not run now, and the saved baseline")
    ap.add_argument("--markdown-only", action="store_true",
                    help="rewrite the .md from the saved .json, running nothing")
    args = ap.parse_args()
    stem = "augment-quick" if args.quick else "augment"
    cmd = "OMP_NUM_THREADS=1 python benchmarks/augment.py " + " ".join(
        a for a in sys.argv[1:] if a != "--markdown-only")
    if args.markdown_only:
        res = json.loads((RESULTS / f"{stem}.json").read_text())
        (RESULTS / f"{stem}.md").write_text(markdown(res, res.get("command", cmd.strip())))
        return 0
    work = Path(args.workdir or tempfile.mkdtemp(prefix="legodask-bench-augment-"))
    train = ingest(Run(work / "base"))
    names = (args.presets or ("v1,v3,2m" if args.quick else "v1,v2,v3,2m")).split(",")
    if args.quick:
        train = train.iloc[::10].reset_index(drop=True)
    res: dict = {"workers": args.workers, "check": args.check, "quick": args.quick,
                 "raw": {"structures": len(train),
                         "unique_symmetries": int(symmetry_key(train).nunique())},
                 "presets": []}
    for name in names:
        frac = args.fraction_2m if name == "2m" and not args.quick else 1
        sub = train.iloc[::frac].reset_index(drop=True) if name == "2m" else train
        if args.quick and name == "2m":
            sub = train.head(2)
        r = run_preset(name, sub, work, args.workers, args.check)
        if frac > 1:
            r["fraction"] = frac
        r["workers"], r["command"] = args.workers, cmd.strip()
        res["presets"].append(r)
        print(json.dumps({k: v for k, v in r.items() if k != "params"}), flush=True)
    old = (json.loads((RESULTS / f"{stem}.json").read_text())
           if args.merge and (RESULTS / f"{stem}.json").exists() else {})
    if old:
        kept = {r["preset"]: r for r in old["presets"] if r["preset"] not in names}
        res["presets"] = sorted([*kept.values(), *res["presets"]],
                                key=lambda r: list(PAPER).index(r["preset"]))
        res["note"], res["seed_scatter_v1"] = old.get("note"), old.get("seed_scatter_v1")
        res["baseline"] = old["baseline"]
    else:
        res["baseline"] = baseline(train, 3 if args.quick else args.baseline_structures)
    print(json.dumps(res["baseline"]), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    res["command"] = cmd.strip()
    (RESULTS / f"{stem}.json").write_text(json.dumps(res, indent=1, default=str))
    (RESULTS / f"{stem}.md").write_text(markdown(res, cmd.strip()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
