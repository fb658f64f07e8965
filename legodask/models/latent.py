"""Latent-space optimisation as a batched state and two functions over it (TorchSim
style): ``latent_init`` evaluates the environment loss of the rows decoded from
latent vectors (``steer.LatentObjective``), ``latent_step`` moves every active row's
``z`` one step; ``latent_converged`` says which rows are done.  ``optimise_latent``
is the loop, with per-row convergence, early exit and the batch rebuilt from the
unfinished rows as they leave (``prerelax.inflight.rebuild_due``).

A step goes along Adam's direction (per-row moments of the gradient in ``z``) for a
per-row length that grows after a step that lowers the row's loss and shrinks after
one that does not, which is then not taken: a row's loss never rises, so every row
that moves at all ends lower than it started.  The decoder is frozen and the
discrete part of each row (space group, Wyckoff set, elements) is fixed, so the
rows decoded from the final ``z`` keep them exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..crystal.environment import Environment
from ..prerelax.inflight import rebuild_due
from .cvae import CVAE
from .encoding import Encoder
from .steer import LatentObjective


@dataclass(frozen=True)
class LatentOptions:
    """How to move latent vectors: the step budget, step lengths (in units of the
    prior's standard deviation), Adam's decay rates and the convergence tests."""

    steps: int = 50             # latent steps per row, start and round
    starts: int = 2             # starts per row: its posterior's, then draws of the prior
    step: float = 0.1           # first step length
    max_step: float = 0.5
    min_step: float = 1e-3      # converged: the step length fell below this
    betas: tuple[float, float] = (0.9, 0.999)
    patience: int = 10          # converged: no gain of 1e-4 of the loss in so many steps
    loss_tol: float = 1e-8      # converged: loss below this


@dataclass
class LatentState:
    """Per-row latent vectors, their losses and gradients, Adam's moments, step
    lengths and whether each row still moves (a row that does not decode is never
    active; its loss is NaN)."""

    z: torch.Tensor             # (B, d)
    loss: torch.Tensor          # (B,)
    grad: torch.Tensor          # (B, d)
    m: torch.Tensor             # (B, d)
    v: torch.Tensor             # (B, d)
    length: torch.Tensor        # (B,) next step's length
    active: torch.Tensor        # (B,)
    iters: torch.Tensor         # (B,) steps taken
    last_gain: torch.Tensor     # (B,) the step of the last real gain
    gain_loss: torch.Tensor     # (B,) the loss then
    step: int = 0


def _evaluate(obj: LatentObjective, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Losses (B,; NaN for rows the objective left out) and their gradient in ``z``."""
    z = z.detach().requires_grad_(True)
    kept = torch.as_tensor(obj.kept, dtype=torch.long, device=z.device)
    loss = torch.full((len(z),), math.nan, dtype=torch.float64, device=z.device)
    if len(kept):
        part = obj(z)
        (grad,) = torch.autograd.grad(part.sum(), z)
        loss[kept] = part.detach()
    else:
        grad = torch.zeros_like(z)
    return loss, torch.nan_to_num(grad.detach(), nan=0.0, posinf=0.0, neginf=0.0)


def latent_init(obj: LatentObjective, z: torch.Tensor, opts: LatentOptions) -> LatentState:
    """The state at latent vectors ``z`` (the objective's rows, in its order)."""
    loss, grad = _evaluate(obj, z)
    active = torch.isfinite(loss)
    zeros = torch.zeros(len(z), dtype=torch.long, device=z.device)
    return LatentState(z.detach().clone(), loss, grad, torch.zeros_like(z), torch.zeros_like(z),
                       torch.full((len(z),), opts.step, dtype=torch.float64, device=z.device),
                       active, zeros, zeros.clone(),
                       torch.where(active, loss, torch.full_like(loss, math.inf)))


def latent_converged(st: LatentState, opts: LatentOptions) -> torch.Tensor:
    """(B,) done: loss below ``loss_tol``, a step length below ``min_step``, or no
    gain over ``patience`` steps."""
    return ((st.loss < opts.loss_tol) | (st.length < opts.min_step)
            | (st.step - st.last_gain > opts.patience))


def latent_step(st: LatentState, obj: LatentObjective, opts: LatentOptions) -> LatentState:
    """One step of every active row (the others stay put); ``st`` updated."""
    b1, b2 = opts.betas
    act = st.active[:, None]
    st.m = torch.where(act, b1 * st.m + (1 - b1) * st.grad, st.m)
    st.v = torch.where(act, b2 * st.v + (1 - b2) * st.grad ** 2, st.v)
    t = (st.iters + 1).to(st.z.dtype)[:, None]
    d = (st.m / (1 - b1 ** t)) / (torch.sqrt(st.v / (1 - b2 ** t)) + 1e-12)
    norm = d.norm(dim=1).clamp_min(1e-300)
    z_new = torch.where(act, st.z - d * (st.length / norm).to(st.z.dtype)[:, None], st.z)
    loss_new, grad_new = _evaluate(obj, z_new)
    accept = st.active & torch.isfinite(loss_new) & (loss_new < st.loss)
    reject = st.active & ~accept
    st.iters += st.active
    st.z = torch.where(accept[:, None], z_new, st.z)
    st.loss = torch.where(accept, loss_new, st.loss)
    st.grad = torch.where(accept[:, None], grad_new, st.grad)
    st.length = torch.where(accept, (st.length * 1.5).clamp_max(opts.max_step),
                            torch.where(reject, st.length * 0.5, st.length))
    gain = accept & (st.loss < st.gain_loss * (1 - 1e-4))
    st.last_gain = torch.where(gain, torch.full_like(st.last_gain, st.step), st.last_gain)
    st.gain_loss = torch.where(gain, st.loss, st.gain_loss)
    st.step += 1
    return st


@dataclass
class LatentResult:
    """Per row: the final latent vector, the loss of the row decoded at the start
    and at the end (NaN: it does not decode), and the latent steps taken."""

    z: torch.Tensor
    start: np.ndarray
    loss: np.ndarray
    steps: np.ndarray
    reasons: dict[int, str]


def optimise_latent(model: CVAE, encoder: Encoder, codes: np.ndarray, z0: torch.Tensor,
                    env: Environment, opts: LatentOptions = LatentOptions(),
                    params: Any = None) -> LatentResult:
    """Move the latent vectors ``z0`` of rows with discrete part ``codes`` down the
    environment loss of the rows they decode to, for at most ``opts.steps`` steps;
    a row that does not decode at its start stays there (``reasons``)."""
    n = len(codes)
    z = z0.detach().clone()
    start = np.full(n, math.nan)
    loss = np.full(n, math.nan)
    steps = np.zeros(n, int)
    reasons: dict[int, str] = {}
    todo = np.arange(n)
    left = opts.steps
    first = True
    while len(todo) and left > 0:
        obj = LatentObjective(model, encoder, codes[todo], z[todo], env, params)
        reasons.update({int(todo[i]): r for i, r in obj.reasons.items()})
        st = latent_init(obj, z[todo], opts)
        if first:
            start[todo] = st.loss.cpu().numpy()
            first = False
        while True:
            st.active &= ~latent_converged(st, opts)
            n_active = int(st.active.sum())
            if n_active == 0 or left == 0 or rebuild_due(n_active, len(todo), st.step):
                break
            latent_step(st, obj, opts)
            left -= 1
        z[todo] = st.z
        now = st.loss.cpu().numpy()
        loss[todo] = np.where(np.isfinite(now), now, loss[todo])
        steps[todo] += st.iters.cpu().numpy()
        todo = todo[st.active.cpu().numpy()]
    return LatentResult(z, start, loss, steps, reasons)
