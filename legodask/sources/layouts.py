"""Input files into structure-table rows: which layout a CSV/Parquet file is in.

Two layouts are read:

* ``table``: the structure table's own columns by name (angles in degrees, elements
  in ``elK``);
* ``reference``: the reference implementation's (LEGO-xtal, LEGO-Xtal-GPU) files,
  ``spg, a, b, c, alpha, beta, gamma, wp0, x0, y0, z0, ..., wp7, x7, y7, z7``
  (``schema.TABULAR``) with angles in **radians**, no element columns, ``-1``
  padding, optionally ``energy, label``; by those names, or by position where a
  file has no header (or when ``--layout reference`` is given for other names).

``choose`` picks the layout from a file's column names and refuses, naming the
missing columns, a file that is neither; ``to_table`` is the per-partition kernel
that turns rows of either layout into table rows, leaving any value that is not a
number as it is, so that ``schema.conform`` names the row's column and value.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import schema as S

AUTO, TABLE, REFERENCE = "auto", "table", "reference"
LAYOUTS = (AUTO, TABLE, REFERENCE)
# the columns a file in the table's layout must have (sites beyond the first may be absent)
TABLE_REQUIRED = [S.SPG, *S.CELL, S.WP[0], *S.XYZ[0]]


@dataclass(frozen=True)
class Layout:
    """How a file's columns are read: ``kind`` (``table`` or ``reference``) and, for
    the reference layout, whether by position (``positional``) rather than by name."""

    kind: str
    positional: bool = False
    element: str | None = None

    def describe(self) -> str:
        if self.kind == TABLE:
            return "the structure table's layout (columns by name, angles in degrees)"
        how = "by position" if self.positional else "by name"
        return (f"the reference layout (LEGO-xtal CSV, columns {how}, angles in radians, "
                f"element {self.element})")


def _numeric_header(columns: list[str]) -> bool:
    """Whether a header is numbers: a file without names (``0, 1, 2, ...`` as pandas
    writes a frame without them, or a headerless file read with its first row)."""
    try:
        [float(c) for c in columns]
    except ValueError:
        return False
    return True


def _headerless(columns: list[str]) -> bool:
    """Whether a CSV's first line is a row of numbers rather than names."""
    return _numeric_header(columns) and columns != [str(i) for i in range(len(columns))]


def choose(columns: list[str], layout: str = AUTO, element: str | None = None,
           where: str = "input") -> Layout:
    """The layout of a file with ``columns``; ``layout`` forces one.  Raises
    ``ValueError`` (one line: what is missing and what to do) for a file in neither."""
    if layout not in LAYOUTS:
        raise ValueError(f"--layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    cols = [str(c) for c in columns]
    reference_names = set(S.TABULAR) <= set(cols) and not set(S.EL) & set(cols)
    headerless = _numeric_header(cols)
    ref_element = element or "C"
    if layout == REFERENCE or (layout == AUTO and (reference_names or headerless)):
        positional = not reference_names
        if positional:
            n = len([c for c in cols if not _passed_through(c)])
            if n < 7 or (n - 7) % 4 not in (0, len(S.REFERENCE_EXTRA)):
                raise ValueError(f"{where}: the reference layout has 7 + 4k columns "
                                 f"(spg, cell, then wp, x, y, z per site; then energy, "
                                 f"label), not {n}")
        return Layout(REFERENCE, positional, ref_element)
    missing = [c for c in TABLE_REQUIRED if c not in cols]
    if missing:
        shown = ", ".join(cols[:8]) + (", ..." if len(cols) > 8 else "")
        raise ValueError(f"{where}: columns {', '.join(missing)} are missing (it has {shown}); "
                         f"name them as the structure table does, or pass --layout "
                         f"reference to read LEGO-xtal's columns by position")
    if not set(S.EL) & set(cols) and element is None:
        raise ValueError(f"{where}: no element columns ({S.EL[0]}..{S.EL[-1]}); pass "
                         f"--element to name the element of every site")
    return Layout(TABLE, element=element)


def structure_columns(columns: list[str], layout: Layout) -> list[str]:
    """The columns of a file that hold structure values (read as text, parsed per row)."""
    if layout.kind == REFERENCE:
        return [c for c in columns if not _passed_through(c)]
    return [c for c in columns if c in S.COLUMNS]


def _parsed(s: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """``(values as floats, mask of values that are given but not numbers)``."""
    v = pd.to_numeric(s.astype(object).where(s.notna(), None), errors="coerce").to_numpy(float)
    return v, s.notna().to_numpy() & np.isnan(v)


def to_table(df: pd.DataFrame, layout: Layout) -> pd.DataFrame:
    """A partition of a file in ``layout`` as table rows (the reading kernel).

    Reference rows: angles to degrees, sites with ``wpK < 0`` unused (coordinates
    dropped), ``layout.element`` on the others.  A value that is not a number stays
    as given, for ``schema.conform`` to report; other columns pass through.
    """
    if layout.kind == TABLE:
        return df
    values = [c for c in df.columns if not _passed_through(c)]
    if layout.positional and (len(values) - 7) % 4:      # unnamed energy, label at the end
        df = df.rename(columns=dict(zip(values[-2:], S.REFERENCE_EXTRA)))
        values = values[:-2]
    names = S.TABULAR if not layout.positional else S.TABULAR[:len(values)]
    src = dict(zip(names, values)) if layout.positional else {c: c for c in S.TABULAR}
    out = pd.DataFrame(index=df.index)
    out[S.SPG] = df[src[S.SPG]]
    for c in S.CELL:
        v, text = _parsed(df[src[c]])
        out[c] = pd.Series(np.where(text, df[src[c]].to_numpy(object),
                                    np.degrees(v) if c in S.ANGLES else v), index=df.index)
        if not text.any():
            out[c] = out[c].astype(float)
    for k in range(S.MAX_SITES):
        if S.WP[k] not in src:
            break
        given = df[src[S.WP[k]]]
        wp, text = _parsed(given)
        unused = wp < 0
        out[S.WP[k]] = np.where(unused, -1, given.to_numpy(object))
        out[S.EL[k]] = np.where(unused | (np.isnan(wp) & ~text), None, layout.element)
        for c in S.XYZ[k]:
            out[c] = df[src[c]].where(~unused)
    for c in df.columns:
        if _passed_through(c):
            out[str(c).lower()] = df[c]
    return out


def _passed_through(column: Any) -> bool:
    """Whether a reference-layout column is carried along (``energy``, ``label``, the
    id, in any case) rather than read as a structure value."""
    return str(column).lower() in (*S.REFERENCE_EXTRA, S.ID)


def with_ids(df: pd.DataFrame, name: str, offset: int) -> pd.DataFrame:
    """``df`` (rows ``offset``, ``offset + 1``, ... of input ``name``) with an id on
    every row: the input's own, else ``<name>-<row number>``, stable across reruns."""
    rows = [f"{name}-{i}" for i in range(offset, offset + len(df))]
    ids = df[S.ID] if S.ID in df.columns else pd.Series(None, index=df.index, dtype=object)
    out = df.copy()
    out[S.ID] = ids.astype(object).where(ids.notna(), pd.Series(rows, index=df.index))
    return out


def read_header(path: Path) -> list[str]:
    """A CSV file's or Parquet file's (or folder's) column names, without its rows."""
    if path.suffix == ".csv":
        with open(path, newline="") as f:
            return [c.strip() for c in next(csv.reader(f), [])]
    import dask.dataframe as dd

    return [str(c) for c in dd.read_parquet(str(path)).columns]


def csv_options(path: Path, columns: list[str], layout: Layout) -> dict[str, Any]:
    """``read_csv`` options for a file: structure columns as text (so one bad value
    fails its row, not the file), no header where the file has none."""
    if layout.positional and _headerless(columns):
        return {"header": None, "names": [str(i) for i in range(len(columns))],
                "dtype": object}
    return {"dtype": {c: object for c in [*structure_columns(columns, layout), S.ID]
                      if c in columns}}
