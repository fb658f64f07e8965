"""Batched relaxation: L-BFGS steps over a batch until its structures are done,
with the time of each step shared among the structures that took it, and the
batch rebuilt from the unfinished ones as they leave (``inflight``)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..crystal.descriptor import SO3Params
from ..crystal.environment import Environment
from .batch import Batch
from .inflight import BatchRun, InFlight, rebuild_due
from .lbfgs import lbfgs_converged, lbfgs_init, lbfgs_step
from .options import Options
from .problem import Outcome, Problem


def relax_batched(problems: Sequence[Problem], env: Environment, opts: Options = Options(),
                  device: Any = "cpu", params: SO3Params | None = None,
                  memory: int = 10, xs: Sequence[np.ndarray] | None = None,
                  spent: Sequence[float] | None = None) -> list[Outcome]:
    """L-BFGS on many structures at once, in scaled variables (about 1 Å per unit),
    for at most ``opts.steps`` steps in all.

    Each structure converges and exits on its own (``lbfgs_converged``); when
    fewer than half the structures remain active the batch is rebuilt from the
    active ones.  A structure whose loss turns non-finite is frozen at its last
    finite point and recorded.  Each step's time is shared among the structures
    active in it; one whose share passes ``budget`` seconds is stopped at its best
    point and recorded as over its budget.  ``xs`` are the starting points
    (default: the rows'), ``spent`` the seconds each has already used.
    """
    params = params or env.params
    flight = InFlight.start(problems, xs, spent)
    steps_left = opts.steps
    while flight.todo and steps_left > 0:
        b = flight.batch(env, params, device)
        done, used = run_steps(b, opts, memory, steps_left, flight.spent[flight.todo])
        steps_left -= used
        flight.collect(done, last=steps_left <= 0)
    return flight.outcomes()


def run_steps(b: Batch, opts: Options, memory: int, steps: int, spent: np.ndarray
              ) -> tuple[BatchRun, int]:
    """Step one batch until all its structures converged or are over budget, a
    rebuild is due or ``steps`` are used: the best point of each, the seconds each
    has ``spent`` (its share of every step it took part in), and the steps used."""
    import torch

    n = b.n
    tick = time.perf_counter()
    spent_t = torch.as_tensor(np.asarray(spent, float), dtype=torch.float64, device=b.x.device)
    st = lbfgs_init(b, opts, memory)
    over = torch.zeros(n, dtype=torch.bool, device=b.x.device)
    timed = st.active.clone()  # who shares the time since ``tick``
    for _ in range(steps):
        now = time.perf_counter()
        spent_t += timed * ((now - tick) / max(int(timed.sum()), 1))
        tick = now
        over |= st.active & (spent_t > opts.budget)
        st.active &= ~over
        st.active &= ~lbfgs_converged(st, b, opts)
        n_active = int(st.active.sum())
        if n_active == 0 or rebuild_due(n_active, n, st.step):
            break
        timed = st.active.clone()
        lbfgs_step(st, b, opts)
    spent_t += timed * ((time.perf_counter() - tick) / max(int(timed.sum()), 1))
    x = (st.x * b.unit).cpu().numpy()
    offsets = np.cumsum([0] + [len(p.x0) for p in b.problems])
    losses = torch.where(st.blown, torch.full_like(st.loss, math.nan), st.loss).cpu().numpy()
    error = ["the objective blew up (non-finite loss or gradient)" if bool(bl) else
             f"time budget of {opts.budget:g} s exceeded" if bool(ov) else None
             for bl, ov in zip(st.blown, over)]
    return BatchRun([x[offsets[k]:offsets[k + 1]] for k in range(n)],
                    [float(v) for v in losses], st.iters.cpu().numpy(),
                    (~st.active).cpu().numpy(), error, spent_t.cpu().numpy()), st.step
