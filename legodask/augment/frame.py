"""The augmentation kernel: every training structure of a partition as its
augmented rows (``augment_frame``), one recorded failure row for a structure that
cannot be augmented."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from .. import schema as S
from ..crystal.convert import pyxtal_to_row
from ..crystal.decode import Decoded, decode_row
from ..crystal.wyckoff import orbit_many
from .params import DISTORT, SEARCH, SWAPS, Params, task_rng
from .subgroups import Rep, make_checker, orbit_choices, representations
from .timeout import call_with_timeout

log = logging.getLogger("legodask")

EXTRA = {S.SUBGROUP_PATH: "object", S.AUGMENT_ERRORS: "object"}


def augment_structure(row: Mapping[str, Any], p: Params,
                      check: Callable[[Decoded], str | None]) -> pd.DataFrame:
    """All augmented rows of one training structure (raises on failure).  Rows are
    gathered as one frame per representation, which keeps a task's memory small."""
    pid = str(row[S.ID])
    swaps = task_rng(p.seed, pid, SWAPS)
    chunks: list[pd.DataFrame] = []
    n_out = 0

    def emit(rep: Rep, n_max: int) -> int:
        nonlocal n_out
        choices = np.array(list(orbit_choices(rep.dec, n_max, swaps)), dtype=int)
        n = len(choices)
        base = pyxtal_to_row(rep.pyxtal(), parent_id=pid, source=row.get(S.SOURCE),
                                   **{S.SUBGROUP_PATH: rep.path})
        cols: dict[str, Any] = {k: [v] * n for k, v in base.items()}
        cols[S.ID] = [f"{pid}-{n_out + i:05d}" for i in range(n)]
        for k, site in enumerate(rep.dec.sites):   # the decoded order, for every column
            cols[f"wp{k}"], cols[f"el{k}"] = [site.wp.index] * n, [site.element] * n
            # the orbit as augmented rows were first written: near 1 is within 1e-12
            xyz = orbit_many(site.wp, site.free[None], 1e-12, None)[0][choices[:, k]]
            for j, col in enumerate(S.XYZ[k]):
                cols[col] = xyz[:, j]
        chunks.append(S.conform(pd.DataFrame(cols), EXTRA))
        n_out += n
        return n

    errors = representations(decode_row(row), p, task_rng(p.seed, pid, SEARCH),
                             task_rng(p.seed, pid, DISTORT), check, emit)
    out = pd.concat(chunks, ignore_index=True)
    if errors:
        out[S.AUGMENT_ERRORS] = f"{len(errors)} subgroup tries raised; first: {errors[0]}"
    return out


def failure_row(row: Mapping[str, Any], reason: str) -> dict[str, Any]:
    """The one row of a structure that could not be augmented: the parent as it
    came, with ``valid_xtal`` false and the reason."""
    rec = {c: row.get(c) for c in S.COLUMNS if c in row}
    pid = str(row[S.ID])
    rec.update(id=f"{pid}-failed", parent_id=pid, valid_xtal=False,
               error=f"augment: {reason}", **{S.SUBGROUP_PATH: None, S.AUGMENT_ERRORS: None})
    return rec


def meta() -> pd.DataFrame:
    """The augmented table's columns: the structure table, ``subgroup_path`` (e.g.
    ``"227>166"``) and ``augment_errors``."""
    return S.empty_frame(EXTRA)


def training_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows to augment: valid crystals of the training set (when marked)."""
    keep = np.ones(len(df), bool)
    for col in (S.VALID_XTAL, S.TRAIN):
        if col in df.columns:
            keep &= df[col].fillna(False).astype(bool).to_numpy()
    return df[keep]


def augment_frame(df: pd.DataFrame, p: Params) -> pd.DataFrame:
    """The kernel: augmented rows of every training structure of a partition, in
    the partition's order.  Failures and time-outs give one recorded row each."""
    check = make_checker(p)
    frames = [meta()]
    for row in training_rows(df).to_dict("records"):
        start = time.perf_counter()
        try:
            rows = call_with_timeout(lambda: augment_structure(row, p, check), p.timeout)
        except Exception as exc:  # any failure is recorded, never raised
            rows = S.conform(pd.DataFrame([failure_row(row, f"{type(exc).__name__}: {exc}")]),
                             EXTRA)
        log.debug("augmented %s: %d rows in %.2f s", row.get(S.ID), len(rows),
                  time.perf_counter() - start)
        frames.append(rows[list(frames[0].columns)])
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def _slice_frame(df: pd.DataFrame, start: int, stop: int, p: Params) -> pd.DataFrame:
    return augment_frame(df.iloc[start:stop], p)


def slice_frame(df: pd.DataFrame, start: int, stop: int, p: Params) -> pd.DataFrame:
    """The kernel on rows ``start:stop`` of a partition (one task's structures)."""
    return augment_frame(df.iloc[start:stop], p)
