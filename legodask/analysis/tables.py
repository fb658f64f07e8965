"""The Python API to a run's tables: each stage's table as a dask DataFrame.

>>> from legodask.analysis import tables
>>> samples = tables.load("runs/quick", "samples")          # lazy, one partition per file
>>> samples.valid_xtal.mean().compute()
>>> unique = tables.unique("runs/quick", "ranked")           # first row of each crystal
"""

from __future__ import annotations

import os

import dask.dataframe as dd

from .. import schema as S
from ..store import Run


def names(run: str | os.PathLike | Run) -> list[str]:
    """The tables a run has."""
    return _run(run).tables()


def load(run: str | os.PathLike | Run, table: str,
         columns: list[str] | None = None) -> dd.DataFrame:
    """A stage's table (``samples``, ``prerelaxed``, ``ranked``, ``fingerprints``, ...)."""
    return _run(run).read(table, columns)


def unique(run: str | os.PathLike | Run, table: str = S.RANKED) -> dd.DataFrame:
    """The rows of ``table`` that are the first of their crystal in the run, with
    their fingerprint columns (a lazy join on ``id``)."""
    r = _run(run)
    fp = r.read(S.FINGERPRINTS, [S.ID, S.FINGERPRINT, S.FP_SPG, S.FP_NATOMS, S.FP_DATA,
                                 S.IS_NEW, S.FIRST_ID])
    fp = fp[fp[S.FP_DATA].notnull()].drop(columns=[S.FP_DATA])
    return r.read(table).merge(fp, on=S.ID, how="inner")


def _run(run: str | os.PathLike | Run) -> Run:
    return run if isinstance(run, Run) else Run(run)
