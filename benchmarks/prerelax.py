"""Pre-relaxation: legodask against PyXtal's reference chain, on the same structures.

Two sets of structures, the same for both codes:

* the paper's bias check (Supplement S3-C): the training structures of
  sp2_sacada.db, each perturbed so that its atoms move by up to 0.5 Å (a random
  direction in each site's free subspace) and its cell lengths by up to 5 %;
  "back" means every site within 0.1 Å of where it was and the volume within 2 %;
* generated-like rows: training rows with every free coordinate drawn at random
  and cell lengths scaled by up to +-15 %.

PyXtal runs ``builder.optimize_xtal`` with the reference chain (Nelder-Mead 100,
L-BFGS-B 400 then 200, finite-difference gradients) and its CN criterion;
legodask runs its scipy path (L-BFGS-B with exact gradients, basin hopping for
hard cases) and its batched torch path.  All on one core (OMP_NUM_THREADS=1,
torch threads 1); cost is process CPU time per structure (core-seconds).  The
environment test is legodask's ``check_atoms`` for both.

    OMP_NUM_THREADS=1 python benchmarks/prerelax.py [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("LEGODASK_SACADA_DB",  # the shared copy beside the repository
                      str(Path(__file__).resolve().parents[2] / "shared/data/sp2_sacada.db"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from ase.geometry import cellpar_to_cell  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode import training_rows  # noqa: E402

from legodask import codec  # noqa: E402
from legodask.environment import check_atoms, get_environment  # noqa: E402
from legodask.prerelax import (Options, build_problem, relax_batch, relax_scipy,  # noqa: E402
                               relaxed_row)

OUT = Path(__file__).parent / "results"
RCUT = 2.1
CHAIN = [("Nelder-Mead", 100), ("L-BFGS-B", 400), ("L-BFGS-B", 200)]


# ---------------------------------------------------------------------------
# structures
# ---------------------------------------------------------------------------

def perturbed(rows: pd.DataFrame, seed: int, shift: float = 0.5, strain: float = 0.05
              ) -> list[dict]:
    """Each row with its sites moved by up to ``shift`` Å and lengths by ``strain``
    (drawn again when atoms come closer than 0.6 Å)."""
    rng = np.random.default_rng(seed)
    out = []
    for row in rows.to_dict("records"):
        p = build_problem(row)
        cell = cellpar_to_cell(p.dec.cell)
        for _ in range(50):
            x = p.x0.copy()
            for s, site in enumerate(p.dec.sites):
                free = p.site_var[s] >= 0
                if not free.any():
                    continue
                step = np.zeros(3)
                step[free] = rng.normal(size=free.sum())
                # Cartesian move of the generator for this step in the free coordinates
                move = np.linalg.norm((site.wp.A[0] @ step) @ cell)
                x[p.site_var[s][free]] += step[free] / max(move, 1e-9) * rng.uniform(0, shift)
            lengths = p.kind == 0
            x[lengths] *= 1 + rng.uniform(-strain, strain, lengths.sum())
            new = {**row, **relaxed_row(p, x), "orig": row}
            try:
                codec.decode_row(new)
                break
            except codec.DecodeError:
                continue
        out.append(new)
    return out


def generated_like(rows: pd.DataFrame, n: int, seed: int) -> list[dict]:
    """Training rows with random free coordinates and cells scaled by up to 15 %."""
    rng = np.random.default_rng(seed)
    out: list[dict] = []
    while len(out) < n:
        row = rows.iloc[int(rng.integers(len(rows)))].to_dict()
        p = build_problem(row)
        x = p.x0.copy()
        coords = p.kind == 2
        x[coords] = rng.uniform(0, 1, coords.sum())
        x[p.kind == 0] *= 1 + rng.uniform(-0.15, 0.15, (p.kind == 0).sum())
        new = {**row, **relaxed_row(p, x)}
        try:
            codec.decode_row(new)  # atoms on top of each other: draw again later
        except codec.DecodeError:
            continue
        out.append(new)
    return out


# ---------------------------------------------------------------------------
# outcome checks
# ---------------------------------------------------------------------------

def came_back(orig: dict, atoms) -> bool:
    """Every site within 0.1 Å of where it was and the volume within 2 %."""
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.io.ase import AseAtomsAdaptor

    ref = codec.row_to_atoms(orig)
    if abs(atoms.get_volume() / ref.get_volume() - 1) > 0.02:
        return False
    a, b = (AseAtomsAdaptor.get_structure(x) for x in (ref, atoms))
    sm = StructureMatcher(ltol=0.05, stol=0.3, angle_tol=3, primitive_cell=False, scale=False)
    res = sm.get_rms_dist(a, b)
    if res is None:
        return False
    per_site = (ref.get_volume() / len(ref)) ** (1 / 3)
    return bool(res[1] * per_site <= 0.1)


def judge(atoms, env, orig: dict | None) -> dict:
    ok, _ = check_atoms(atoms, env) if atoms is not None else (False, None)
    back = bool(orig is not None and atoms is not None and came_back(orig, atoms))
    return {"valid_env": bool(ok), "back": back}


# ---------------------------------------------------------------------------
# the codes
# ---------------------------------------------------------------------------

def pyxtal_builder(env):
    from pyxtal.lego.builder import builder

    tmp = tempfile.mkdtemp()
    with contextlib.redirect_stdout(io.StringIO()):
        bu = builder(["C"], [1], db_file=f"{tmp}/b.db", log_file=f"{tmp}/b.log")
        bu.set_descriptor_calculator(mykwargs={"rcut": RCUT})
        bu.set_reference_enviroments(env.reference)
        bu.set_criteria(CN={"C": [3]})
    return bu


def run_pyxtal(rows: list[dict], env) -> list[dict]:
    bu = pyxtal_builder(env)
    out = []
    for row in rows:
        t0 = time.process_time()
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                xtal = codec.row_to_pyxtal(row, check_distances=False)
                res, _, _ = bu.optimize_xtal(xtal, minimizers=CHAIN, add_db=False)
            except Exception:  # pyxtal fails on some rows: a failure, as it is
                res = None
        sec = time.process_time() - t0
        atoms = res.to_ase() if res is not None else None
        out.append({"seconds": sec, **judge(atoms, env, row.get("orig"))})
    return out


def _ours(rows: list[dict], env, outcomes, seconds: list[float]) -> list[dict]:
    out = []
    for row, res, sec in zip(rows, outcomes, seconds):
        try:
            atoms = codec.row_to_atoms({**row, **relaxed_row(build_problem(row), res.x)})
        except codec.DecodeError:
            atoms = None
        out.append({"seconds": sec, "loss": res.loss, **judge(atoms, env, row.get("orig"))})
    return out


def run_scipy(rows: list[dict], env, opts: Options = Options()) -> list[dict]:
    outcomes, seconds = [], []
    for row in rows:
        t0 = time.process_time()
        outcomes.append(relax_scipy(build_problem(row), env, opts))
        seconds.append(time.process_time() - t0)
    return _ours(rows, env, outcomes, seconds)


def run_batched(rows: list[dict], env, batch: int) -> list[dict]:
    outcomes, seconds = [], []
    order = sorted(range(len(rows)), key=lambda k: build_problem(rows[k]).natoms)
    for i in range(0, len(order), batch):
        chunk = order[i:i + batch]
        t0 = time.process_time()
        res = relax_batch([build_problem(rows[k]) for k in chunk], env, Options())
        sec = (time.process_time() - t0) / len(chunk)
        outcomes += res
        seconds += [sec] * len(chunk)
    back = [None] * len(rows)
    for pos, k in enumerate(order):
        back[k] = (outcomes[pos], seconds[pos])
    return _ours(rows, env, [b[0] for b in back], [b[1] for b in back])


# the CPU chain's options for hard cases: a derivative-free start like PyXtal's, and
# basin hopping while the loss stays above Options.hop_above
VARIANTS = [("+ Nelder-Mead 100", Options(nelder_mead=100)),
            ("+ 3 hops", Options(hops=3))]


def summary(name: str, code: str, results: list[dict]) -> dict:
    n = len(results)
    return {"set": name, "code": code, "n": n,
            "core_s_per_structure": float(np.mean([r["seconds"] for r in results])),
            "valid_env": float(np.mean([r["valid_env"] for r in results])),
            "back": float(np.mean([r["back"] for r in results])),
            "n_valid_env": int(sum(r["valid_env"] for r in results)),
            "n_back": int(sum(r["back"] for r in results))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small subsets")
    ap.add_argument("--n-pyxtal", type=int, default=12, help="structures for PyXtal per set")
    ap.add_argument("--n-random", type=int, default=60, help="generated-like rows")
    ap.add_argument("--batch-rows", type=int, default=256,
                    help="rows for the batched-vs-scipy timing (one batch)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    env = get_environment("graphite")
    train = training_rows()
    n_train = 30 if args.quick else len(train)
    n_pyx = 8 if args.quick else args.n_pyxtal
    n_rand = 30 if args.quick else args.n_random
    bias = perturbed(train.iloc[:n_train], seed=1)
    rand = generated_like(train, n_rand, seed=2)
    rows: list[dict] = []
    # results are written after every block, so that a cut run still reports
    name = "perturbed training (0.5 Å)"
    sub = bias[::max(1, len(bias) // n_pyx)][:n_pyx]  # spread over the set
    rows += [summary(name, "pyxtal (reference chain)", run_pyxtal(sub, env)),
             summary(name, "legodask scipy, same subset", run_scipy(sub, env)),
             summary(name, "legodask batched torch (CPU), same subset",
                     run_batched(sub, env, batch=len(sub))),
             summary(name, "legodask scipy, all", run_scipy(bias, env)),
             summary(name, "legodask scipy + 3 hops, all", run_scipy(bias, env, Options(hops=3))),
             summary(name, "legodask batched torch (CPU), all",
                     run_batched(bias, env, batch=len(bias)))]
    report(rows, args)
    # the batched path against the scipy one on one batch of >= 256 rows
    n_b = 64 if args.quick else args.batch_rows
    big = perturbed(train.sample(n_b, replace=True, random_state=3), seed=4)
    rows.append(summary(f"perturbed, {n_b} rows", "legodask scipy", run_scipy(big, env)))
    rows.append(summary(f"perturbed, {n_b} rows", f"legodask batched torch (CPU), batch {n_b}",
                        run_batched(big, env, batch=n_b)))
    report(rows, args)
    name = "generated-like"
    sub = rand[:n_pyx]
    rows += [summary(name, "pyxtal (reference chain)", run_pyxtal(sub, env)),
             summary(name, "legodask scipy, same subset", run_scipy(sub, env))]
    for label, opts in VARIANTS:
        rows.append(summary(name, f"legodask scipy {label}, same subset",
                            run_scipy(sub, env, opts)))
    rows += [summary(name, "legodask scipy, all", run_scipy(rand, env))]
    for label, opts in VARIANTS:
        rows.append(summary(name, f"legodask scipy {label}, all", run_scipy(rand, env, opts)))
    rows.append(summary(name, "legodask batched torch (CPU), all",
                        run_batched(rand, env, batch=len(rand))))
    report(rows, args)


def report(rows: list[dict], args: argparse.Namespace) -> None:
    OUT.mkdir(exist_ok=True)
    name = "prerelax-quick" if args.quick else "prerelax"
    cmd = "OMP_NUM_THREADS=1 python benchmarks/prerelax.py" + \
        (" --quick" if args.quick else "")
    by_set = {r["set"]: r for r in rows if r["code"].startswith("pyxtal")}
    for r in rows:
        ref = by_set.get(r["set"])
        r["speedup_vs_pyxtal"] = (ref["core_s_per_structure"] / r["core_s_per_structure"]
                                  if ref and not r["code"].startswith("pyxtal") else None)
    (OUT / f"{name}.json").write_text(json.dumps({"command": cmd, "rcut": RCUT,
                                                  "results": rows}, indent=1))
    lines = [f"`{cmd}` (one core, rcut {RCUT} Å, graphite reference)", "",
             "| set | code | n | core-s / structure | valid_env | back (0.1 Å, 2 % vol) "
             "| speed-up vs PyXtal |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        sp = f"{r['speedup_vs_pyxtal']:.1f}x" if r["speedup_vs_pyxtal"] else ""
        back = f"{r['n_back']}/{r['n']}" if r["set"].startswith("perturbed") else "n/a"
        lines.append(f"| {r['set']} | {r['code']} | {r['n']} | {r['core_s_per_structure']:.3f} "
                     f"| {r['n_valid_env']}/{r['n']} | {back} | {sp} |")
    (OUT / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
