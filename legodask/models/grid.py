"""Discrete mode of the encoder: cell and coordinates binned on a grid."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .. import schema as S


@dataclass(frozen=True)
class Grid:
    """Discrete mode: coordinates on an ``n_xyz`` grid, cell lengths in ``n_len``
    bins over (0, max_len] Å, angles in ``n_ang`` bins over [min_ang, max_ang]°."""

    n_xyz: int = 100
    n_len: int = 100
    max_len: float = 50.0
    n_ang: int = 100
    min_ang: float = 30.0
    max_ang: float = 150.0

    def to_bins(self, df: pd.DataFrame) -> pd.DataFrame:
        """Continuous rows -> integer bins (unused sites stay -1)."""
        out = df.copy()
        for c in S.LENGTHS:
            out[c] = np.clip(np.round(df[c] / self.max_len * self.n_len), 0, self.n_len)
        span = self.max_ang - self.min_ang
        for c in S.ANGLES:
            out[c] = np.clip(np.round((df[c] - self.min_ang) / span * self.n_ang), 0, self.n_ang)
        for k in range(S.MAX_SITES):
            used = df[S.WP[k]] >= 0
            for c in S.XYZ[k]:
                out[c] = np.where(used, np.round(df[c] * self.n_xyz) % self.n_xyz, -1)
        return out

    def from_bins(self, df: pd.DataFrame) -> pd.DataFrame:
        """Integer bins -> continuous values (bin centres on the grid)."""
        out = df.copy()
        for c in S.LENGTHS:
            out[c] = df[c].astype(float) / self.n_len * self.max_len
        span = self.max_ang - self.min_ang
        for c in S.ANGLES:
            out[c] = self.min_ang + df[c].astype(float) / self.n_ang * span
        for k in range(S.MAX_SITES):
            used = df[S.WP[k]] >= 0
            for c in S.XYZ[k]:
                out[c] = np.where(used, df[c].astype(float) / self.n_xyz, np.nan)
        return out
