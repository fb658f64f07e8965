"""The continuous part of ``Encoder.inverse_transform`` in torch, differentiable:
features (a mixture column's scalar and mode block) -> cell and fractional
coordinates -> each site on its Wyckoff generator, as free parameters.

``TorchInverse.values`` is ``Mixture.decode`` of every continuous column, with the
mode read hard (the argmax, as the numpy inverse: exact) or soft (the block's
weights average the modes, so that gradients reach the mode logits too).  ``rows``
then does what ``to_generators(snap=True)`` does to a site: the nearest point, under
the symmetrised cell's metric, of its generator's subspace over the 27 nearest
lattice shifts, wrapped into [0, 1) -- the coordinates a position fixes come from
the group, only the free ones from the model.  The discrete part of a row (space
group, Wyckoff indices) is given: it chooses which arrays apply and carries no
gradient.  Where numpy and torch both compute a value, they agree to rounding.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from .. import schema as S
from ..crystal.cell import symmetrize_cell
from ..crystal.wyckoff import NEAR_ONE, NEAR_ZERO, WyckoffOps, generator_ops, group_info
from ..prerelax.batch import cell_vectors
from .encoding import CONTINUOUS, Encoder, Mixture

_SHIFTS = torch.tensor([[i, j, k] for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)],
                       dtype=torch.float64)
_SHIFTS = _SHIFTS[torch.argsort(_SHIFTS.abs().sum(1), stable=True)]  # the zero shift first


@functools.lru_cache(maxsize=None)
def _symmetrizer(lattice_type: str) -> tuple[np.ndarray, np.ndarray]:
    """``(L, c)`` with ``symmetrize_cell(cell) == L @ cell + c``: the map is affine."""
    c = symmetrize_cell(np.zeros(6), lattice_type)
    return np.stack([symmetrize_cell(e, lattice_type) - c for e in np.eye(6)], 1), c


def symmetrize(cell: torch.Tensor, lattice_type: str) -> torch.Tensor:
    """``crystal.cell.symmetrize_cell`` of cells (B, 6), differentiable."""
    L, c = _symmetrizer(lattice_type)
    return cell @ torch.as_tensor(L.T, dtype=cell.dtype, device=cell.device) + torch.as_tensor(
        c, dtype=cell.dtype, device=cell.device)


def wrap(v: torch.Tensor) -> torch.Tensor:
    """``crystal.wyckoff.wrap`` (its default tolerances), differentiable a.e."""
    w = v - torch.floor(v)
    w = torch.where((w - 1.0).abs() <= NEAR_ONE, torch.zeros_like(w), w)
    return torch.where(w.abs() <= NEAR_ZERO, torch.zeros_like(w), w)


@dataclass
class Rows:
    """Rows in torch: cells as read (B, 6) and symmetrised for the group, and each
    site (B, MAX_SITES, 3) on its generator (NaN where unused) with its free
    parameters (generator point = ``A0 @ free + t0``; zero where unused)."""

    cell: torch.Tensor
    sym_cell: torch.Tensor
    xyz: torch.Tensor
    free: torch.Tensor
    used: np.ndarray


class TorchInverse:
    """An encoder's continuous inverse as tensors (``"cont"`` mode only)."""

    def __init__(self, encoder: Encoder, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float64):
        if encoder.mode != "cont":
            raise ValueError("a differentiable inverse needs the encoder's \"cont\" mode")
        mixtures = {c.column: c for c in encoder.columns if isinstance(c, Mixture)}
        offsets = {s.column: s.offset for s in encoder.spans if s.kind == "scalar"}
        self.mixtures = [mixtures[c] for c in CONTINUOUS]
        self.offsets = [offsets[c] for c in CONTINUOUS]
        self.encoder, self.device, self.dtype = encoder, torch.device(device), dtype
        f = dict(dtype=dtype, device=self.device)
        self.means = [torch.as_tensor(m.means, **f) for m in self.mixtures]
        self.stds = [torch.as_tensor(m.stds, **f) for m in self.mixtures]

    def values(self, x: torch.Tensor, soft: bool = False) -> torch.Tensor:
        """(B, len(CONTINUOUS)) column values of feature rows ``x`` (B, width).  A
        mode block's real modes are read (never the padding mode: whether a site is
        used is the discrete row's to say); hard: the argmax, soft: its entries as
        weights (probabilities, e.g. a softmax of logits)."""
        cols = []
        for m, o, mu, sd in zip(self.mixtures, self.offsets, self.means, self.stds):
            block = x[:, o + 1: o + 1 + m.n_modes]
            if soft:
                w = block / block.sum(1, keepdim=True).clamp_min(1e-12)
            else:
                w = torch.nn.functional.one_hot(block.argmax(1), m.n_modes).to(x.dtype)
            cols.append(torch.clamp(x[:, o], -1, 1) * 4 * (w @ sd) + w @ mu)
        return torch.stack(cols, 1)

    def rows(self, x: torch.Tensor, spg: np.ndarray, wp: np.ndarray,
             soft: bool = False) -> Rows:
        """Cells and sites of feature rows ``x`` whose discrete part is space groups
        ``spg`` (B,) and Wyckoff indices ``wp`` (B, MAX_SITES; -1: unused)."""
        v = self.values(x.to(self.dtype), soft)
        n_cell = len(S.CELL)
        cell = v[:, :n_cell]
        xyz = v[:, n_cell:].reshape(len(v), S.MAX_SITES, 3)
        spg, wp = np.asarray(spg, int), np.asarray(wp, int)
        sym = torch.empty_like(cell)
        for g in np.unique(spg):
            r = torch.as_tensor(np.flatnonzero(spg == g), device=cell.device)
            sym[r] = symmetrize(cell[r], group_info(int(g))[0])
        C = cell_vectors(sym)
        metric = C @ C.transpose(1, 2)
        used = wp >= 0
        point = torch.full_like(xyz, float("nan"))
        free = torch.zeros_like(xyz)
        keys = np.where(used, spg[:, None] * 10_000 + wp, -1)
        for key in np.unique(keys[used]):
            ri, ki = np.nonzero(keys == key)
            ops = generator_ops(int(key // 10_000), int(key % 10_000))
            p, f = snap(ops, xyz[ri, ki], metric[ri])
            point[ri, ki], free[ri, ki] = p, f
        return Rows(cell, sym, point, free, used)


def snap(ops: WyckoffOps, xyz: torch.Tensor, metric: torch.Tensor
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """``project_many`` onto a generator (``generator_ops``): the nearest point of its
    subspace (m, 3), wrapped, and its free parameters (m, 3)."""
    f = dict(dtype=xyz.dtype, device=xyz.device)
    t0 = torch.as_tensor(ops.t[0], **f)
    pinv = torch.as_tensor(ops.pinv[0], **f)
    p = xyz - torch.floor(xyz)
    if ops.dof == 3:
        return wrap(p), (p - t0) @ pinv.T
    d = p[:, None, :] - t0 - _SHIFTS.to(**f)[None]                       # (m, 27, 3)
    if ops.dof:
        B = torch.as_tensor(ops.basis[0], **f)                             # (3, d)
        GB = metric @ B                                                    # (m, 3, d)
        coef = torch.linalg.solve((B.T @ GB)[:, None], (d[..., None, :] @ GB[:, None])
                                  .transpose(-1, -2))[..., 0]              # (m, 27, d)
        along = coef @ B.T
    else:
        along = torch.zeros_like(d)
    resid = d - along
    dist2 = torch.einsum("msa,mab,msb->ms", resid, metric, resid)
    best = torch.argmax((dist2 <= dist2.min(1, keepdim=True).values + 1e-12).to(torch.int8), 1)
    rows = torch.arange(len(p), device=p.device)
    chosen = along[rows, best]
    return wrap(chosen + t0 + _SHIFTS.to(**f)[best]), chosen @ pinv.T
