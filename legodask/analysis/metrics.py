"""The paper's counts for a run (Table IV) and the overlap between runs (Table III).

Every count is a DuckDB query over the run's Parquet tables, so it costs a scan,
not memory.  A table or column that a run does not have makes its counts null,
with a note saying why, never an error: a run stopped after ``prerelax`` still
gets the counts it can have.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .. import schema as S
from .. import store
from ..store import Run
from . import dedup as D
from .novelty import known_files
from .query import columns, connect, sql_list

log = logging.getLogger("legodask")

WINDOW = 0.5                 # eV/atom above the ground state: "low energy"
CUBIC = 195                  # space groups 195-230
COUNTS = ["n_total", "n_valid_xtal", "n_valid_env", "n_unique", "n_train",
          "n_lowE_all", "n_lowE_cubic"]
# Table IV's extension (``novelty_counts``): 3D frameworks, new crystals and nets, SUN.
NOVELTY_COUNTS = ["n_3d", "n_new", "n_new_net", "n_SUN", "n_SUN_3d", "n_SUN_cubic"]


def energy_models(con: Any, table: str) -> list[str]:
    """Energy models with an ``e_above_<model>`` column in ``table``, in column order."""
    return [c[len(S.E_ABOVE):] for c in columns(con, table) if c.startswith(S.E_ABOVE)]


def train_fingerprints(run: Run, matcher: str = "env") -> list[Path]:
    """Fingerprints of the run's training structures (``ingested``), made once."""
    if not run.is_complete(S.TRAIN_FINGERPRINTS):
        D.dedup(run, S.INGESTED, S.TRAIN_FINGERPRINTS, matcher=matcher,
                require=[S.VALID_XTAL])
    return run.part_files(S.TRAIN_FINGERPRINTS)


def compute_metrics(run: Run, window: float = WINDOW, matcher: str = "env",
                    energy_table: str = S.RANKED) -> dict[str, Any]:
    """The Table IV counts of ``run`` and notes on the ones it cannot have."""
    tables = set(run.tables())
    known = run.info(S.FINGERPRINTS).get(S.KNOWN) if S.FINGERPRINTS in tables else None
    con = connect(run, {S.KNOWN: known_files(known)} if known else None)
    out: dict[str, Any] = {c: None for c in COUNTS}
    notes: list[str] = []

    def scalar(sql: str) -> int:
        return int(con.execute(sql).fetchone()[0] or 0)

    if S.SAMPLES in tables:
        out["n_total"] = scalar(f"SELECT count(*) FROM {S.SAMPLES}")
        if S.VALID_XTAL in columns(con, S.SAMPLES):
            out["n_valid_xtal"] = scalar(f"SELECT count(*) FROM {S.SAMPLES} "
                                         f"WHERE {S.VALID_XTAL}")
        else:
            notes.append(f"{S.SAMPLES} has no {S.VALID_XTAL} column (not decoded)")
    else:
        notes.append(f"no {S.SAMPLES} table: n_total and n_valid_xtal unknown")
    if S.PRERELAXED in tables and S.VALID_ENV in columns(con, S.PRERELAXED):
        out["n_valid_env"] = scalar(f"SELECT count(*) FROM {S.PRERELAXED} WHERE {S.VALID_ENV}")
    else:
        notes.append(f"no {S.PRERELAXED} table with {S.VALID_ENV}: n_valid_env unknown")

    out["processed"] = processed(run, con, tables, energy_table)
    if S.FINGERPRINTS not in tables:
        notes.append(f"no {S.FINGERPRINTS} table (run `legodask dedup`): n_unique, n_train "
                     "and low-energy counts unknown")
        return {**out, "window": window, "notes": notes}
    out["n_unique"] = scalar(f"SELECT count(DISTINCT {S.FIRST_ID}) FROM {S.FINGERPRINTS} "
                             f"WHERE {S.FINGERPRINT} IS NOT NULL")
    fp_files = run.part_files(S.FINGERPRINTS)
    if S.INGESTED in tables:
        out["n_train"] = D.overlap(train_fingerprints(run, matcher), fp_files, matcher)
    else:
        notes.append(f"no {S.INGESTED} table: n_train unknown")

    source = energy_table
    models = energy_models(con, source) if source in tables else []
    if not models:
        notes.append(f"no {S.E_ABOVE}<model> columns in {source!r}: low-energy counts "
                     "unknown")
    else:
        out["n_lowE_all"], out["n_lowE_cubic"] = {}, {}
        for m in models:
            all_, cubic = con.execute(f"""
                SELECT count(DISTINCT f.{S.FIRST_ID}),
                       count(DISTINCT f.{S.FIRST_ID}) FILTER (WHERE f.{S.FP_SPG} >= {CUBIC})
                FROM {S.FINGERPRINTS} f JOIN "{source}" r ON f.{S.ID} = r.{S.ID}
                WHERE f.{S.FINGERPRINT} IS NOT NULL AND r.{S.E_ABOVE}{m} <= ?""",
                                      [window]).fetchone()
            out["n_lowE_all"][m], out["n_lowE_cubic"][m] = int(all_), int(cubic)
    out["novelty"] = novelty_counts(con, source if models else None, models, window, known,
                                    notes)
    return {**out, "window": window, "models": models, "notes": notes}


def processed(run: Run, con: Any, tables: set[str], energy_table: str = S.RANKED
              ) -> dict[str, dict[str, Any]]:
    """Per table, its rows and how many of them its stage actually worked on:
    pre-relaxed (with the stage's ``limit``), optimised again (the rows that reached
    the environment in each round), relaxed per energy model, fingerprinted."""
    def one(sql: str) -> int:
        return int(con.execute(sql).fetchone()[0] or 0)

    out: dict[str, dict[str, Any]] = {}
    for table, what in ((S.SAMPLES, None), (S.PRERELAXED, S.LOSS), (S.OPTIMIZED, S.LOSS),
                        (energy_table, None), (S.FINGERPRINTS, S.FINGERPRINT)):
        if table not in tables:
            continue
        cols = columns(con, table)
        entry: dict[str, Any] = {"rows": one(f'SELECT count(*) FROM "{table}"')}
        if what in cols:
            entry["processed"] = one(f'SELECT count({what}) FROM "{table}"')
        if table == S.PRERELAXED:
            entry["limit"] = run.info(table).get("limit")
        if table in (S.PRERELAXED, S.OPTIMIZED) and S.VALID_ENV in cols:
            entry["reached"] = one(f"SELECT count(*) FROM {table} WHERE {S.VALID_ENV}")
        if table == S.OPTIMIZED and S.ROUND in cols:
            entry["by_round"] = {int(r): int(n) for r, n in con.execute(
                f'SELECT "{S.ROUND}", count(*) FROM {table} WHERE {S.VALID_ENV} '
                f'AND "{S.ROUND}" > 0 GROUP BY 1 ORDER BY 1').fetchall()}
        if table == energy_table:
            entry["processed"] = {m: one(f'SELECT count("{S.ENERGY}{m}") FROM "{table}"')
                                  for m in energy_models(con, table)}
        out[table] = entry
    return out


def novelty_counts(con: Any, energy_table: str | None, models: Sequence[str], window: float,
                   known: str | None, notes: list[str]) -> dict[str, Any]:
    """What the unique crystals are: counts by dimension, the most frequent nets,
    the 3D ones, and with ``known`` (the folder of the known table dedup used, a view
    of ``con``) the new ones, those with a new net and the
    SUN counts (stable: within ``window`` of graphite; unique; new), overall, for
    3D frameworks and for cubic groups, per energy model."""
    fp_cols = columns(con, S.FINGERPRINTS)
    if S.TOPOLOGY_KEY not in fp_cols:
        notes.append(f"{S.FINGERPRINTS} has no net columns (made before they existed): "
                     "dimension, net and novelty counts unknown")
        return {}
    known = known if S.KNOWN_ID in fp_cols else None
    if known is None:
        notes.append(f"no {S.KNOWN} table was used by dedup (`legodask known add`): "
                     "new and SUN counts unknown")
    energy = "".join(f', min(r."{S.E_ABOVE}{m}") AS e{k}' for k, m in enumerate(models))
    join = f'LEFT JOIN "{energy_table}" r ON f.{S.ID} = r.{S.ID}' if models else ""
    con.execute(f"""CREATE OR REPLACE TEMP VIEW crystals AS
        SELECT f.{S.FIRST_ID}, max(f.{S.DIMENSION}) AS dim, max(f.{S.FP_SPG}) AS spg,
               any_value(f.{S.TOPOLOGY_KEY}) AS net,
               coalesce(nullif(any_value(f.{S.TOPOLOGY}), ''),
                        any_value(f.{S.TOPOLOGY_KEY})) AS label,
               {f"bool_or(f.{S.KNOWN_ID} IS NOT NULL)" if known else "NULL"} AS known {energy}
        FROM {S.FINGERPRINTS} f {join}
        WHERE f.{S.FINGERPRINT} IS NOT NULL GROUP BY f.{S.FIRST_ID}""")

    def count(where: str) -> int:
        return int(con.execute(f"SELECT count(*) FROM crystals WHERE {where}").fetchone()[0])

    out: dict[str, Any] = {
        "by_dimension": {str(d): int(n) for d, n in con.execute(
            "SELECT dim, count(*) FROM crystals GROUP BY dim ORDER BY dim DESC").fetchall()},
        "top_nets": [[lab, int(n)] for lab, n in con.execute(
            "SELECT label, count(*) AS n FROM crystals WHERE label IS NOT NULL "
            "GROUP BY label ORDER BY n DESC, label LIMIT 10").fetchall()],
        "n_3d": count("dim = 3")}
    if known is None:
        return out
    nets = f"(SELECT {S.TOPOLOGY_KEY} FROM {S.KNOWN})"
    new, cubic = "NOT known", f"spg >= {CUBIC}"
    out.update(n_new=count(new), n_new_3d=count(f"{new} AND dim = 3"),
               n_new_cubic=count(f"{new} AND {cubic}"),
               n_new_net=count(f"{new} AND net IS NOT NULL AND net NOT IN {nets}"))
    for key, extra in (("n_stable", None), ("n_SUN", new), ("n_SUN_3d", f"{new} AND dim = 3"),
                       ("n_SUN_cubic", f"{new} AND {cubic}")):
        out[key] = {m: count(" AND ".join(filter(None, [f"e{k} <= {float(window)}", extra])))
                    for k, m in enumerate(models)}
    return out


def overlap_matrix(runs: Sequence[str | Path], train: str | Path | None = None,
                   matcher: str = "env") -> pd.DataFrame:
    """Table III: shared unique crystals between runs (and the training set), from
    their fingerprints tables; the diagonal is each one's number of unique crystals."""
    names, files = [], []
    if train is not None:
        names.append("Train")
        files.append(train_fingerprints(Run(train), matcher))
    for r in runs:
        name = Path(r).name
        names.append(name if name not in names else str(r))
        files.append(D.table_files(r))
    n = len(names)
    mat = pd.DataFrame(0, index=names, columns=names, dtype="int64")
    for i in range(n):
        for j in range(i, n):
            mat.iloc[i, j] = mat.iloc[j, i] = (_n_unique(files[i]) if i == j
                                                else D.overlap(files[i], files[j], matcher))
    return mat


def _n_unique(files: Sequence[Path]) -> int:
    import duckdb

    return int(duckdb.connect().execute(
        f"SELECT count(DISTINCT {S.FIRST_ID}) FROM read_parquet({sql_list(list(files))}) "
        f"WHERE {S.FINGERPRINT} IS NOT NULL").fetchone()[0])


def table_iv(metrics: dict[str, Any], name: str) -> str:
    """The run's metrics as a row of the paper's Table IV (Markdown)."""
    def cell(v: Any) -> str:
        if v is None:
            return "–"
        if isinstance(v, dict):
            return " / ".join(f"{k}: {x}" for k, x in v.items()) or "–"
        return str(v)

    novelty = metrics.get("novelty") or {}
    extra = [c for c in NOVELTY_COUNTS if c in novelty]
    head = ["run", *[c.replace("n_", "N_") for c in [*COUNTS, *extra]]]
    row = [name, *[cell(metrics.get(c)) for c in COUNTS], *[cell(novelty[c]) for c in extra]]
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
                      "| " + " | ".join(row) + " |"])


def write_metrics(run: Run, metrics: dict[str, Any]) -> Path:
    """Write the run's metrics file (atomically); return its path."""
    return store.write_json(run.file(store.METRICS), metrics, default=_json_default)


def _json_default(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return None
    if hasattr(v, "item"):
        return v.item()
    raise TypeError(f"cannot write {type(v).__name__} to JSON")
