"""Write a run's structures as CIF files, one extended-XYZ file or an ASE database.

Rows are selected with SQL (``--where`` over the table's columns, ``--unique`` for
the first row of each distinct crystal) and streamed from DuckDB in chunks.  A
structure is written in its relaxed geometry when the table has one (the last
filled ``relaxed_<model>`` column, or ``--geometry MODEL``), else as its row.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ase import Atoms

from ..crystal import fingerprint as F
from .. import schema as S
from ..store import Run
from .query import columns, condition, connect, reason

log = logging.getLogger("legodask")

FORMATS = ("cif", "extxyz", "ase-db")
# Scalar columns worth carrying into extxyz info / ASE db key-value pairs.
_KEEP = re.compile("^(" + "|".join(
    [*map(re.escape, [S.ID, S.SOURCE, S.PARENT_ID, S.SPG, S.NATOMS, S.DOF, S.LOSS,
                      S.VALID_ENV, S.FINGERPRINT, S.FP_SPG, S.IS_NEW, S.FIRST_ID,
                      S.DIMENSION, S.TOPOLOGY_KEY, S.TOPOLOGY, S.KNOWN_ID]),
     *(re.escape(prefix) + ".*" for prefix in (S.ENERGY, S.E_ABOVE))]) + ")$")


def rows(run: Run, table: str, where: str | None = None, unique: bool = False,
         limit: int | None = None) -> Iterator[dict[str, Any]]:
    """The selected rows of ``table`` as dicts, streamed; ``where`` is one SQL
    condition (``query.condition``), checked before this returns.  A table without
    ``known_id`` (dedup's mark: null when new) or the net's columns gets the
    fingerprints', so that ``--where "known_id IS NULL AND dimension = 3"`` works."""
    import duckdb

    if table not in run.tables():
        raise ValueError(f"run {run.path} has no table {table!r} (it has: "
                         f"{', '.join(run.tables()) or 'none'})")
    con = connect(run)
    cond = [f"({condition(where)})"] if where else []
    if unique:
        cond.append(f"{S.ID} IN (SELECT {S.ID} FROM {S.FINGERPRINTS} "
                    f"WHERE {S.FP_DATA} IS NOT NULL)")
    source = f'"{table}"'
    if table != S.FINGERPRINTS and S.FINGERPRINTS in run.tables():
        have = set(columns(con, table))
        joined = [c for c in (S.KNOWN_ID, S.DIMENSION, S.TOPOLOGY_KEY, S.TOPOLOGY)
                  if c in columns(con, S.FINGERPRINTS) and c not in have]
        if joined:
            source = (f"(SELECT t.*, {', '.join(f'f.{c}' for c in joined)} FROM "
                      f'"{table}" t LEFT JOIN {S.FINGERPRINTS} f ON t.{S.ID} = f.{S.ID})')
    sql = f"SELECT * FROM {source}" + (" WHERE " + " AND ".join(cond) if cond else "")
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    try:
        return _records(con.execute(sql))
    except duckdb.Error as exc:
        hint = (f' (the columns of {table}: legodask query RUN "DESCRIBE {table}")'
                if where else "")
        raise ValueError(f"cannot select rows of {table}: {reason(exc)}{hint}") from exc


def _records(res: Any) -> Iterator[dict[str, Any]]:
    """The rows of a DuckDB result as dicts, a chunk at a time."""
    while True:
        chunk = res.fetch_df_chunk()
        if chunk.empty:
            return
        yield from chunk.to_dict("records")


def structure(rec: dict[str, Any], models: list[str], geometry: str | None = None) -> Atoms:
    """A row's crystal: ``relaxed_<geometry>``, else its last filled relaxed
    geometry, else the row itself."""
    order = [geometry] if geometry else models[::-1]
    model = next((m for m in order if F.filled(rec.get(f"{S.RELAXED}{m}"))), None)
    return F.row_atoms(rec, model)


def _info(rec: dict[str, Any]) -> dict[str, Any]:
    """A row's scalar columns as key-value pairs; names that ASE db reserves
    (``id``, ``natoms``) become ``sid``, ``row_natoms``."""
    from ase.db.core import reserved_keys

    out = {}
    for k, v in rec.items():
        if _KEEP.match(k) and F.filled(v):
            name = "sid" if k == S.ID else f"row_{k}" if k in reserved_keys else k
            out[name] = v.item() if hasattr(v, "item") else v
    return out


def export(run: Run, table: str, out: str | Path, fmt: str, where: str | None = None,
           unique: bool = False, geometry: str | None = None,
           limit: int | None = None) -> tuple[int, int]:
    """Write the selected structures to ``out`` (a folder); return (written, failed)."""
    from ase.io import write

    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, not {fmt!r}")
    selected = rows(run, table, where, unique, limit)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    models = [c[len(S.RELAXED):] for c in columns(connect(run), table)
              if c.startswith(S.RELAXED)]
    db = None
    if fmt == "ase-db":
        import ase.db

        db = ase.db.connect(out / "structures.db")
    xyz = out / "structures.extxyz"
    if fmt == "extxyz" and xyz.exists():
        xyz.unlink()
    written = failed = 0
    for k, rec in enumerate(selected):
        try:
            atoms = structure(rec, models, geometry)
        except Exception as exc:  # a bad row is reported, the rest is written
            log.warning("row %s: %s", rec.get(S.ID, k), exc)
            failed += 1
            continue
        info = _info(rec)
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", str(rec.get(S.ID) or f"row-{k}"))
        if fmt == "cif":
            write(out / f"{name}.cif", atoms, format="cif")
        elif fmt == "extxyz":
            atoms.info.update(info)
            write(xyz, atoms, format="extxyz", append=True)
        else:
            db.write(atoms, key_value_pairs=info)
        written += 1
    return written, failed
