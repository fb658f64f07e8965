"""The Python API to a run's tables: each stage's table as a dask DataFrame.

>>> from legodask import tables
>>> samples = tables.load("runs/quick", "samples")          # lazy, one partition per file
>>> samples.valid_xtal.mean().compute()
>>> unique = tables.unique("runs/quick", "ranked")           # first row of each crystal
"""

from __future__ import annotations

import os

import dask.dataframe as dd

from . import dedup as D
from . import fingerprint as F
from . import schema as S
from .store import Run


def names(run: str | os.PathLike | Run) -> list[str]:
    """The tables a run has."""
    return _run(run).tables()


def load(run: str | os.PathLike | Run, table: str,
         columns: list[str] | None = None) -> dd.DataFrame:
    """A stage's table (``samples``, ``prerelaxed``, ``ranked``, ``fingerprints``, ...)."""
    return _run(run).read(table, columns)


def unique(run: str | os.PathLike | Run, table: str = "ranked") -> dd.DataFrame:
    """The rows of ``table`` that are the first of their crystal in the run, with
    their fingerprint columns (a lazy join on ``id``)."""
    r = _run(run)
    fp = r.read(D.TABLE, ["id", S.FINGERPRINT, F.FP_SPG, F.FP_NATOMS, F.FP_DATA, D.IS_NEW,
                          D.FIRST_ID])
    fp = fp[fp[F.FP_DATA].notnull()].drop(columns=[F.FP_DATA])
    return r.read(table).merge(fp, on="id", how="inner")


def _run(run: str | os.PathLike | Run) -> Run:
    return run if isinstance(run, Run) else Run(run)
