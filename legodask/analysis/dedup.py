"""Incremental deduplication: each batch is joined against every crystal seen so far.

The seen set is a Parquet table (the run's ``fingerprints``), one part per
partition of the input, holding for every input row its fingerprint and

* ``is_new``: the row is the first occurrence of its crystal among everything
  seen (the ``--against`` tables, then this run's earlier partitions and rows);
* ``first_id``: the id of that first occurrence (the row's own id when new);
* ``fp_data``: kept only on the first row of each crystal *in this run*, so the
  rows with ``fp_data`` are the run's unique crystals and the seen set of the next
  batch;
* ``dimension``, ``topology_key``, ``topology``: the net of the geometry
  fingerprinted (``crystal.topology``);
* ``known_id``: with a known table (``known``), the known crystal the row is
  (``analysis.novelty``), null when it is new.

A batch is processed by a DuckDB join over the Parquet files: the inner join on
the coarse key (and neighbouring volume bins) gives the few candidates that the
fine comparison confirms; rows with no candidate (the anti-join) are new without
any comparison.  Memory is bounded by a batch and its candidates, not by the
table; a rerun skips the parts already written (one made from other input or
options is refused, ``Run.writing``), and a later run dedups against this one with
``against``.  Fingerprinting, the costly part, runs in parallel on the cluster, a
window of partitions at a time; the joins run in order.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import dask
import pandas as pd

from ..crystal import fingerprint as F
from ..crystal.topology import topology_frame
from .. import schema as S
from .. import store
from ..store import Run, StageResult
from . import novelty
from .query import sql_list

log = logging.getLogger("legodask")

TOPOLOGY = [S.DIMENSION, S.TOPOLOGY_KEY, S.TOPOLOGY]      # the net's columns kept
DTYPES = {S.ID: "object", **S.FP_DTYPES, **{c: S.TOPOLOGY_DTYPES[c] for c in TOPOLOGY},
          S.IS_NEW: "bool", S.FIRST_ID: "object", S.KNOWN_ID: "object"}
DEFAULT_REQUIRE = (S.VALID_XTAL, S.VALID_ENV)
OWN = "own"          # a candidate's flag: from this run (not an ``against`` table)


def empty() -> pd.DataFrame:
    """The ``meta`` of a fingerprints table."""
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in DTYPES.items()})


def fingerprint_part(df: pd.DataFrame, tag: str, geometry: str | None = None,
                     symprec: float = F.SYMPREC,
                     require: Sequence[str] = DEFAULT_REQUIRE) -> pd.DataFrame:
    """Kernel: fingerprint a partition and find the net of each row fingerprinted,
    keep only ``id``, the fingerprint and the net (rows without an id are named
    ``<tag>-<row>``)."""
    fp = F.fingerprint_frame(df, geometry, symprec, require)
    fp = topology_frame(fp, geometry, rows=fp[S.FINGERPRINT].notna().to_numpy())
    ids = fp[S.ID] if S.ID in fp.columns else pd.Series([None] * len(fp), index=fp.index)
    fallback = pd.Series([f"{tag}-{k}" for k in range(len(fp))], index=fp.index)
    fp[S.ID] = ids.where(ids.notna(), fallback).astype(object)
    return fp[[S.ID, *S.FP_DTYPES, *TOPOLOGY]].reset_index(drop=True)


def assign(batch: pd.DataFrame, seen: pd.DataFrame, matcher: str = "env",
           env_tol: float = F.ENV_TOL, vol_tol: float = F.VOL_TOL) -> pd.DataFrame:
    """Mark each row of a fingerprinted ``batch`` new or a repeat.

    ``seen``: candidate crystals (``id, fingerprint, fp_vbin, fp_data, first_id``
    and ``own``: from this run), earliest first.  A row is compared with the
    candidates of its key within one volume bin, first match wins; rows are also
    compared with the new crystals of earlier rows of the batch.
    """
    buckets: dict[str, list[tuple[int, str, str, bool]]] = defaultdict(list)
    cols = [S.FINGERPRINT, S.FP_VBIN, S.FP_DATA, S.FIRST_ID, OWN]
    for key, vbin, data, first, own in seen[cols].itertuples(index=False, name=None):
        buckets[key].append((int(vbin), data, first, bool(own)))
    marks: list[tuple[bool, str | None, str | None]] = []    # is_new, first_id, fp_data
    for row in batch.itertuples(index=False):
        key = getattr(row, S.FINGERPRINT)
        if key is None or pd.isna(key):
            marks.append((False, None, None))
            continue
        vbin, mine = int(getattr(row, S.FP_VBIN)), getattr(row, S.FP_DATA)
        cands = [c for c in buckets[key] if abs(c[0] - vbin) <= 1]
        match = next((c for c in cands
                      if F.same_structure(c[1], mine, matcher, env_tol, vol_tol)), None)
        if match is None:
            marks.append((True, row.id, mine))
            buckets[key].append((vbin, mine, row.id, True))
        elif any(c[3] and c[2] == match[2] for c in cands):
            marks.append((False, match[2], None))        # already a crystal of this run
        else:
            marks.append((False, match[2], mine))        # seen elsewhere, first time here
            buckets[key].append((vbin, mine, match[2], True))
    is_new, first_id, data = zip(*marks) if marks else ((), (), ())
    out = batch.copy()
    if S.KNOWN_ID not in out.columns:
        out[S.KNOWN_ID] = None
    out[S.FP_DATA] = pd.Series(list(data), index=batch.index, dtype=object)
    out[S.IS_NEW] = pd.Series(list(is_new), index=batch.index, dtype=bool)
    out[S.FIRST_ID] = pd.Series(list(first_id), index=batch.index, dtype=object)
    return out[list(DTYPES)]


# ---------------------------------------------------------------------------
# the seen set: DuckDB over Parquet
# ---------------------------------------------------------------------------

def table_files(path: str | Path) -> list[Path]:
    """Part files of the fingerprints table of a run directory, or of a fingerprints
    table's own folder."""
    return store.table_files(path, S.FINGERPRINTS, "run `legodask dedup` there")


def seen_candidates(con: Any, sources: Sequence[tuple[Sequence[Path], bool]],
                    batch: pd.DataFrame) -> pd.DataFrame:
    """Crystals of ``sources`` (``(files, own)`` pairs, earliest first) whose key
    equals a key of ``batch`` within one volume bin: the inner join."""
    keys = batch.loc[batch[S.FINGERPRINT].notna(), [S.FINGERPRINT, S.FP_VBIN]].drop_duplicates()
    cols = [S.ID, S.FINGERPRINT, S.FP_VBIN, S.FP_DATA, S.FIRST_ID, OWN]
    if keys.empty:
        return pd.DataFrame(columns=cols)
    con.register("batch_keys", keys)
    frames = []
    for rank, (files, own) in enumerate(sources):
        if not files:
            continue
        frames.append(con.execute(f"""
            SELECT s.{S.ID}, s.{S.FINGERPRINT}, s.{S.FP_VBIN}, s.{S.FP_DATA}, s.{S.FIRST_ID},
                   {bool(own)} AS {OWN}
            FROM read_parquet({sql_list(files)}, filename=true, file_row_number=true) s
            WHERE s.{S.FP_DATA} IS NOT NULL AND EXISTS (
                SELECT 1 FROM batch_keys b WHERE b.{S.FINGERPRINT} = s.{S.FINGERPRINT}
                AND abs(b.{S.FP_VBIN} - s.{S.FP_VBIN}) <= 1)
            ORDER BY s.filename, s.file_row_number""").df())
    con.unregister("batch_keys")
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)


def overlap(a_files: Sequence[Path], b_files: Sequence[Path], matcher: str = "env",
            env_tol: float = F.ENV_TOL, vol_tol: float = F.VOL_TOL, scale: bool = True,
            chunk: int = 100_000) -> int:
    """How many crystals of table A are also in table B (Table III): the join of
    their unique rows on the key, confirmed pair by pair, streamed in chunks.

    ``scale`` (default): shapes are compared at equal volume, since two tables may
    hold geometries relaxed by different models (the training set's DFT cells
    against ReaxFF- or MACE-relaxed ones); the volume bins are then not joined on.
    """
    import duckdb

    if not a_files or not b_files:
        return 0
    vbin = "" if scale else f"AND abs(a.{S.FP_VBIN} - b.{S.FP_VBIN}) <= 1"
    res = duckdb.connect().execute(f"""
        SELECT a.{S.FIRST_ID}, a.{S.FP_DATA}, b.{S.FP_DATA}
        FROM read_parquet({sql_list(a_files)}) a
        JOIN read_parquet({sql_list(b_files)}) b
          ON a.{S.FINGERPRINT} = b.{S.FINGERPRINT} {vbin}
        WHERE a.{S.FP_DATA} IS NOT NULL AND b.{S.FP_DATA} IS NOT NULL""")
    found: set[str] = set()
    while rows := res.fetchmany(chunk):
        for first, da, db in rows:
            if first not in found and F.same_structure(da, db, matcher, env_tol, vol_tol,
                                                       scale):
                found.add(first)
    return len(found)


# ---------------------------------------------------------------------------
# a table, batch by batch
# ---------------------------------------------------------------------------

def dedup(run: Run, input: str = S.RANKED, output: str = S.FINGERPRINTS,
          against: Sequence[str | Path] = (), geometry: str | None = None,
          symprec: float = F.SYMPREC, matcher: str = "env", env_tol: float = F.ENV_TOL,
          vol_tol: float = F.VOL_TOL, require: Sequence[str] = DEFAULT_REQUIRE,
          window: int = 8, known: str | Path | None = None,
          overwrite: bool = False) -> StageResult:
    """Fingerprint table ``input`` and dedup it, batch by batch, into ``output``:
    ``window`` partitions are fingerprinted in parallel, then joined in order; with
    ``known`` (a folder with a known table) each row's ``known_id`` is marked.  The
    table records what it is made from (``Run.writing``): a rerun with other input or
    options is refused."""
    import duckdb

    from ..cluster import compute

    if matcher not in F.MATCHERS:
        raise ValueError(f"matcher must be one of {F.MATCHERS}, not {matcher!r}")
    parts = run.read(input).to_delayed()
    made_with = dict(against=[str(a) for a in against], geometry=geometry, matcher=matcher,
                     symprec=symprec)
    known_parts = novelty.known_files(known) if known is not None else []
    if known is not None:
        made_with[S.KNOWN] = str(Path(known).resolve())
    with run.writing(output, input, overwrite, env_tol=env_tol, vol_tol=vol_tol,
                     require=list(require), **made_with):
        done = run.done_parts(output)
        todo = [i for i in range(len(parts)) if i not in done]
        others = [(table_files(a), False) for a in against]
        con = duckdb.connect()
        rows = 0
        for chunk in _batched(todo, window):
            tasks = [dask.delayed(fingerprint_part)(parts[i], f"{input}-{i}", geometry,
                                                    symprec, list(require)) for i in chunk]
            for i, batch in zip(chunk, compute(tasks, desc=f"{output} fingerprints")):
                rows += join_batch(run, output, i, batch, others, con, matcher, env_tol,
                                   vol_tol, known_parts)
        run.mark_complete(output, len(parts), source=input, **made_with)
    result = StageResult(output, len(todo), len(done), rows)
    log.debug("%s", result)
    return result


def join_batch(run: Run, output: str, i: int, batch: pd.DataFrame,
               others: Sequence[tuple[Sequence[Path], bool]], con: Any,
               matcher: str = "env", env_tol: float = F.ENV_TOL,
               vol_tol: float = F.VOL_TOL, known: Sequence[Path] = ()) -> int:
    """Join fingerprinted batch ``i`` against the ``others`` tables and this run's
    parts before ``i``, and write part ``i`` of ``output``; return its rows."""
    own = [run.part_path(output, j) for j in sorted(run.done_parts(output)) if j < i]
    seen = seen_candidates(con, [*others, (own, True)], batch)
    if known:            # before ``assign``: every row still has its fp_data
        batch = batch.assign(**{S.KNOWN_ID: novelty.match_known(
            batch, novelty.known_candidates(con, known, batch))})
    out = assign(batch, seen, matcher, env_tol, vol_tol)
    n = run.write_part(output, i, out, empty())
    log.debug("%s part %d: %d rows, %d new", output, i, n, int(out[S.IS_NEW].sum()))
    return n


def _batched(items: Sequence[int], n: int) -> Iterator[Sequence[int]]:
    for k in range(0, len(items), max(1, n)):
        yield items[k:k + n]


def default_input(run: Run) -> str:
    """``ranked`` when the run has it, else ``prerelaxed``."""
    return S.RANKED if run.done_parts(S.RANKED) else S.PRERELAXED
