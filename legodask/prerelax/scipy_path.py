"""One crystal at a time with scipy: [Nelder-Mead, then] L-BFGS-B with exact
gradients from the one-crystal batch, restarted in small boxes when it runs off
to an empty cell."""

from __future__ import annotations

import math
import time

import numpy as np

from ..crystal.descriptor import SO3Params
from ..crystal.environment import Environment
from .batch import loss_and_grad, make_batch
from .options import Options
from .problem import Outcome, Problem, bounds


class BudgetExceeded(RuntimeError):
    """A structure ran past its time budget."""



def relax_scipy(p: Problem, env: Environment, opts: Options = Options(),
                params: SO3Params | None = None, x0: np.ndarray | None = None) -> Outcome:
    """One structure with scipy from ``x0`` (default: the row's): [Nelder-Mead], then
    L-BFGS-B with exact gradients; the best point found is kept when the budget runs
    out."""
    import torch
    from scipy.optimize import minimize

    params = params or env.params
    t0 = time.perf_counter()
    start = p.x0 if x0 is None else np.asarray(x0, float)
    batch = make_batch([p], [start], env, params)
    unit = p.unit * opts.scipy_unit
    lo, hi = bounds(p)
    best = {"value": math.inf, "x": start.copy()}

    def fun(y: np.ndarray) -> tuple[float, np.ndarray]:
        if time.perf_counter() - t0 > opts.budget:
            raise BudgetExceeded(f"time budget of {opts.budget:g} s exceeded")
        x = y * unit
        loss, grad = loss_and_grad(batch, torch.as_tensor(x, dtype=torch.float64))
        value = float(loss[0])
        if not math.isfinite(value):
            return 1e10, np.zeros_like(y)
        if value < best["value"]:
            best.update(value=value, x=x.copy())
        return value, grad.numpy() * unit

    lo_s, hi_s = lo / unit, hi / unit
    scaled_bounds = [(None if not np.isfinite(a) else a, None if not np.isfinite(b) else b)
                     for a, b in zip(lo_s, hi_s)]

    def lbfgs(y: np.ndarray, box: float = 0.0) -> int:
        """L-BFGS-B from ``y``; with ``box`` > 0 (Å) inside a box of that half-width,
        recentred while the optimum lies on one of its faces."""
        nit, half = 0, box / opts.scipy_unit
        while nit < opts.maxiter:
            bounds_now = scaled_bounds if not box else [
                (max(a, v - half) if a is not None else v - half,
                 min(b, v + half) if b is not None else v + half)
                for (a, b), v in zip(scaled_bounds, y)]
            res = minimize(fun, y, jac=True, method="L-BFGS-B", bounds=bounds_now,
                           options={"maxiter": opts.maxiter - nit, "ftol": opts.ftol,
                                    "gtol": opts.fmax * opts.scipy_unit})  # fmax is per Å
            nit += max(int(res.nit), 1)
            y = res.x
            if not box:
                break
            box_lo, box_hi = np.array(bounds_now, float).T
            on_face = (((y <= box_lo + 1e-9) & (box_lo > lo_s + 1e-9))
                       | ((y >= box_hi - 1e-9) & (box_hi < hi_s - 1e-9)))
            if not on_face.any():
                break
        return nit

    def escaped() -> bool:
        """The best point has a cell length at its upper bound: the line search ran
        off to an empty cell (every spectrum zero), whose loss can be below that of a
        compressed start."""
        lengths = p.kind == 0
        return bool(np.any(best["x"][lengths] >= hi[lengths] * (1 - 1e-9)))

    nit = 0
    error = None
    try:
        y = start / unit
        if opts.nelder_mead:
            res = minimize(lambda v: fun(v)[0], y, method="Nelder-Mead", bounds=scaled_bounds,
                           options={"maxiter": opts.nelder_mead})
            y, nit = res.x, nit + res.nit
        nit += lbfgs(y)
        if opts.box and escaped():  # again from the start, in small steps
            best.update(loss=math.inf)
            nit += lbfgs(start / unit, opts.box)
    except BudgetExceeded as exc:
        error = str(exc)
    if not math.isfinite(best["value"]):
        error = error or "the objective is not finite"
    return Outcome(best["x"], best["value"], nit, time.perf_counter() - t0, error)
