"""Structure table <-> model features: one-hot and Bayesian-GMM ("cont") or binned ("dis").

The encoder is fitted once on the training table (categories from the whole table by
dask reductions, mixtures on a sample of it) and then applied to each partition as
array arithmetic.  The layout follows CTGAN/TVAE: a discrete column is a one-hot block;
a continuous column is a scalar in [-1, 1] (its offset from a mixture mode in units of
4 standard deviations) followed by a one-hot of the mode.  The coordinates of unused
sites (NaN) get a mode of their own, so padding is learnt like any other value.  In
"dis" mode every column is discrete: cell and coordinates are binned with
``Grid``.

Sites are encoded as the table gives them (``sites="as-given"``: any atom of an orbit
may represent it, as the augmentation's swaps write them) or in their Wyckoff
generator's form (``sites="generator"``, ``to_generators``): then the coordinates
a special position fixes are constants of its Wyckoff index in the training data, and
decoding reads them from the group, so that a sampled site is always on the position
it names.

The encoded training matrix is written to the run's features (``store.FEATURES``,
a Zarr array chunked by rows, the encoder in its attributes) so that training
streams it.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import pandas as pd

from .. import schema as S
from ..crystal.frame import to_generators
from ..store import FEATURES, Run, atomic_path
from .grid import Grid

log = logging.getLogger("legodask")

MODES = ("cont", "dis")
SITES = ("as-given", "generator")
CONTINUOUS = [*S.CELL, *S.XYZ_FLAT]
# Unused-site coordinates, element and Wyckoff padding are encoded as this category.
_PAD = -1


@dataclass(frozen=True)
class Span:
    """A block of the feature vector: ``dim`` columns from ``offset``; ``kind`` is
    ``"scalar"`` (tanh output) or ``"onehot"`` (softmax output)."""

    column: str
    kind: str
    offset: int
    dim: int


@dataclass
class Categorical:
    """A discrete column as a one-hot over the categories seen in training."""

    column: str
    categories: list[Any]

    @property
    def dim(self) -> int:
        return len(self.categories)

    def codes(self, values: pd.Series) -> np.ndarray:
        """Category index of each value (-1 for a value never seen in training)."""
        vals = values.where(values.notna(), _PAD) if values.dtype == object else values
        return pd.Categorical(vals, categories=self.categories).codes.astype(np.int64)

    def values(self, codes: np.ndarray) -> np.ndarray:
        return np.asarray(self.categories, dtype=object)[codes]


@dataclass
class Mixture:
    """A continuous column as (scalar, one-hot mode) of a Gaussian mixture; NaN is
    the extra last mode when ``has_nan``."""

    column: str
    means: list[float]
    stds: list[float]
    weights: list[float]
    has_nan: bool

    @property
    def n_modes(self) -> int:
        return len(self.means)

    @property
    def dim(self) -> int:
        return 1 + self.n_modes + int(self.has_nan)

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(scalar, mode)`` of each value: the most probable mode among those
        within 4 standard deviations (the nearest one, clipped, if none is)."""
        mu, sd = np.asarray(self.means), np.asarray(self.stds)
        nan = np.isnan(x)
        z = (np.where(nan, mu[0], x)[:, None] - mu[None, :]) / (4 * sd[None, :])
        logp = np.log(self.weights)[None, :] - np.log(sd)[None, :] - 8 * z * z
        inside = np.abs(z) <= 1
        mode = np.where(inside.any(1), np.argmax(np.where(inside, logp, -np.inf), 1),
                        np.argmin(np.abs(z), 1))
        scalar = np.clip(z[np.arange(len(x)), mode], -1, 1)
        return np.where(nan, 0.0, scalar), np.where(nan, self.n_modes, mode)

    def decode(self, scalar: np.ndarray, mode: np.ndarray) -> np.ndarray:
        mu = np.append(self.means, np.nan)
        sd = np.append(self.stds, np.nan)
        return np.clip(scalar, -1, 1) * 4 * sd[mode] + mu[mode]


def fit_mixture(column: str, x: np.ndarray, has_nan: bool, max_modes: int = 10,
                seed: int = 0, extent: tuple[float, float] | None = None,
                stopped: list[str] | None = None) -> Mixture:
    """Fit a Bayesian GMM (Dirichlet-process prior, as CTGAN) to a column's values,
    with modes added where values of ``x`` or the column's ``extent`` (its minimum and
    maximum over the whole table) lie beyond 4 standard deviations of every mode.
    A fit that stops at its iteration limit appends the column to ``stopped``."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import BayesianGaussianMixture

    x = x[np.isfinite(x)]
    if len(x) == 0:
        return Mixture(column, [0.0], [1.0], [1.0], has_nan)
    n = int(min(max_modes, len(np.unique(x))))
    if n < 2:
        return Mixture(column, [float(x[0])], [1e-3], [1.0], has_nan)
    gm = BayesianGaussianMixture(n_components=n, weight_concentration_prior_type="dirichlet_process",
                                 weight_concentration_prior=1e-3, max_iter=200, n_init=1,
                                 random_state=seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        gm.fit(x.reshape(-1, 1))
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        # harmless for an encoder (CTGAN's fits stop the same way): counted, not a trace
        log.debug("%s: the Gaussian mixture stopped after %d iterations before converging",
                  column, gm.max_iter)
        if stopped is not None:
            stopped.append(column)
    keep = gm.weights_ > 5e-3
    mu, sd = gm.means_[keep, 0], np.sqrt(gm.covariances_[keep].reshape(-1))
    mu, sd, w = _cover(mu, sd, gm.weights_[keep] * len(x),
                       np.concatenate([x, np.asarray(extent or [], float)]))
    return Mixture(column, mu.tolist(), sd.tolist(), (w / w.sum()).tolist(), has_nan)


def _cover(mu: np.ndarray, sd: np.ndarray, counts: np.ndarray, x: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Modes (means, stds, counts) with one more per run of values of ``x`` that no mode
    holds within 4 standard deviations -- a tail, or a pruned small mode -- so that
    ``Mixture.encode`` never clips a value (CTGAN's encoder does)."""
    out = np.sort(x[~(np.abs(x[:, None] - mu[None]) <= 4 * sd[None]).any(1)])
    width = 8 * float(np.median(sd))
    while len(out):
        run = out[out <= out[0] + width]
        mu = np.append(mu, (run[0] + run[-1]) / 2)
        sd = np.append(sd, max((run[-1] - run[0]) / 8, 1e-3))
        counts = np.append(counts, len(run))
        out = out[len(run):]
    return mu, sd, counts


class Encoder:
    """Table rows <-> feature matrix, in ``"cont"`` or ``"dis"`` mode, sites as given
    or in their generator's form."""

    def __init__(self, mode: str, columns: Sequence[Categorical | Mixture],
                 element: str | None, grid: Grid | None = None, sites: str = "as-given"):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        if sites not in SITES:
            raise ValueError(f"sites must be one of {SITES}, not {sites!r}")
        self.mode = mode
        self.sites = sites
        self.columns = list(columns)
        self.element = element
        self.grid = grid or Grid()
        spans, offset = [], 0
        for col in self.columns:
            if isinstance(col, Mixture):
                spans += [Span(col.column, "scalar", offset, 1),
                          Span(col.column, "onehot", offset + 1, col.dim - 1)]
            else:
                spans.append(Span(col.column, "onehot", offset, col.dim))
            offset += col.dim
        self.spans = spans
        self.width = offset

    # -- layout --------------------------------------------------------------
    def span(self, column: str) -> Span:
        """The one-hot span of a discrete column (the GAN's condition)."""
        return next(s for s in self.spans if s.column == column and s.kind == "onehot")

    def categories(self, column: str) -> list[Any]:
        return next(c.categories for c in self.columns if c.column == column)

    # -- transform -----------------------------------------------------------
    def transform(self, df: pd.DataFrame, dtype: Any = np.float32) -> np.ndarray:
        """Feature matrix of a partition of the structure table."""
        df = S.conform(df)
        if self.sites == "generator":
            df = to_generators(df)
        if self.mode == "dis":
            df = self.grid.to_bins(df)
        out = np.zeros((len(df), self.width), dtype=dtype)
        rows = np.arange(len(df))
        offset = 0
        for col in self.columns:
            if isinstance(col, Mixture):
                scalar, mode = col.encode(df[col.column].to_numpy(float))
                out[:, offset] = scalar
                out[rows, offset + 1 + mode] = 1
            else:
                codes = col.codes(df[col.column])
                seen = codes >= 0
                out[rows[seen], offset + codes[seen]] = 1
            offset += col.dim
        return out

    def inverse_transform(self, x: np.ndarray) -> pd.DataFrame:
        """Table rows (structure columns, not yet decoded) of a feature matrix; one-hot
        blocks are read by their argmax.  A site's Wyckoff column decides whether it
        is used: the coordinates of a used site are read from their real modes (or
        bins) only, never from the padding mode, and those of an unused site are NaN.
        Sites encoded in their generator's form are snapped onto it."""
        offsets = dict(zip((c.column for c in self.columns),
                           np.cumsum([0, *(c.dim for c in self.columns)])))
        cols: dict[str, Any] = {}
        for col in self.columns:                     # discrete columns first: wpK
            if isinstance(col, Categorical) and col.column not in CONTINUOUS:
                o = offsets[col.column]
                cols[col.column] = col.values(np.argmax(x[:, o: o + col.dim], axis=1))
        used_by = {c: np.asarray(cols[S.WP[k]], int) >= 0
                   for k in range(S.MAX_SITES) for c in S.XYZ[k] if S.WP[k] in cols}
        for col in self.columns:
            o = offsets[col.column]
            if isinstance(col, Mixture):
                logits = x[:, o + 1: o + col.dim]
                mode = np.argmax(logits, axis=1)
                if col.has_nan and col.column in used_by:
                    real = np.argmax(logits[:, :col.n_modes], axis=1)
                    mode = np.where(used_by[col.column], real, col.n_modes)
                cols[col.column] = col.decode(x[:, o].astype(float), mode)
            elif col.column in CONTINUOUS:           # "dis": binned cell and coordinates
                logits = np.array(x[:, o: o + col.dim], dtype=float)
                if col.column in used_by and _PAD in col.categories:
                    pad = col.categories.index(_PAD)
                    logits[used_by[col.column], pad] = -np.inf
                cols[col.column] = col.values(np.argmax(logits, axis=1))
        df = pd.DataFrame(cols).astype({c: int for c in [S.SPG, *S.WP]})
        if self.mode == "dis":
            df = self.grid.from_bins(df.astype({c: float for c in CONTINUOUS}))
        for k in range(S.MAX_SITES):
            used = df[S.WP[k]] >= 0
            if self.element is not None:
                df[S.EL[k]] = np.where(used, self.element, None)
            else:
                df[S.EL[k]] = df[S.EL[k]].where(used & (df[S.EL[k]] != _PAD), None)
            for c in S.XYZ[k]:   # fractional coordinates are periodic: wrap far outliers
                x = df[c]
                df[c] = x.where((x > -1e-6) & (x < 1 + 1e-6), x % 1.0).where(used)
        return to_generators(df, snap=True) if self.sites == "generator" else S.conform(df)

    # -- persistence ---------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "sites": self.sites, "element": self.element,
                "grid": asdict(self.grid),
                "columns": [{"type": type(c).__name__, **asdict(c)} for c in self.columns]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Encoder:
        types = {"Categorical": Categorical, "Mixture": Mixture}
        columns = [types[c.pop("type")](**c) for c in (dict(c) for c in d["columns"])]
        return cls(d["mode"], columns, d["element"], Grid(**d["grid"]),
                   d.get("sites", "as-given"))

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: Path) -> Encoder:
        return cls.from_dict(json.loads(path.read_text()))


def _python(v: Any) -> Any:
    """A category as a JSON-able Python value."""
    return v.item() if isinstance(v, np.generic) else v


def fit(df_or_ddf: Any, mode: str, max_modes: int = 10, fit_rows: int = 20_000,
        grid: Grid | None = None, seed: int = 0, sites: str = "generator") -> Encoder:
    """Fit an encoder on a training table (pandas or dask): categories from every row,
    mixtures on a random sample of at most ``fit_rows`` rows."""
    import dask.dataframe as dd

    ddf = df_or_ddf if isinstance(df_or_ddf, dd.DataFrame) else dd.from_pandas(df_or_ddf, npartitions=1)
    grid = grid or Grid()

    def written(p: pd.DataFrame) -> pd.DataFrame:
        """A partition's sites as the encoder writes them (categories do not change)."""
        return to_generators(p) if sites == "generator" else S.conform(p)

    parts = dask.compute(*[dask.delayed(_rows_and_elements)(p) for p in ddf[S.EL].to_delayed()])
    n = sum(rows for rows, _ in parts)
    element_set = set().union(*(elements for _, elements in parts))
    single = len(element_set) <= 1
    discrete = [S.SPG, *S.WP, *([] if single else S.EL)]
    uniques = [ddf[c].fillna(_PAD).unique() if c in S.EL else ddf[c].unique() for c in discrete]
    if mode == "dis":
        binned = ddf.map_partitions(lambda p: grid.to_bins(written(p))[CONTINUOUS],
                                    meta=pd.DataFrame({c: pd.Series(dtype=float) for c in CONTINUOUS}))
        values = dask.compute(*uniques, *[binned[c].unique() for c in CONTINUOUS])
        columns: list[Categorical | Mixture] = [
            Categorical(c, sorted((_python(v) for v in vals), key=_sort_key))
            for c, vals in zip(discrete + CONTINUOUS, values)]
    else:
        frac = min(1.0, fit_rows / max(n, 1))
        rows = ddf.sample(frac=frac, random_state=seed) if frac < 1 else ddf
        sample = rows.map_partitions(written, meta=written(ddf._meta))[CONTINUOUS]
        nans = [ddf[c].isna().any() for c in CONTINUOUS]
        extents = [(ddf[c].min(), ddf[c].max()) for c in S.CELL]  # coordinates: 0 to 1
        values = dask.compute(*uniques, *nans, extents, sample)
        sample_df, extents = values[-1], dict(zip(S.CELL, values[-2]))
        columns = [Categorical(c, sorted((_python(v) for v in vals), key=_sort_key))
                   for c, vals in zip(discrete, values)]
        stopped: list[str] = []
        columns += [fit_mixture(c, sample_df[c].to_numpy(float), bool(has_nan), max_modes, seed,
                                extents.get(c, (0.0, 1.0)), stopped)
                    for c, has_nan in zip(CONTINUOUS, values[len(discrete):len(discrete) + len(CONTINUOUS)])]
        if stopped:
            log.info("%d of %d Gaussian mixtures stopped at their iteration limit before "
                     "converging (harmless for an encoder; columns in the run's log)",
                     len(stopped), len(CONTINUOUS))
    return Encoder(mode, columns, next(iter(element_set)) if single and element_set else None,
                   grid, sites)


def _rows_and_elements(p: pd.DataFrame) -> tuple[int, set[str]]:
    return len(p), {v for v in p.to_numpy().ravel() if isinstance(v, str)}


def _sort_key(v: Any) -> tuple[int, Any]:
    return (0, v) if isinstance(v, (int, float)) else (1, str(v))


# ---------------------------------------------------------------------------
# the run's features (store.FEATURES)
# ---------------------------------------------------------------------------

def valid_rows(p: pd.DataFrame) -> pd.DataFrame:
    """The valid crystals of a partition: what a model learns from and is judged by."""
    return p[p[S.VALID_XTAL].astype(bool)] if S.VALID_XTAL in p.columns else p


def write_features(run: Run, mode: str, input: str = S.AUGMENTED, chunk_rows: int = 16_384,
                 max_modes: int = 10, fit_rows: int = 20_000, seed: int = 0,
                 sites: str = "generator") -> Encoder:
    """Fit the encoder on table ``input`` and write its encoded valid rows as the
    run's features, ``store.FEATURES`` (rows chunked by ``chunk_rows``; the encoder,
    mode, source table and what they are made from in the array's attributes).
    Features already made from the same table with the same options are kept."""
    import zarr

    made = run.made_from(input, mode=mode, chunk_rows=chunk_rows, max_modes=max_modes,
                         fit_rows=fit_rows, seed=seed, sites=sites)
    out = run.file(FEATURES)
    if out.exists():
        arr = zarr.open_array(str(out), mode="r")
        if arr.attrs.get("made_from") == made:
            log.info("%s already holds the features of %s (%s mode, sites %s)", out, input,
                     mode, sites)
            return Encoder.from_dict(arr.attrs["encoder"])
    ddf = run.read(input).map_partitions(valid_rows)
    enc = fit(ddf, mode, max_modes=max_modes, fit_rows=fit_rows, seed=seed, sites=sites)
    parts = ddf.to_delayed()
    lengths = dask.compute(*[dask.delayed(len)(p) for p in parts])
    blocks = [da.from_delayed(dask.delayed(enc.transform)(p), (n, enc.width), np.float32)
              for p, n in zip(parts, lengths) if n]
    if not blocks:
        raise ValueError(f"table {input!r} has no valid rows to encode")
    x = da.concatenate(blocks).rechunk((chunk_rows, enc.width))
    with atomic_path(out) as tmp:
        da.to_zarr(x, str(tmp))
        arr = zarr.open_array(str(tmp), mode="r+")
        arr.attrs.update({"encoder": enc.to_dict(), "source": input, "made_from": made})
    log.info("encoded %d rows of %s into %s (%s mode, sites %s, %d features)", x.shape[0],
             input, out, mode, sites, enc.width)
    return enc


def open_features(run: Run) -> tuple[Any, Encoder]:
    """The features array of a run and its encoder."""
    import zarr

    arr = zarr.open_array(str(run.file(FEATURES)), mode="r")
    return arr, Encoder.from_dict(arr.attrs["encoder"])
