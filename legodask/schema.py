"""The structure table: the one place that names its columns and their Arrow types.

A row is one crystal in its symmetry-reduced (tabular) form: space group, cell
(lengths in Å, angles in degrees) and up to ``MAX_SITES`` Wyckoff sites, each with
its pyxtal Wyckoff index, element and the fractional coordinates of one atom of the
orbit.  Unused sites have ``wpK = -1``, ``elK = None`` and ``NaN`` coordinates.
Later stages add their own columns; their names are declared here too.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

MAX_SITES = 8
CELL = ["a", "b", "c", "alpha", "beta", "gamma"]
LENGTHS = CELL[:3]
ANGLES = CELL[3:]


def site_columns(k: int) -> tuple[str, str, str, str, str]:
    """Column names ``(wpK, elK, xK, yK, zK)`` of site ``k``."""
    return f"wp{k}", f"el{k}", f"x{k}", f"y{k}", f"z{k}"


WP = [f"wp{k}" for k in range(MAX_SITES)]
EL = [f"el{k}" for k in range(MAX_SITES)]
XYZ = [[f"x{k}", f"y{k}", f"z{k}"] for k in range(MAX_SITES)]
XYZ_FLAT = [c for trio in XYZ for c in trio]

# Columns filled by decoding (codec.decode_frame).
DERIVED = ["natoms", "n_sites", "dof", "valid_xtal", "error"]

_FIELDS: list[tuple[str, pa.DataType]] = [
    ("id", pa.string()),
    ("source", pa.string()),
    ("parent_id", pa.string()),
    ("spg", pa.int16()),
    *[(c, pa.float64()) for c in CELL],
]
for _k in range(MAX_SITES):
    _wp, _el, _x, _y, _z = site_columns(_k)
    _FIELDS += [(_wp, pa.int16()), (_el, pa.string()),
                (_x, pa.float64()), (_y, pa.float64()), (_z, pa.float64())]
_FIELDS += [
    ("natoms", pa.int32()),
    ("n_sites", pa.int8()),
    ("dof", pa.int16()),
    ("valid_xtal", pa.bool_()),
    ("error", pa.string()),
]

STRUCTURE_SCHEMA = pa.schema(_FIELDS)
COLUMNS = STRUCTURE_SCHEMA.names
# The tabular representation proper: what a generative model learns.
TABULAR = ["spg", *CELL, *[c for k in range(MAX_SITES) for c in (WP[k], *XYZ[k])]]

# Columns that later stages add (declared here so that only this module names them).
PRERELAX = ["loss", "valid_env", "env_error", "iterations", "seconds"]
FINGERPRINT = "fingerprint"


def energy_columns(model: str) -> list[str]:
    """Columns the rank stage writes for one energy model."""
    return [f"energy_{model}", f"e_above_{model}", f"relax_steps_{model}",
            f"relaxed_{model}", f"error_{model}", f"converged_{model}"]


_PANDAS_DTYPES = {
    pa.string(): "object",
    pa.int8(): "int8",
    pa.int16(): "int16",
    pa.int32(): "int32",
    pa.float64(): "float64",
    pa.bool_(): "bool",
}


def pandas_dtypes(schema: pa.Schema = STRUCTURE_SCHEMA) -> dict[str, str]:
    """Pandas dtypes of a schema's columns (strings as ``object``)."""
    return {f.name: _PANDAS_DTYPES[f.type] for f in schema}


def empty_frame(extra: dict[str, str] | None = None) -> pd.DataFrame:
    """An empty structure table with the right dtypes: the ``meta`` of a stage."""
    dtypes = pandas_dtypes()
    if extra:
        dtypes.update(extra)
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in dtypes.items()})


def conform(df: pd.DataFrame, extra: dict[str, str] | None = None) -> pd.DataFrame:
    """Return ``df`` with every structure column present, in order, with schema dtypes.

    Missing columns are filled with their null (``-1`` for ``wpK``); columns that
    are not in the schema are kept after the schema's own (source key-value data,
    stage outputs).
    """
    out = {}
    n = len(df)
    dtypes = pandas_dtypes()
    if extra:
        dtypes.update(extra)
    for col, dtype in dtypes.items():
        if col in df.columns:
            s = df[col]
        elif col in WP:
            s = pd.Series(np.full(n, -1), index=df.index)
        elif dtype == "bool":
            s = pd.Series(np.zeros(n, bool), index=df.index)
        elif dtype.startswith("int"):
            s = pd.Series(np.zeros(n, int), index=df.index)
        elif dtype == "float64":
            s = pd.Series(np.full(n, np.nan), index=df.index)
        else:
            s = pd.Series([None] * n, index=df.index, dtype=object)
        if dtype == "object":
            s = s.astype(object).where(s.notna(), None)
        elif dtype.startswith("int"):
            s = pd.to_numeric(s, errors="coerce").fillna(-1 if col in WP else 0).astype(dtype)
        else:
            s = s.astype(dtype)
        out[col] = s
    rest = [c for c in df.columns if c not in out]
    frame = pd.DataFrame(out, index=df.index)
    if rest:
        frame = pd.concat([frame, df[rest]], axis=1)
    return frame
