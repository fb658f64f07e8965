"""Space groups of structures, and symmetrisation of a batch's forces and stresses.

``space_group`` is what the rank stage records for a relaxed structure
(``spg_relaxed_<model>``).  ``SymmetryBatch`` keeps a batched relaxation in the
space group each structure started in, as ASE's ``FixSymmetry`` does for one:
each step the forces are averaged over the group's operations (with the atom each
operation maps an atom to) and so is the stress, so every move of the atoms and
the cell has the symmetry of the start.  The operations of all structures of a
batch are flattened into index tensors, so one gather, one batched product and
one scatter symmetrise the whole batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from ase import Atoms


def _dataset(atoms: Atoms, symprec: float) -> Any:
    """spglib's symmetry dataset of ``atoms`` (None when it finds none)."""
    import spglib

    cell = (np.asarray(atoms.cell), atoms.get_scaled_positions(), atoms.numbers)
    return spglib.get_symmetry_dataset(cell, symprec=symprec)


def space_group(atoms: Atoms, symprec: float = 0.01) -> int:
    """The space-group number of ``atoms`` at ``symprec`` (0 when spglib finds none)."""
    dataset = _dataset(atoms, symprec)
    return 0 if dataset is None else int(dataset.number)


@dataclass(frozen=True)
class SymmetryOps:
    """A structure's space-group operations: fractional rotations ``(G, 3, 3)`` and
    ``maps`` ``(G, N)``, the atom each operation takes each atom to."""

    rotations: np.ndarray
    maps: np.ndarray
    spg: int


def symmetry_ops(atoms: Atoms, symprec: float = 0.01) -> SymmetryOps:
    """The operations of ``atoms``'s space group at ``symprec`` (identity only when
    spglib finds none)."""
    dataset = _dataset(atoms, symprec)
    if dataset is None:
        return SymmetryOps(np.eye(3, dtype=int)[None], np.arange(len(atoms))[None], 0)
    frac = atoms.get_scaled_positions()
    maps = []
    for rot, trans in zip(dataset.rotations, dataset.translations):
        d = frac[None, :, :] - (frac @ rot.T + trans)[:, None, :]     # (i, j, 3)
        d -= np.round(d)
        maps.append(np.argmin(np.linalg.norm(d @ np.asarray(atoms.cell), axis=2), axis=1))
    return SymmetryOps(np.asarray(dataset.rotations), np.asarray(maps), int(dataset.number))


class SymmetryBatch:
    """The operations of a batch's structures (in batch order) as index tensors."""

    def __init__(self, ops: Sequence[SymmetryOps], device: Any, dtype: Any):
        import torch

        natoms = [o.maps.shape[1] for o in ops]
        offsets = np.concatenate([[0], np.cumsum(natoms)[:-1]]).astype(int)
        n_ops = [len(o.rotations) for o in ops]
        op_offsets = np.concatenate([[0], np.cumsum(n_ops)[:-1]]).astype(int)
        src, dst, op = [], [], []
        for o, off, op_off in zip(ops, offsets, op_offsets):
            g, n = o.maps.shape
            src.append(np.tile(np.arange(n), g) + off)
            dst.append(o.maps.ravel() + off)
            op.append(np.repeat(np.arange(g), n) + op_off)

        def tensor(x: Any, kind: Any = torch.long) -> Any:
            return torch.as_tensor(np.concatenate(x) if isinstance(x, list) else x,
                                   dtype=kind, device=device)

        self.src, self.dst, self.op = tensor(src), tensor(dst), tensor(op)
        self.rot = tensor([o.rotations for o in ops], dtype)               # (sum G, 3, 3)
        self.op_system = tensor([np.full(g, k) for k, g in enumerate(n_ops)])
        self.n_ops = tensor(np.asarray(n_ops), dtype)
        self.atom_system = tensor([np.full(n, k) for k, n in enumerate(natoms)])

    def forces(self, forces: Any, row_cell: Any) -> Any:
        """``forces`` ``(N, 3)`` averaged over each structure's operations
        (``row_cell``: lattice vectors as rows, ``(B, 3, 3)``)."""
        import torch

        inv = torch.linalg.inv(row_cell)
        frac = torch.bmm(forces.unsqueeze(1), inv[self.atom_system]).squeeze(1)
        moved = torch.bmm(frac[self.src].unsqueeze(1), self.rot[self.op].mT).squeeze(1)
        out = torch.zeros_like(frac).index_add_(0, self.dst, moved)
        out = out / self.n_ops[self.atom_system].unsqueeze(-1)
        return torch.bmm(out.unsqueeze(1), row_cell[self.atom_system]).squeeze(1)

    def stress(self, stress: Any, row_cell: Any) -> Any:
        """``stress`` ``(B, 3, 3)`` averaged over each structure's operations."""
        import torch

        lat = row_cell[self.op_system]
        scaled = lat @ stress[self.op_system] @ lat.mT
        turned = self.rot.mT @ scaled @ self.rot
        total = torch.zeros_like(stress).index_add_(0, self.op_system, turned)
        total = total / self.n_ops.view(-1, 1, 1)
        inv = torch.linalg.inv(row_cell)
        return inv @ total @ inv.mT
