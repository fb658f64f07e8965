"""The ingest kernel: structure items read, symmetrised and checked as table rows
(``read_items``), and the training filter that marks which rows the models learn
from (``TrainingFilter``, METHOD.md section 2)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pandas as pd

from .. import schema as S
from ..crystal.convert import atoms_to_row
from ..crystal.frame import decode_frame
from .readers import Item, read_atoms

log = logging.getLogger("legodask")


def read_items(items: list[Item], symprec: float, source: str,
               min_distance: float = 0.6) -> pd.DataFrame:
    """Read and symmetrise a list of structure items (the ingest kernel).  An item
    that cannot be read, or whose row decoding calls invalid (``check_rows``),
    becomes a row with ``valid_xtal`` false and the reason."""
    rows = []
    for it in items:
        try:
            atoms, extra = read_atoms(it)
            if len(atoms) == 0:
                raise ValueError("no atoms")
            if not atoms.pbc.all() or atoms.cell.rank < 3:
                raise ValueError("no periodic cell (a molecule or a slab?): a crystal needs "
                                 "three cell vectors, periodic in every direction")
            row = atoms_to_row(atoms, symprec=symprec, **extra)
        except Exception as exc:  # malformed files: reported, never fatal
            why = str(exc) or f"{type(exc).__name__}, not a readable {it.kind} file"
            log.warning("%s: cannot read %s (%s)", source, it.path, why)
            row = {S.VALID_XTAL: False, S.ERROR: f"unreadable {it.path}: {why}"}
        row.update(id=it.id, source=source, parent_id=None)
        rows.append(row)
    return check_rows(S.conform(pd.DataFrame.from_records(rows)), min_distance)


def check_rows(df: pd.DataFrame, min_distance: float = 0.6) -> pd.DataFrame:
    """``df`` with the rows that it calls valid but decoding does not (atoms closer than
    ``min_distance`` Å, ...) invalid, with decoding's reason; no value is rewritten."""
    verdict = decode_frame(df, min_distance=min_distance)
    bad = df[S.VALID_XTAL].to_numpy(bool) & ~verdict[S.VALID_XTAL].to_numpy(bool)
    if not bad.any():
        return df
    out = df.copy()
    out.loc[bad, S.VALID_XTAL] = False
    out.loc[bad, S.ERROR] = verdict.loc[bad, S.ERROR]
    return out


@dataclass(frozen=True)
class TrainingFilter:
    """METHOD.md section 2: which structures the models learn from."""

    max_atoms: int = 500
    max_sites: int = S.MAX_SITES
    max_dof: int = 24
    elements: tuple[str, ...] = ("C",)   # the elements the models learn

    def apply(self, df: pd.DataFrame) -> pd.DataFrame:
        """Add ``train`` (bool) and ``filter_reason`` (why a row is left out)."""
        reasons = pd.Series([None] * len(df), index=df.index, dtype=object)
        checks = [
            (df[S.N_SITES] > self.max_sites, f"more than {self.max_sites} Wyckoff sites"),
            (df[S.NATOMS] > self.max_atoms, f"more than {self.max_atoms} atoms"),
            (df[S.DOF] > self.max_dof, f"more than {self.max_dof} free variables"),
            (~df[S.VALID_XTAL].astype(bool), "invalid: " + df[S.ERROR].astype(str)),
            *self._element_check(df),
        ]
        for mask, why in checks:
            new = mask & reasons.isna()
            reasons[new] = why[new] if isinstance(why, pd.Series) else why
        out = df.copy()
        out[S.TRAIN] = reasons.isna()
        out[S.FILTER_REASON] = reasons
        return out

    def _element_check(self, df: pd.DataFrame) -> list[tuple[pd.Series, pd.Series]]:
        """Rows with elements other than ``elements``, and the reason."""
        allowed = set(self.elements)
        others = [sorted(set(e for e in els if isinstance(e, str)) - allowed)
                  for els in df[S.EL].to_numpy(object)]
        mask = pd.Series([bool(o) for o in others], index=df.index)
        why = pd.Series([f"element(s) {', '.join(o)} not among the training elements "
                         f"{', '.join(self.elements)} (--train-elements)" for o in others],
                        index=df.index)
        return [(mask, why)]

