"""Batched L-BFGS as a state and two functions over it (TorchSim style):
``lbfgs_init`` evaluates a batch and sets up the state, ``lbfgs_step`` moves every
active structure one step; ``lbfgs_converged`` says which structures are done.
The loop that calls them lives in ``runner``.

Per structure: its own curvature memory and a trust radius on the step (grown
after a step that lowers the loss, cut and the memory cleared after one that does
not -- no line search, so every structure takes one step per evaluation).  The
variables are scaled (about 1 Å per unit); a structure whose start is not finite
is frozen there (``blown``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .batch import Batch, loss_and_grad
from .options import Options


@dataclass
class LbfgsState:
    """The batched optimiser's state: per-variable vectors, per-structure scalars,
    and a ring of the last ``memory`` steps (a slot with ``rho = 0`` is empty)."""

    x: Any                  # (n_var,) scaled variables
    loss: Any               # (B,)
    grad: Any               # (n_var,) gradient in scaled variables
    lower: Any              # (n_var,) scaled bounds
    upper: Any
    trust: Any              # (B,) largest step (scaled units, about Å)
    gamma: Any              # (B,) initial inverse-Hessian scale, 0: none yet
    s: Any                  # (m, n_var)
    y: Any                  # (m, n_var)
    rho: Any                # (m, B)
    active: Any             # (B,) still moving
    blown: Any              # (B,) not finite at the start
    iters: Any              # (B,) steps taken
    last_gain: Any          # (B,) the step of the last real gain
    gain_loss: Any          # (B,) the loss at that step
    slot: int = 0
    step: int = 0           # steps taken by the batch


def _segment_sum(values: Any, owner: Any, n: int) -> Any:
    import torch

    return torch.zeros(n, dtype=values.dtype, device=values.device).index_add(0, owner, values)


def _evaluate(b: Batch, y: Any) -> tuple[Any, Any]:
    """Losses and gradient at scaled variables ``y``."""
    loss, g = loss_and_grad(b, y * b.unit)
    return loss, g * b.unit


def _finite(b: Batch, loss: Any, grad: Any) -> Any:
    """(B,) the structure's loss and every component of its gradient are finite."""
    import torch

    return torch.isfinite(loss) & _segment_sum((~torch.isfinite(grad)).double(),
                                               b.owner, b.n).eq(0)


def lbfgs_init(b: Batch, opts: Options, memory: int = 10) -> LbfgsState:
    """The state at the batch's variables, with an empty memory of ``memory`` steps."""
    import torch

    n = b.n
    f64 = dict(dtype=torch.float64, device=b.x.device)
    y0 = b.x / b.unit
    loss, grad = _evaluate(b, y0)
    finite = _finite(b, loss, grad)
    zeros = torch.zeros(n, dtype=torch.long, device=b.x.device)
    return LbfgsState(
        y0, loss, grad, b.lower / b.unit, b.upper / b.unit,
        trust=torch.full((n,), opts.max_step, **f64), gamma=torch.zeros(n, **f64),
        s=torch.zeros((memory, len(y0)), **f64), y=torch.zeros((memory, len(y0)), **f64),
        rho=torch.zeros((memory, n), **f64), active=finite.clone(), blown=~finite,
        iters=zeros, last_gain=zeros.clone(),
        gain_loss=torch.where(finite, loss, torch.full_like(loss, math.inf)))


def lbfgs_converged(st: LbfgsState, b: Batch, opts: Options) -> Any:
    """(B,) converged: loss below ``loss_tol``, largest gradient component below
    ``fmax``, a vanished trust radius, or no gain over ``patience`` steps."""
    import torch

    gmax = torch.zeros(b.n, dtype=torch.float64, device=b.x.device).scatter_reduce(
        0, b.owner, st.grad.abs(), "amax")
    return ((st.loss < opts.loss_tol) | (gmax < opts.fmax) | (st.trust < 1e-9)
            | (st.step - st.last_gain > opts.patience))


def _direction(st: LbfgsState, owner: Any, n: int) -> Any:
    """The two-loop recursion, per structure (segment sums over its variables)."""
    import torch

    q = st.grad.clone()
    m = st.s.shape[0]
    order = [(st.slot - 1 - k) % m for k in range(m)]       # newest first
    alphas = {}
    for i in order:
        a = st.rho[i] * _segment_sum(st.s[i] * q, owner, n)
        alphas[i] = a
        q = q - a[owner] * st.y[i]
    r = torch.where(st.gamma[owner] > 0, st.gamma[owner] * q, q)
    for i in reversed(order):
        beta = st.rho[i] * _segment_sum(st.y[i] * r, owner, n)
        r = r + (alphas[i] - beta)[owner] * st.s[i]
    return -r


def lbfgs_step(st: LbfgsState, b: Batch, opts: Options) -> LbfgsState:
    """One step of every active structure (the others stay put); ``st`` updated."""
    import torch

    n, owner, active = b.n, b.owner, st.active
    d = torch.where(torch.isfinite(st.grad), _direction(st, owner, n),
                    torch.zeros_like(st.grad))
    descent = _segment_sum(d * st.grad, owner, n) < 0
    d = torch.where(descent[owner], d, -st.grad)
    norm = torch.sqrt(_segment_sum(d * d, owner, n)).clamp_min(1e-300)
    d = d * (torch.minimum(st.trust, norm) / norm)[owner]
    y_new = torch.where(active[owner], torch.minimum(torch.maximum(st.x + d, st.lower),
                                                     st.upper), st.x)
    loss_new, grad_new = _evaluate(b, y_new)
    ok = _finite(b, loss_new, grad_new)
    accept = active & ok & (loss_new <= st.loss + 1e-12 * st.loss.abs())
    reject = active & ~accept
    st.iters += active
    # memory: the new pair where accepted with positive curvature, else empty
    s_vec = (y_new - st.x) * accept[owner]
    y_vec = (grad_new - st.grad) * accept[owner]
    sy = _segment_sum(s_vec * y_vec, owner, n)
    yy = _segment_sum(y_vec * y_vec, owner, n)
    good = accept & (sy > 1e-12 * torch.sqrt(yy))
    st.s[st.slot] = s_vec * good[owner]
    st.y[st.slot] = y_vec * good[owner]
    st.rho[st.slot] = torch.where(good, 1 / sy.clamp_min(1e-300), torch.zeros_like(sy))
    st.gamma = torch.where(good, sy / yy.clamp_min(1e-300), st.gamma)
    st.slot = (st.slot + 1) % st.s.shape[0]
    st.rho[:, reject] = 0.0
    st.gamma = torch.where(reject, torch.zeros_like(st.gamma), st.gamma)
    st.trust = torch.where(accept, (st.trust * 1.5).clamp_max(opts.max_step),
                           torch.where(reject, st.trust * 0.25, st.trust))
    st.x = torch.where(accept[owner], y_new, st.x)
    st.loss = torch.where(accept, loss_new, st.loss)
    st.grad = torch.where(accept[owner], grad_new, st.grad)
    gain = accept & (st.loss < st.gain_loss - torch.clamp(st.gain_loss * 1e-4,
                                                          min=opts.ftol * opts.patience))
    st.last_gain = torch.where(gain, torch.full_like(st.last_gain, st.step), st.last_gain)
    st.gain_loss = torch.where(gain, st.loss, st.gain_loss)
    st.step += 1
    return st
