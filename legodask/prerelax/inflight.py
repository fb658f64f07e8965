"""In-flight batching: the structures of one batched relaxation and where each
stands, so that a batch in which most have finished is rebuilt from the rest.

A structure leaves the batch when it has converged, blown up or run out of its
budget; when fewer than half remain active (``rebuild_due``) the runner stops, the
finished ones are recorded and a smaller batch is built from the others at their
current points (their curvature memory starts afresh).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..crystal.descriptor import SO3Params
from ..crystal.environment import Environment
from .batch import Batch, make_batch
from .problem import Outcome, Problem


def rebuild_due(n_active: int, n: int, step: int) -> bool:
    """Rebuild a batch of ``n`` from its ``n_active`` structures: fewer than half
    remain, after 20 steps, in a batch of more than 8."""
    return n_active < n / 2 and step >= 20 and n > 8


@dataclass
class BatchRun:
    """What one batch's run left for each of its structures (natural units)."""

    x: list[np.ndarray]
    loss: list[float]
    iters: np.ndarray
    finished: np.ndarray
    error: list[str | None]
    spent: np.ndarray         # seconds each has used, its earlier ones included


@dataclass
class InFlight:
    """Structures being relaxed in batches: each one's point, steps and seconds,
    its outcome once finished, and which ones are still to go (``todo``)."""

    problems: Sequence[Problem]
    xs: list[np.ndarray]
    iters: np.ndarray
    spent0: np.ndarray
    spent: np.ndarray
    result: list[Outcome | None]
    todo: list[int]

    @classmethod
    def start(cls, problems: Sequence[Problem], xs: Sequence[np.ndarray] | None = None,
              spent: Sequence[float] | None = None) -> InFlight:
        """All ``problems`` to go, from ``xs`` (default: the rows'), having used
        ``spent`` seconds each already."""
        n = len(problems)
        spent0 = np.zeros(n) if spent is None else np.array(spent, float)
        return cls(problems, [np.array(x, float) for x in
                              (xs if xs is not None else [p.x0 for p in problems])],
                   np.zeros(n, int), spent0, spent0.copy(), [None] * n, list(range(n)))

    def batch(self, env: Environment, params: SO3Params, device: Any) -> Batch:
        """The batch of the structures still to go, at their current points; its
        build time is shared among them."""
        t_build = time.perf_counter()
        b = make_batch([self.problems[k] for k in self.todo], [self.xs[k] for k in self.todo],
                       env, params, device)
        self.spent[self.todo] += (time.perf_counter() - t_build) / len(self.todo)
        return b

    def collect(self, done: BatchRun, last: bool) -> None:
        """Take the run of the current batch: record the structures that finished
        (all of them when this was the ``last`` run) and keep the others to go."""
        for local, k in enumerate(self.todo):
            self.xs[k] = done.x[local]
            self.iters[k] += done.iters[local]
            self.spent[k] = done.spent[local]
            if done.finished[local] or last:
                self.result[k] = Outcome(self.xs[k], done.loss[local], int(self.iters[k]), 0.0,
                                         done.error[local])
        self.todo = [k for k in self.todo if self.result[k] is None]

    def outcomes(self) -> list[Outcome]:
        """Every structure's outcome, with the seconds it used here."""
        out = []
        for k, res in enumerate(self.result):
            res = res or Outcome(self.xs[k], math.nan, int(self.iters[k]), 0.0, "not finished")
            out.append(replace(res, seconds=float(self.spent[k] - self.spent0[k])))
        return out
