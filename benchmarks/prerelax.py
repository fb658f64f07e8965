"""Pre-relaxation: legodask against PyXtal's reference chain, on the same structures.

Two sets of structures, the same for both codes:

* the paper's bias check (Supplement S3-C): the training structures of
  sp2_sacada.db, each perturbed so that its atoms move by up to 0.5 Å (a random
  direction in each site's free subspace) and its cell lengths by up to 5 %;
  "back" means every site within 0.1 Å of where it was and the volume within 2 %;
  "back to its own" the same against the structure that the same code relaxes
  from the unperturbed start (the objective's minimum at the known structure,
  which for some structures lies farther than that from the DFT geometry);
* generated-like rows: training rows with every free coordinate drawn at random
  and cell lengths scaled by up to +-15 %.

PyXtal runs ``builder.optimize_xtal`` with the reference chain (Nelder-Mead 100,
L-BFGS-B 400 then 200, finite-difference gradients) and its CN criterion;
legodask runs its scipy path (L-BFGS-B with exact gradients) and its batched
torch path, each with its rescue of the structures that miss the environment (a
wider-cutoff continuation, then basin hops) and without it.  All on one core (OMP_NUM_THREADS=1,
torch threads 1); cost is process CPU time per structure (core-seconds).  The
environment test is legodask's ``check_atoms`` for both.

    OMP_NUM_THREADS=1 python benchmarks/prerelax.py [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
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

from legodask.crystal.convert import row_to_atoms, row_to_pyxtal  # noqa: E402
from legodask.crystal.decode import DecodeError, decode_row  # noqa: E402
from legodask.crystal.environment import check_atoms, get_environment  # noqa: E402
from legodask.prerelax import Options  # noqa: E402
from legodask.prerelax.problem import build_problem, relaxed_row  # noqa: E402
from legodask.prerelax.rescue import relax_rows  # noqa: E402

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
                decode_row(new)
                break
            except DecodeError:
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
            decode_row(new)  # atoms on top of each other: draw again later
        except DecodeError:
            continue
        out.append(new)
    return out


# ---------------------------------------------------------------------------
# outcome checks
# ---------------------------------------------------------------------------

def came_back(ref, atoms) -> bool:
    """Every site of ``atoms`` within 0.1 Å of where it is in ``ref`` and the volume
    within 2 %."""
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.io.ase import AseAtomsAdaptor

    if ref is None or atoms is None:
        return False
    if abs(atoms.get_volume() / ref.get_volume() - 1) > 0.02:
        return False
    a, b = (AseAtomsAdaptor.get_structure(x) for x in (ref, atoms))
    sm = StructureMatcher(ltol=0.05, stol=0.3, angle_tol=3, primitive_cell=False, scale=False)
    res = sm.get_rms_dist(a, b)
    if res is None:
        return False
    per_site = (ref.get_volume() / len(ref)) ** (1 / 3)
    return bool(res[1] * per_site <= 0.1)


def judge(results: list[dict], rows: list[dict], env, own: list[dict] | None = None
          ) -> list[dict]:
    """Each result's ``valid_env`` and, for perturbed rows, ``back`` (to the known
    structure) and ``back_own`` (to ``own``: the same code's results from the
    unperturbed rows)."""
    out = []
    for k, (res, row) in enumerate(zip(results, rows)):
        atoms = res["atoms"]
        ok, _ = check_atoms(atoms, env) if atoms is not None else (False, None)
        orig = row_to_atoms(row["orig"]) if "orig" in row else None
        out.append({"seconds": res["seconds"], "valid_env": bool(ok),
                    "back": came_back(orig, atoms),
                    "back_own": own is not None and came_back(own[k]["atoms"], atoms)})
    return out


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


def run_pyxtal(rows: list[dict], env, opts: Options | None = None) -> list[dict]:
    """PyXtal's reference chain (``opts`` is legodask's and unused here)."""
    bu = pyxtal_builder(env)
    out = []
    for row in rows:
        t0 = time.process_time()
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                xtal = row_to_pyxtal(row, check_distances=False)
                res, _, _ = bu.optimize_xtal(xtal, minimizers=CHAIN, add_db=False)
            except Exception:  # pyxtal fails on some rows: a failure, as it is
                res = None
        sec = time.process_time() - t0
        out.append({"seconds": sec, "atoms": res.to_ase() if res is not None else None})
    return out


def _relaxed_atoms(row: dict, res):
    try:
        return row_to_atoms({**row, **relaxed_row(build_problem(row), res.x)})
    except DecodeError:
        return None


def run_scipy(rows: list[dict], env, opts: Options = Options()) -> list[dict]:
    out = []
    for row in rows:
        t0 = time.process_time()
        [res] = relax_rows([row], [build_problem(row)], env, opts)
        out.append({"seconds": time.process_time() - t0, "atoms": _relaxed_atoms(row, res)})
    return out


def run_batched(rows: list[dict], env, opts: Options = Options(), batch: int = 256
                ) -> list[dict]:
    out: list[dict] = [{}] * len(rows)
    order = sorted(range(len(rows)), key=lambda k: build_problem(rows[k]).natoms)
    for i in range(0, len(order), batch):
        chunk = order[i:i + batch]
        t0 = time.process_time()
        res = relax_rows([rows[k] for k in chunk], [build_problem(rows[k]) for k in chunk],
                         env, opts, mode="cpu")
        sec = (time.process_time() - t0) / len(chunk)
        for k, r in zip(chunk, res):
            out[k] = {"seconds": sec, "atoms": _relaxed_atoms(rows[k], r)}
    return out


NO_RESCUE = Options(wide_rcut=0.0, hops=0)


def summary(name: str, code: str, results: list[dict]) -> dict:
    n = len(results)
    return {"set": name, "code": code, "n": n,
            "core_s_per_structure": float(np.mean([r["seconds"] for r in results])),
            "valid_env": float(np.mean([r["valid_env"] for r in results])),
            "back": float(np.mean([r["back"] for r in results])),
            "n_valid_env": int(sum(r["valid_env"] for r in results)),
            "n_back": int(sum(r["back"] for r in results)),
            "n_back_own": int(sum(r["back_own"] for r in results))}


def bias_check(name: str, code: str, run, rows: list[dict], env, opts: Options = Options()
               ) -> dict:
    """One code on perturbed rows and on their unperturbed originals (cost: the
    perturbed ones)."""
    own = run([r["orig"] for r in rows], env, opts)
    return summary(name, code, judge(run(rows, env, opts), rows, env, own))


def generated(name: str, code: str, run, rows: list[dict], env, opts: Options = Options()
              ) -> dict:
    return summary(name, code, judge(run(rows, env, opts), rows, env))


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
    batched = functools.partial(run_batched, batch=len(bias))
    rows: list[dict] = []
    # results are written after every block, so that a cut run still reports
    name = "perturbed training (0.5 Å)"
    sub = bias[::max(1, len(bias) // n_pyx)][:n_pyx]  # spread over the set
    rows += [bias_check(name, "pyxtal (reference chain)", run_pyxtal, sub, env),
             bias_check(name, "legodask scipy, same subset", run_scipy, sub, env),
             bias_check(name, "legodask batched torch (CPU), same subset", batched, sub, env)]
    report(rows, args)
    rows += [bias_check(name, "legodask scipy, all", run_scipy, bias, env),
             bias_check(name, "legodask scipy without rescue, all", run_scipy, bias, env,
                        NO_RESCUE),
             bias_check(name, "legodask batched torch (CPU), all", batched, bias, env),
             bias_check(name, "legodask batched torch (CPU) without rescue, all", batched,
                        bias, env, NO_RESCUE)]
    report(rows, args)
    # the batched path against the scipy one on one batch of >= 256 rows
    n_b = 64 if args.quick else args.batch_rows
    big = perturbed(train.sample(n_b, replace=True, random_state=3), seed=4)
    name = f"perturbed, {n_b} rows"
    rows += [generated(name, "legodask scipy", run_scipy, big, env),
             generated(name, f"legodask batched torch (CPU), batch {n_b}",
                       functools.partial(run_batched, batch=n_b), big, env)]
    report(rows, args)
    name = "generated-like"
    sub = rand[:n_pyx]
    rows += [generated(name, "pyxtal (reference chain)", run_pyxtal, sub, env),
             generated(name, "legodask scipy, same subset", run_scipy, sub, env),
             generated(name, "legodask scipy without rescue, same subset", run_scipy, sub, env,
                       NO_RESCUE),
             generated(name, "legodask batched torch (CPU), same subset", batched, sub, env),
             generated(name, "legodask scipy, all", run_scipy, rand, env),
             generated(name, "legodask scipy without rescue, all", run_scipy, rand, env,
                       NO_RESCUE),
             generated(name, "legodask scipy + Nelder-Mead 100, all", run_scipy, rand, env,
                       Options(nelder_mead=100)),
             generated(name, "legodask batched torch (CPU), all", batched, rand, env),
             generated(name, "legodask batched torch (CPU) without rescue, all", batched, rand,
                       env, NO_RESCUE)]
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
             "| back to its own | speed-up vs PyXtal |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        sp = f"{r['speedup_vs_pyxtal']:.1f}x" if r["speedup_vs_pyxtal"] else ""
        back = f"{r['n_back']}/{r['n']}" if r["set"].startswith("perturbed") else "n/a"
        own = f"{r['n_back_own']}/{r['n']}" if r["set"].startswith("perturbed training") \
            else "n/a"
        lines.append(f"| {r['set']} | {r['code']} | {r['n']} | {r['core_s_per_structure']:.3f} "
                     f"| {r['n_valid_env']}/{r['n']} | {back} | {own} | {sp} |")
    (OUT / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
