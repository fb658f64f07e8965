"""Summaries of a table against its training data and the paper's numbers.

For ``samples``: rows, share of valid crystals, distinct symmetries (space group and
Wyckoff positions, ``crystal.convert.symmetry_key``) and how many are new, training
rows regenerated, and the marginal distributions of cell lengths and angles against
the training table (a PNG).
For ``augmented``: the same counts beside the paper's Table I.

Everything is a reduction over partitions.  Regenerated rows are found by a join
per sample partition against the training table's key columns: sample rows probe
the neighbouring buckets of ``a`` and ``x0`` so that the join is exact within the
tolerances without comparing all pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dask
import numpy as np
import pandas as pd

from .. import schema as S
from ..crystal.convert import pyxtal_verdicts, symmetry_key
from ..crystal.decode import only_overlapping
from ..crystal.frame import to_generators
from ..models.encoding import valid_rows
from ..store import Run

# Paper, Table I: rows and unique (spg, Wyckoff) symmetries of the training sets.
PAPER_TABLE_I = {"raw": (140, 127), "v1-60k": (63_114, 419), "v2-120k": (122_322, 449),
                 "v3-240k": (242_766, 485)}
TRAINING_OF = {S.SAMPLES: (S.AUGMENTED, S.INGESTED), S.AUGMENTED: (S.INGESTED,),
               S.INGESTED: ()}
HIST_RANGE = {"lengths": (0.0, 50.0), "angles": (30.0, 150.0)}
N_BINS = 100
_A_BUCKET = 0.5     # Å; at least twice the length tolerance
_X_BUCKETS = 10     # buckets of x0 over [0, 1); 0.1 at least twice the coordinate tolerance
_A, _X0 = S.LENGTHS[0], S.XYZ[0][0]   # the bucketed columns: a and x0


@dataclass(frozen=True)
class Tolerance:
    """How close a row must be to a training row to count as regenerating it."""

    length: float = 0.02   # Å
    angle: float = 0.2     # degrees
    coord: float = 0.005   # fractional, periodic

    def __post_init__(self) -> None:
        if self.length > _A_BUCKET or self.coord > 1 / _X_BUCKETS:
            raise ValueError(f"tolerances above {_A_BUCKET} Å or {1 / _X_BUCKETS} in "
                             "coordinates are not supported by the bucketed join")


def _symmetries(df: pd.DataFrame) -> set[str]:
    return set(symmetry_key(valid_rows(df)))


def _counts(df: pd.DataFrame) -> np.ndarray:
    """Rows, valid crystals, and rows invalid only because atoms overlap."""
    return np.array([len(df), int(df[S.VALID_XTAL].astype(bool).sum()),
                     int(only_overlapping(df).sum())])


def _pyxtal_counts(df: pd.DataFrame, k: int) -> np.ndarray:
    """Of the first ``k`` rows: rows, valid by pyxtal's decoder, and of those the
    ones it kept with fewer sites than the row has."""
    verdicts = pyxtal_verdicts(df.iloc[:k])
    return np.array([len(verdicts), *verdicts.sum(0)])


def _histograms(df: pd.DataFrame) -> np.ndarray:
    """Counts of each cell column of the valid rows in fixed bins, (6, N_BINS)."""
    v = valid_rows(df)
    out = []
    for c in S.CELL:
        lo, hi = HIST_RANGE["lengths" if c in S.LENGTHS else "angles"]
        out.append(np.histogram(v[c].to_numpy(float), bins=N_BINS, range=(lo, hi))[0])
    return np.array(out)


_ORDERED = [S.SPG, *S.WP]


def _join_keys(df: pd.DataFrame) -> pd.DataFrame:
    """The exact part of the match: space group, Wyckoff indices in order, elements."""
    keys = df[_ORDERED].astype(np.int64)
    for c in S.EL:
        keys[c] = df[c].fillna("").astype(str)
    return keys


def _x_bucket(x: pd.Series) -> np.ndarray:
    return (np.floor(x.to_numpy(float) * _X_BUCKETS).astype(np.int64)) % _X_BUCKETS


def training_keys(df: pd.DataFrame) -> pd.DataFrame:
    """The columns of a training partition that the match needs, with its buckets
    (sites in their generator's form, so that a row naming other atoms of the same
    special orbits matches)."""
    v = to_generators(valid_rows(df))
    out = _join_keys(v)
    out["abin"] = np.floor(v[_A].to_numpy(float) / _A_BUCKET).astype(np.int64)
    out["xbin"] = _x_bucket(v[_X0])
    out["train_id"] = v[S.ID].astype(str).to_numpy()
    parent = v[S.PARENT_ID] if S.PARENT_ID in v.columns else v[S.ID]
    out["train_parent"] = parent.where(parent.notna(), v[S.ID]).astype(str).to_numpy()
    for c in [*S.CELL, *S.XYZ_FLAT]:
        out[f"t_{c}"] = v[c].to_numpy(float)
    return out


def match_training(df: pd.DataFrame, train: pd.DataFrame, tol: Tolerance) -> pd.DataFrame:
    """Pairs (sample ``id``, ``train_id``, ``train_parent``) of the valid rows of a
    partition that equal a training row within ``tol``, both in the generator's form."""
    v = to_generators(valid_rows(df))
    probe = _join_keys(v)
    probe[S.ID] = v[S.ID].astype(str).to_numpy()
    for c in [*S.CELL, *S.XYZ_FLAT]:
        probe[c] = v[c].to_numpy(float)
    abin = np.floor(v[_A].to_numpy(float) / _A_BUCKET).astype(np.int64)
    xbin = _x_bucket(v[_X0])
    probes = [probe.assign(abin=abin + da, xbin=(xbin + dx) % _X_BUCKETS)
              for da in (-1, 0, 1) for dx in (-1, 0, 1)]
    keys = [*_ORDERED, *S.EL, "abin", "xbin"]
    m = pd.concat(probes, ignore_index=True).merge(train, on=keys, how="inner")
    ok = np.ones(len(m), bool)
    for c in S.LENGTHS:
        ok &= np.abs(m[c] - m[f"t_{c}"]).to_numpy() <= tol.length
    for c in S.ANGLES:
        ok &= np.abs(m[c] - m[f"t_{c}"]).to_numpy() <= tol.angle
    for c in S.XYZ_FLAT:
        d = (m[c] - m[f"t_{c}"]).to_numpy()
        d = np.abs(d - np.round(d))
        ok &= np.where(np.isnan(m[c].to_numpy()), np.isnan(m[f"t_{c}"].to_numpy()),
                       d <= tol.coord)
    return m.loc[ok, [S.ID, "train_id", "train_parent"]].drop_duplicates()


def table_stats(run: Run, table: str, training: str | None = None,
                tol: Tolerance = Tolerance(), pyxtal_rows: int = 2000) -> dict[str, Any]:
    """The counts of ``table`` (and against ``training`` when given), by reductions
    over partitions; histograms of the cell columns under ``"histograms"``; what
    pyxtal's decoder says of about ``pyxtal_rows`` rows (the first of each partition)."""
    parts = run.read(table).to_delayed()
    counts = dask.delayed(sum)([dask.delayed(_counts)(p) for p in parts])
    syms = dask.delayed(_union)([dask.delayed(_symmetries)(p) for p in parts])
    hist = dask.delayed(sum)([dask.delayed(_histograms)(p) for p in parts])
    k = -(-pyxtal_rows // max(len(parts), 1))
    pyx = dask.delayed(sum)([dask.delayed(_pyxtal_counts)(p, k) for p in parts])
    todo: list[Any] = [counts, syms, hist, pyx]
    if training:
        tparts = run.read(training).to_delayed()
        tsyms = dask.delayed(_union)([dask.delayed(_symmetries)(p) for p in tparts])
        thist = dask.delayed(sum)([dask.delayed(_histograms)(p) for p in tparts])
        tkeys = dask.delayed(pd.concat)([dask.delayed(training_keys)(p) for p in tparts])
        tcount = dask.delayed(sum)([dask.delayed(_counts)(p) for p in tparts])
        matches = dask.delayed(pd.concat)([dask.delayed(match_training)(p, tkeys, tol)
                                           for p in parts])
        todo += [tsyms, thist, tcount, matches]
    out = dask.compute(*todo)
    (n, n_valid, n_overlap), sym, h, (pn, p_valid, p_lost) = out[:4]
    result: dict[str, Any] = {
        "table": table, "rows": int(n), S.VALID_XTAL: int(n_valid),
        "valid_share": float(n_valid / n) if n else 0.0, "overlapping": int(n_overlap),
        "valid_share_no_distance_check": float((n_valid + n_overlap) / n) if n else 0.0,
        "symmetries": len(sym),
        "pyxtal_rows": int(pn), "pyxtal_valid_share": float(p_valid / pn) if pn else 0.0,
        "pyxtal_valid_lost_a_site": float(p_lost / p_valid) if p_valid else 0.0,
        "histograms": {"sample": np.asarray(h).tolist()}}
    if training:
        tsym, th, (tn, tn_valid, _), m = out[4:]
        result.update({
            "training": training, "training_rows": int(tn_valid), "training_symmetries": len(tsym),
            "new_symmetries": len(sym - tsym), "training_symmetries_seen": len(sym & tsym),
            "rows_regenerating_training": int(m[S.ID].nunique()),
            "training_rows_regenerated": int(m["train_id"].nunique()),
            "training_structures_regenerated": int(m["train_parent"].nunique()),
            "tolerance": tol.__dict__})
        result["histograms"]["training"] = np.asarray(th).tolist()
        result["new_symmetry_examples"] = sorted(sym - tsym)[:20]
    return result


def _union(sets: list[set[int]]) -> set[int]:
    return set().union(*sets)


def plot_marginals(stats: dict[str, Any], path: Any) -> None:
    """Cell lengths and angles of the table (valid rows) against the training data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(12, 6))
    hists = stats["histograms"]
    for i, (c, ax) in enumerate(zip(S.CELL, axes.ravel())):
        lo, hi = HIST_RANGE["lengths" if c in S.LENGTHS else "angles"]
        edges = np.linspace(lo, hi, N_BINS + 1)
        for label, h in hists.items():
            h = np.asarray(h[i], float)
            if h.sum():
                ax.stairs(h / h.sum(), edges, label=f"{label}")
        ax.set_xlabel(f"{c} ({'Å' if c in S.LENGTHS else '°'})")
    axes[0, 0].set_ylabel("share of valid rows")
    axes[0, 0].legend()
    fig.suptitle(f"{stats['table']}: cell marginals")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def format_stats(stats: dict[str, Any]) -> str:
    """A short plain-text report (with the paper's Table I for ``augmented``)."""
    lines = [f"table {stats['table']}: {stats['rows']:,} rows, {stats[S.VALID_XTAL]:,} valid "
             f"crystals ({100 * stats['valid_share']:.1f} %), {stats['symmetries']} symmetries"]
    if stats.get("overlapping"):
        lines.append(f"{stats['overlapping']:,} more rows put every site on its Wyckoff position "
                     f"but have overlapping atoms: valid without the distance check "
                     f"({100 * stats['valid_share_no_distance_check']:.1f} %); pyxtal's "
                     f"decoder, the paper's criterion, checks no distances and drops the "
                     f"sites off their Wyckoff positions, so it calls more valid still")
    if stats.get("pyxtal_rows"):
        lines.append(f"pyxtal's decoder on {stats['pyxtal_rows']:,} rows: "
                     f"{100 * stats['pyxtal_valid_share']:.1f} % 'valid', "
                     f"{100 * stats['pyxtal_valid_lost_a_site']:.1f} % of those with a site "
                     f"dropped")
    if "training" in stats:
        lines.append(f"against {stats['training']} ({stats['training_rows']:,} valid rows, "
                     f"{stats['training_symmetries']} symmetries): {stats['new_symmetries']} new "
                     f"symmetries, {stats['training_symmetries_seen']} of the training ones seen")
        lines.append(f"training rows regenerated: {stats['training_rows_regenerated']:,} "
                     f"({stats['training_structures_regenerated']:,} structures) by "
                     f"{stats['rows_regenerating_training']:,} rows")
    if stats["table"] == S.AUGMENTED:
        lines.append("\npaper Table I          rows   symmetries")
        for name, (rows, syms) in PAPER_TABLE_I.items():
            lines.append(f"  {name:<16} {rows:>8,} {syms:>8}")
        lines.append(f"  {'ours':<16} {stats[S.VALID_XTAL]:>8,} {stats['symmetries']:>8}")
        if "training" in stats:
            lines.append(f"  {'ours, raw':<16} {stats['training_rows']:>8,} "
                         f"{stats['training_symmetries']:>8}")
    return "\n".join(lines)
