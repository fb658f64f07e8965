"""Novelty: which found crystals are known ones.

``legodask known add SOURCE`` reads known structures (an ASE db, a folder of
CIFs, an extended-XYZ file; the SACADA sp2 set by default) into a run's
``known`` table once: for each structure its id, fingerprint (``fp_*``) and net
(``dimension``, ``topology_key``, ``topology``).  Each ``add`` appends one
source; a folder made only for it (``--run known/``) serves many runs through
``dedup --known``.

A generated crystal is the known crystal ``k`` (its ``known_id``) when, after
relaxation, it has ``k``'s fingerprint key (space group, orbits, coordination)
and net (topology key), and its environments agree with ``k``'s within
``KNOWN_ENV_TOL`` once both are scaled to the same volume: the known geometry
comes from DFT, the generated one from the pre-relaxation or a force field, so
a crystal that moved a little and swelled or shrank by a few per cent is still
the known one.  Candidates come from a DuckDB join on the two keys, so the cost
is a scan of the known table per batch, not a comparison with every row.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .. import schema as S
from ..crystal import fingerprint as F
from ..crystal.topology import topology_frame
from .. import store
from ..store import Run, StageResult
from .query import sql_list

log = logging.getLogger("legodask")

# Å: environments of a relaxed crystal and its known geometry.  Loose on purpose:
# the net already tells crystals apart (no two SACADA sp2 crystals share both
# keys), and a DFT geometry pre-relaxed towards graphite moves by up to ~0.3 Å.
KNOWN_ENV_TOL = 0.3
KNOWN_COLUMNS = [S.ID, S.SOURCE, S.SPG, S.NATOMS, *S.FP_DTYPES, S.DIMENSION,
                 S.TOPOLOGY_KEY, S.TOPOLOGY]
KNOWN_DTYPES = {S.ID: "object", S.SOURCE: "object", S.SPG: "int16", S.NATOMS: "int32",
                **S.FP_DTYPES, **{c: S.TOPOLOGY_DTYPES[c]
                                  for c in (S.DIMENSION, S.TOPOLOGY_KEY, S.TOPOLOGY)}}


def empty_known() -> pd.DataFrame:
    """The ``meta`` of a known table."""
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in KNOWN_DTYPES.items()})


def known_frame(rows: pd.DataFrame, symprec: float = F.SYMPREC) -> pd.DataFrame:
    """Kernel: structure-table rows (ingested) -> known-table rows: fingerprint and
    net of each valid row (an invalid one keeps null keys)."""
    fp = F.fingerprint_frame(rows, None, symprec, [S.VALID_XTAL])
    fp = topology_frame(fp, rows=fp[S.FINGERPRINT].notna().to_numpy())
    return fp[KNOWN_COLUMNS].astype(KNOWN_DTYPES).reset_index(drop=True)


def known_part(items: Sequence[Any], symprec: float, source: str,
               min_distance: float = 0.6) -> pd.DataFrame:
    """Kernel: read a chunk of source items (``sources.readers.Item``) into known rows."""
    from ..sources.ingest import read_items

    return known_frame(read_items(list(items), symprec, source, min_distance))


def add_known(run: Run, source: str | Path, symprec: float = 1e-3,
              items_per_task: int = 16, min_distance: float = 0.6) -> StageResult:
    """Append ``source``'s structures to the run's known table, one task per
    ``items_per_task`` items; a source already added is left as it is."""
    import dask

    from ..cluster import compute
    from ..sources.readers import list_items

    path = str(Path(source).resolve())
    with run.writing(S.KNOWN):
        sources = run.info(S.KNOWN).get("sources", [])
        done = run.done_parts(S.KNOWN)
        if any(s["path"] == path for s in sources):
            log.info("%s is already in %s", path, run.table_path(S.KNOWN))
            return StageResult(S.KNOWN, 0, len(done), 0)
        items = list_items(source)
        if items[0].kind == "table":
            raise ValueError(f"{source}: a known source holds structures (ASE db, CIF "
                             "files, extended XYZ), not a table")
        chunks = [items[i:i + items_per_task] for i in range(0, len(items), items_per_task)]
        tasks = [dask.delayed(known_part)(c, symprec, Path(source).name, min_distance)
                 for c in chunks]
        start = max(done, default=-1) + 1
        rows = 0
        for k, frame in enumerate(compute(tasks, desc=f"{S.KNOWN} {Path(source).name}")):
            rows += run.write_part(S.KNOWN, start + k, frame, empty_known())
        entry = {"path": path, "parts": [start, start + len(chunks)], "rows": rows,
                 "symprec": symprec}
        run.mark_complete(S.KNOWN, start + len(chunks), sources=[*sources, entry])
    result = StageResult(S.KNOWN, len(chunks), len(done), rows)
    log.debug("%s", result)
    return result


def known_files(path: str | Path) -> list[Path]:
    """Part files of the known table of a folder (a run, or ``--known DIR``)."""
    return store.table_files(path, S.KNOWN,
                             f"make one with `legodask known add SOURCE --run {path}`")


def known_candidates(con: Any, files: Sequence[Path], batch: pd.DataFrame) -> pd.DataFrame:
    """Known crystals whose fingerprint key and topology key are those of a row of
    ``batch``: the inner join, in the known table's order."""
    cols = [S.ID, S.FINGERPRINT, S.TOPOLOGY_KEY, S.FP_DATA]
    keys = batch.loc[batch[S.FINGERPRINT].notna(), [S.FINGERPRINT, S.TOPOLOGY_KEY]]
    if keys.empty or not files:
        return pd.DataFrame(columns=cols)
    con.register("novel_keys", keys.drop_duplicates())
    res = con.execute(f"""
        SELECT k.{S.ID}, k.{S.FINGERPRINT}, k.{S.TOPOLOGY_KEY}, k.{S.FP_DATA}
        FROM read_parquet({sql_list(files)}, filename=true, file_row_number=true) k
        WHERE k.{S.FP_DATA} IS NOT NULL AND EXISTS (
            SELECT 1 FROM novel_keys b WHERE b.{S.FINGERPRINT} = k.{S.FINGERPRINT}
            AND b.{S.TOPOLOGY_KEY} IS NOT DISTINCT FROM k.{S.TOPOLOGY_KEY})
        ORDER BY k.filename, k.file_row_number""").df()
    con.unregister("novel_keys")
    return res


def match_known(batch: pd.DataFrame, known: pd.DataFrame,
                env_tol: float = KNOWN_ENV_TOL) -> pd.Series:
    """Per row of a fingerprinted ``batch`` (with ``topology_key``), the id of the
    first known crystal (of ``known_candidates``) that it is, else None."""
    buckets: dict[tuple[str, Any], list[tuple[str, str]]] = defaultdict(list)
    for kid, key, net, data in known[[S.ID, S.FINGERPRINT, S.TOPOLOGY_KEY,
                                      S.FP_DATA]].itertuples(index=False, name=None):
        buckets[key, net if F.filled(net) else None].append((kid, data))
    found: list[str | None] = []
    for key, net, data in batch[[S.FINGERPRINT, S.TOPOLOGY_KEY,
                                 S.FP_DATA]].itertuples(index=False, name=None):
        cands = buckets.get((key, net if F.filled(net) else None), []) if F.filled(data) else []
        found.append(next((kid for kid, kdata in cands
                           if F.same_structure(kdata, data, "env", env_tol, scale=True)),
                          None))
    return pd.Series(found, index=batch.index, dtype=object)
