"""The classes of crystals a sample may be restricted to: space groups, crystal
systems (by space-group number, as the International Tables number them) and a
largest atom count.  A model that samples within them directly (``TabularModel.
sample_in``) needs no rejection; for the others the sampler keeps the rows that
``Classes.allows``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .. import schema as S

# The space groups of each crystal system: first and last number.
CRYSTAL_SYSTEMS: dict[str, tuple[int, int]] = {
    "triclinic": (1, 2), "monoclinic": (3, 15), "orthorhombic": (16, 74),
    "tetragonal": (75, 142), "trigonal": (143, 167), "hexagonal": (168, 194),
    "cubic": (195, 230),
}


def crystal_system(spg: np.ndarray) -> np.ndarray:
    """The crystal system of each space-group number (``""`` outside 1-230)."""
    spg = np.asarray(spg)
    out = np.full(spg.shape, "", dtype=object)
    for name, (lo, hi) in CRYSTAL_SYSTEMS.items():
        out[(spg >= lo) & (spg <= hi)] = name
    return out


def conventional_atoms(spg: np.ndarray, wp: np.ndarray) -> np.ndarray:
    """Atoms in the conventional cell of rows of space groups ``spg`` (n,) and Wyckoff
    indices ``wp`` (n, sites; -1: unused): the sum of the used positions'
    multiplicities (0 for a row whose group or index does not exist)."""
    from ..crystal.wyckoff import group_info, wyckoff_ops

    spg, wp = np.asarray(spg, int), np.asarray(wp, int)
    out = np.zeros(len(spg), int)
    for g in np.unique(spg):
        rows = spg == g
        n_wp = group_info(int(g))[1] if 1 <= g <= 230 else 0
        mult = np.array([wyckoff_ops(int(g), i).multiplicity for i in range(n_wp)] + [0, 0])
        idx = np.where((wp[rows] >= 0) & (wp[rows] < n_wp), wp[rows], -1)
        bad = ((wp[rows] >= n_wp) | (wp[rows] < -1)).any(1)
        out[rows] = np.where(bad, 0, mult[idx].sum(1))
    return out


@dataclass(frozen=True)
class Classes:
    """Space groups ``spgs`` and crystal systems ``systems`` a row may have (``None``:
    any; both given: their intersection) and the most atoms its conventional cell
    may hold (``None``: any)."""

    spgs: tuple[int, ...] | None = None
    systems: tuple[str, ...] | None = None
    max_atoms: int | None = None

    def __post_init__(self) -> None:
        unknown = set(self.systems or ()) - set(CRYSTAL_SYSTEMS)
        if unknown:
            raise ValueError(f"crystal systems must be among {list(CRYSTAL_SYSTEMS)}, "
                             f"not {sorted(unknown)}")

    @classmethod
    def of(cls, spgs: Sequence[int] | None = None, systems: Sequence[str] | None = None,
           max_atoms: int | None = None) -> Classes | None:
        """The classes asked for, or ``None`` when nothing restricts the rows."""
        if spgs is None and systems is None and max_atoms is None:
            return None
        return cls(None if spgs is None else tuple(sorted(set(spgs))),
                   None if systems is None else tuple(sorted(set(systems))), max_atoms)

    def allows_spg(self, spg: np.ndarray) -> np.ndarray:
        """Whether each space-group number is within the classes."""
        spg = np.asarray(spg)
        ok = np.ones(spg.shape, bool)
        if self.spgs is not None:
            ok &= np.isin(spg, self.spgs)
        if self.systems is not None:
            ok &= np.isin(crystal_system(spg), self.systems)
        return ok

    def allows(self, spg: np.ndarray, wp: np.ndarray) -> np.ndarray:
        """Whether each row (space group, Wyckoff indices) is within the classes."""
        ok = self.allows_spg(spg)
        if self.max_atoms is not None:
            ok &= conventional_atoms(spg, wp) <= self.max_atoms
        return ok

    def allows_rows(self, df: pd.DataFrame) -> np.ndarray:
        """``allows`` over the rows of a structure table."""
        return self.allows(df[S.SPG].to_numpy(int), df[S.WP].to_numpy(int))

    def describe(self) -> str:
        parts = [f"space groups {list(self.spgs)}" if self.spgs is not None else "",
                 f"crystal systems {list(self.systems)}" if self.systems is not None else "",
                 f"at most {self.max_atoms} atoms" if self.max_atoms is not None else ""]
        return ", ".join(p for p in parts if p) or "any rows"
