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

# Tables of a run, by the stage that writes them.
INGESTED = "ingested"
DECODED = "decoded"
AUGMENTED = "augmented"
SAMPLES = "samples"
PRERELAXED = "prerelaxed"
OPTIMIZED = "optimized"                 # the pre-relaxed rows, the missed ones optimised again
RANKED = "ranked"
RANK_UNIQUE = "rank_unique"             # the pre-relaxed rows, deduplicated before ranking
FINGERPRINTS = "fingerprints"
TRAIN_FINGERPRINTS = "train_fingerprints"
KNOWN = "known"                         # known crystals: fingerprints and nets (novelty)
TABLES = [INGESTED, DECODED, AUGMENTED, SAMPLES, PRERELAXED, OPTIMIZED, RANKED, RANK_UNIQUE,
          FINGERPRINTS, TRAIN_FINGERPRINTS, KNOWN]


def rank_unique(output: str) -> str:
    """The table ``rank --unique`` deduplicates its input into before writing table
    ``output`` (one per output, so that ranking two tables in a run keeps both)."""
    return RANK_UNIQUE if output == RANKED else f"{RANK_UNIQUE}_{output}"


ID = "id"
# Single columns that stages read by name.
SOURCE, PARENT_ID, SPG = "source", "parent_id", "spg"
NATOMS, N_SITES, DOF = "natoms", "n_sites", "dof"
VALID_XTAL, ERROR = "valid_xtal", "error"
VALID_ENV = "valid_env"                # prerelax: the reference environment is reached
ENV_ERROR = "env_error"                # prerelax: why it is not
LOSS = "loss"                          # prerelax: distance to the reference environment
ITERATIONS = "iterations"              # prerelax: optimiser steps taken
SECONDS = "seconds"                    # prerelax: time spent on the row
VASP_ENERGY = "vasp_energy"            # a source's DFT energy (SACADA), eV/atom
# The reference implementation's (LEGO-xtal) CSV files: the tabular columns, angles
# in radians, no elements, optionally followed by these.
REFERENCE_EXTRA = ["energy", "label"]

# Columns filled by decoding (crystal.frame.decode_frame).
DERIVED = [NATOMS, N_SITES, DOF, VALID_XTAL, ERROR]

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
PRERELAX = [LOSS, VALID_ENV, ENV_ERROR, ITERATIONS, SECONDS]
# The optimisation stage's: the round whose result a row holds (0: the pre-relaxation's
# own) and the latent steps taken on the row over all rounds.
ROUND = "round"
Z_STEPS = "z_steps"
OPTIMIZE_DTYPES = {ROUND: "int16", Z_STEPS: "int32"}
FINGERPRINT = "fingerprint"
# The fingerprint's other columns (fingerprint.py) and deduplication's marks.
FP_VBIN = "fp_vbin"                    # volume per atom on a logarithmic grid
FP_SPG = "fp_spg"                      # space group of the crystal
FP_NATOMS = "fp_natoms"                # atoms in the primitive cell
FP_DATA = "fp_data"                    # JSON cell and environments: first row of a crystal
FP_ERROR = "fp_error"                  # why a row has no fingerprint
FP_DTYPES = {FINGERPRINT: "object", FP_VBIN: "int32", FP_SPG: "int16", FP_NATOMS: "int32",
             FP_DATA: "object", FP_ERROR: "object"}
# What a crystal is (crystal.topology): dimensionality and net.
DIMENSION = "dimension"                # largest periodicity of a bonded component, 0..3
COMPONENTS = "components"              # bonded components in the cell
TOPOLOGY_KEY = "topology_key"          # hash of the net's coordination sequences
TOPOLOGY = "topology"                  # RCSR name of the net, or ""
TOPOLOGY_ERROR = "topology_error"      # why a row has no topology
TOPOLOGY_DTYPES = {DIMENSION: "int8", COMPONENTS: "int32", TOPOLOGY_KEY: "object",
                   TOPOLOGY: "object", TOPOLOGY_ERROR: "object"}
KNOWN_ID = "known_id"                  # dedup: the known crystal a row is (null: new)
IS_NEW = "is_new"                      # dedup: the first occurrence among all seen
FIRST_ID = "first_id"                  # dedup: the id of that first occurrence
# Prefixes of the rank stage's columns per energy model (``energy_columns``).
ENERGY = "energy_"
E_ABOVE = "e_above_"
RELAXED = "relaxed_"
# Columns of the ingested and augmented tables beyond the structure's.
TRAIN = "train"                      # ingest: whether the models learn from the row
FILTER_REASON = "filter_reason"      # ingest: why the training filter leaves it out
SUBGROUP_PATH = "subgroup_path"      # augment: the subgroups that wrote it, e.g. "227>166"
AUGMENT_ERRORS = "augment_errors"    # augment: the structure's subgroup tries that raised

# Every column name a stage writes (the energy columns are per model: energy_columns).
ALL_COLUMNS = [*COLUMNS, *PRERELAX, *OPTIMIZE_DTYPES, *FP_DTYPES, IS_NEW, FIRST_ID, TRAIN,
               FILTER_REASON, SUBGROUP_PATH, AUGMENT_ERRORS, *TOPOLOGY_DTYPES, KNOWN_ID]


def energy_columns(model: str) -> list[str]:
    """Columns the rank stage writes for one energy model."""
    return [f"{ENERGY}{model}", f"{E_ABOVE}{model}", f"relax_steps_{model}",
            f"{RELAXED}{model}", f"error_{model}", f"converged_{model}",
            f"relaxer_{model}", f"spg_relaxed_{model}"]


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
    stage outputs).  A value that does not fit its column (see ``bad_values``) is
    never cast silently: it becomes the column's null (or its bound, when out of
    range) and its row ``valid_xtal = False`` with the column and value in ``error``.
    """
    out = {}
    n = len(df)
    dtypes = pandas_dtypes()
    if extra:
        dtypes.update(extra)
    reasons = bad_values(df)
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
            s = _as_int(s, dtype, -1 if col in WP else 0)
        elif dtype == "float64" and s.dtype.kind not in "iufb":
            s = pd.to_numeric(s, errors="coerce").astype(dtype)
        else:
            s = s.astype(dtype)
        out[col] = s
    rest = [c for c in df.columns if c not in out]
    frame = pd.DataFrame(out, index=df.index)
    if rest:
        frame = pd.concat([frame, df[rest]], axis=1)
    bad = reasons.notna().to_numpy()
    if bad.any():
        old = frame["error"].where(frame["error"].notna() & ~frame["valid_xtal"], None)
        frame.loc[bad, "error"] = [r if o is None else f"{o}; {r}"
                                   for r, o in zip(reasons[bad], old[bad])]
        frame.loc[bad, "valid_xtal"] = False
    return frame


def _numbers(s: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """``(values as floats, mask of values given that are not numbers)``."""
    if s.dtype.kind in "iufb":
        return s.to_numpy(float), np.zeros(len(s), bool)
    v = pd.to_numeric(s.astype(object).where(s.notna(), None), errors="coerce")
    v = v.to_numpy(float)
    return v, s.notna().to_numpy() & np.isnan(v)


def _as_int(s: pd.Series, dtype: str, null: int) -> pd.Series:
    """``s`` as integer ``dtype``: missing and non-integer values become ``null``, values
    out of the dtype's range its bound (``bad_values`` gives the rows' reasons)."""
    if s.dtype.kind in "iu" and s.dtype.itemsize <= np.dtype(dtype).itemsize:
        return s.astype(dtype)
    info = np.iinfo(dtype)
    v, _ = _numbers(s)
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(v) & (v == np.round(v))
        v = np.where(ok, np.clip(v, info.min, info.max), null)
    return pd.Series(v.astype(dtype), index=s.index)


def _show(value: object) -> str:
    """A value as a reason quotes it: 65730 (not 65730.0), 'abc'."""
    if isinstance(value, (float, np.floating)) and np.isfinite(value) and value == round(value):
        return str(int(value))
    return repr(value.item() if isinstance(value, np.generic) else value)


def bad_values(df: pd.DataFrame) -> pd.Series:
    """Per row, why its structure columns cannot be stored as the schema's types (None
    where they can): a text that is not a number, a number that is not an integer or
    is outside its integer type's range, or an empty ``wpK`` of a site that has an
    element or coordinates.  ``conform`` marks these rows invalid with the reason."""
    reasons: list[list[str]] = [[] for _ in range(len(df))]
    dtypes = pandas_dtypes()
    for col in df.columns:
        dtype = dtypes.get(col)
        if dtype is None or dtype in ("object", "bool"):
            continue
        s = df[col]
        if dtype == "float64" and s.dtype.kind in "iuf":
            continue
        v, text = _numbers(s)
        for i in np.flatnonzero(text):
            reasons[i].append(f"{col} = {_show(s.iloc[i])} is not a number")
        if not dtype.startswith("int") or s.dtype == dtype:
            continue
        info = np.iinfo(dtype)
        with np.errstate(invalid="ignore"):
            whole = np.isfinite(v) & (v == np.round(v))
            frac = ~np.isnan(v) & ~whole
            wide = whole & ((v < info.min) | (v > info.max))
        for i in np.flatnonzero(frac):
            reasons[i].append(f"{col} = {_show(s.iloc[i])} is not an integer")
        for i in np.flatnonzero(wide):
            reasons[i].append(f"{col} = {_show(s.iloc[i])} is outside the column's "
                              f"range {info.min}..{info.max}")
    for k, wp in enumerate(WP):
        if wp not in df.columns:
            continue
        given = [c for c in (EL[k], *XYZ[k]) if c in df.columns]
        if not given:
            continue
        empty = df[wp].isna().to_numpy() & df[given].notna().any(axis=1).to_numpy()
        for i in np.flatnonzero(empty):
            reasons[i].append(f"{wp} is empty but site {k} has "
                              f"{', '.join(c for c in given if pd.notna(df[c].iloc[i]))}")
    return pd.Series(["; ".join(r) if r else None for r in reasons], index=df.index,
                     dtype=object)
