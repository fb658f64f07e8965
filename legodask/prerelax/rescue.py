"""The rescue policy: relax crystals on either path, check their environments,
and try again, in ways that escape a wrong basin, for those that miss it."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from ..crystal.convert import row_to_atoms
from ..crystal.decode import DecodeError
from ..crystal.descriptor import SO3Params
from ..crystal.environment import Environment, check_atoms
from .options import Options
from .problem import Outcome, Problem, at_density, bounds, relaxed_row, volume_per_atom
from .runner import relax_batched
from .scipy_path import relax_scipy


def check(row: Mapping[str, Any], p: Problem, out: Outcome, env: Environment) -> Outcome:
    """``out`` with ``valid`` and ``reason`` set: the environment check of the
    relaxed crystal as decoded from the row that would be written."""
    try:
        ok, reason = check_atoms(row_to_atoms({**row, **relaxed_row(p, out.x)}), env)
    except DecodeError as exc:
        ok, reason = False, f"relaxed crystal is invalid: {exc}"
    if out.error:
        ok, reason = False, out.error if ok else f"{out.error}; {reason}"
    return replace(out, valid=bool(ok), reason=reason)



def relax_rows(rows: Sequence[Mapping[str, Any]], problems: Sequence[Problem],
               env: Environment, opts: Options = Options(), mode: str = "scipy",
               params: SO3Params | None = None) -> list[Outcome]:
    """Relax crystals (``mode``: ``scipy`` one by one, or batched on ``cpu`` /
    ``cuda``), check their environments, and rescue those that miss it.

    A perturbation can push a bond out of the descriptor's cutoff or crowd a
    second neighbour into it, and L-BFGS then settles with the wrong neighbours.
    The rescues, in order, for the structures still without the environment: a
    restart at the reference's density for a start whose volume per atom is off by
    more than the factor ``opts.density`` (a dilute start has no neighbours within
    the cutoff to pull on; angles and fractional coordinates kept), a
    continuation (relax from the start with the wider cutoff ``opts.wide_rcut``,
    which sees those atoms, then with the reference's), then ``opts.hops`` basin
    hops (restart from the start moved by a random step, farther each time: hop
    i moves the free coordinates by about (i + 1) x ``opts.hop_step`` Å and
    strains the cell by (i + 1) x ``opts.hop_strain``).
    A rescue is kept when it reaches the environment, or when it lowers the loss
    of a structure that still misses it; a structure that runs out of its budget
    is not rescued further.  Time and iterations add up over the attempts.
    """
    params = params or env.params
    wide = replace(params, rcut=opts.wide_rcut)

    def run(todo: list[int], xs: list[np.ndarray], par: SO3Params,
            used: np.ndarray) -> list[Outcome]:
        ps = [problems[k] for k in todo]
        if mode == "scipy":
            return [relax_scipy(p, env, replace(opts, budget=opts.budget - u), par, x)
                    for p, x, u in zip(ps, xs, used)]
        return relax_batched(ps, env, opts, mode, par, xs=xs, spent=used)

    n = len(problems)
    first = run(list(range(n)), [p.x0 for p in problems], params, np.zeros(n))
    out = [check(r, p, o, env) for r, p, o in zip(rows, problems, first)]
    rng = np.random.default_rng(opts.seed)
    ref_vpa = env.reference.get_volume() / len(env.reference)

    def off_density(p: Problem) -> bool:
        return abs(math.log(volume_per_atom(p, p.x0) / ref_vpa)) > math.log(opts.density)

    stages = ((["density"] if opts.density > 1 else [])
              + (["wide"] if opts.wide_rcut > params.rcut else []) + list(range(opts.hops)))
    for stage in stages:
        todo = [k for k, o in enumerate(out) if not o.valid and o.error is None
                and (stage != "density" or off_density(problems[k]))]
        if not todo:
            continue
        used = np.array([out[k].seconds for k in todo])
        if stage == "density":
            new = run(todo, [at_density(problems[k], ref_vpa) for k in todo], params, used)
        elif stage == "wide":
            first = run(todo, [problems[k].x0 for k in todo], wide, used)
            new = run(todo, [o.x for o in first], params,
                      used + np.array([o.seconds for o in first]))
            for a, b in zip(first, new):
                b.seconds += a.seconds
                b.iterations += a.iterations
                b.error = b.error or a.error
        else:
            starts = []
            for k in todo:
                p = problems[k]
                lo, hi = bounds(p)
                size = np.where(p.kind == 2, opts.hop_step * p.unit, opts.hop_strain * p.x0)
                move = rng.normal(0.0, 1.0, len(p.x0)) * size * (stage + 1)
                starts.append(np.clip(p.x0 + move, lo, hi))
            new = run(todo, starts, params, used)
        for k, res in zip(todo, new):
            res = check(rows[k], problems[k], res, env)
            old = out[k]
            keep = res if (res.valid or res.loss < old.loss) else old
            out[k] = replace(keep, seconds=old.seconds + res.seconds,
                             iterations=old.iterations + res.iterations)
            if res.error and keep is old:  # cut short: no further rescue
                out[k] = replace(out[k], error=res.error, reason=f"{res.error}; {old.reason}")
    return out
