"""Novelty: the training structures, perturbed and pre-relaxed, are found known with
their own ids; ``legodask known add`` and the prerelax stage's net columns."""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pytest
from ase.geometry import cellpar_to_cell

from legodask import schema as S
from legodask.analysis import novelty as N
from legodask.analysis.dedup import fingerprint_part
from legodask.cli import main
from legodask.prerelax import prerelax_frame
from legodask.prerelax.problem import build_problem, relaxed_row
from legodask.sources.ingest import read_items
from legodask.sources.readers import list_items
from legodask.stages import known as known_stage
from legodask.stages.prerelax import prerelax_part
from legodask.store import Run

SHIFT = 0.3          # Å: each site's generator moves by up to this much


def perturbed(rows: pd.DataFrame, seed: int = 7, shift: float = SHIFT) -> pd.DataFrame:
    """Each row with every free site moved by up to ``shift`` Å in a random
    direction of its free coordinates (its symmetry kept)."""
    rng = np.random.default_rng(seed)
    out = []
    for row in rows.to_dict("records"):
        p = build_problem(row)
        cell, x = cellpar_to_cell(p.dec.cell), p.x0.copy()
        for s, site in enumerate(p.dec.sites):
            free = p.site_var[s] >= 0
            step = np.where(free, rng.normal(size=3), 0.0)
            length = np.linalg.norm((site.wp.A[0] @ step) @ cell)
            if free.any() and length > 0:
                x[p.site_var[s][free]] += step[free] * rng.uniform(0, shift) / length
        out.append({**row, **relaxed_row(p, x)})
    return pd.DataFrame(out)


@pytest.fixture(scope="module")
def known(sacada_db, tmp_path_factory) -> Run:
    run = Run(tmp_path_factory.mktemp("known"))
    assert main(["known", "add", str(sacada_db), "--run", str(run.path)]) == 0
    return run


def test_known_add_once_per_source(known, sacada_db):
    table = pd.concat(pd.read_parquet(p) for p in N.known_files(known.path))
    assert len(table) == 150 and table[S.ID].is_unique
    assert table[S.FINGERPRINT].notna().sum() == 144        # 6 have over 8 Wyckoff sites
    assert (table.loc[table[S.FINGERPRINT].notna(), S.DIMENSION] == 3).all()
    assert known_stage.is_done(known, {"source": str(sacada_db)})
    parts = known.done_parts(S.KNOWN)
    assert main(["known", "add", str(sacada_db), "--run", str(known.path)]) == 0
    assert known.done_parts(S.KNOWN) == parts                # added once


@pytest.mark.slow
def test_training_structures_perturbed_and_prerelaxed_are_known(known, sacada_db):
    """The 144 SACADA structures that fit a table row (of 150), each moved by up
    to 0.3 Å and pre-relaxed (batched), are found known with their own ids."""
    rows = read_items(list_items(sacada_db), 1e-3, sacada_db.name)
    rows = rows[rows[S.VALID_XTAL]].reset_index(drop=True)
    relaxed = prerelax_frame(perturbed(rows), device="torch")
    assert relaxed[S.VALID_ENV].mean() > 0.97
    fp = fingerprint_part(relaxed, "x", require=[S.VALID_XTAL])
    found = N.match_known(fp, N.known_candidates(duckdb.connect(),
                                                 N.known_files(known.path), fp))
    own = (found == rows[S.ID]).to_numpy()
    assert own.mean() >= 0.99, rows.loc[~own, S.ID].tolist()
    assert not (found.notna() & ~own).any()                   # never another's id


def test_prerelax_stage_adds_the_net_of_relaxed_rows(sacada_db):
    rows = read_items(list_items(sacada_db)[:3], 1e-3, sacada_db.name)
    out = prerelax_part(rows, device="cpu", limit=2)
    assert list(out.columns[-5:]) == list(S.TOPOLOGY_DTYPES)
    assert out[S.DIMENSION].tolist()[:2] == [3, 3] and out[S.DIMENSION].iloc[2] == -1
    assert out[S.TOPOLOGY_KEY].iloc[:2].notna().all() and out[S.TOPOLOGY_KEY].iloc[2] is None
    same = prerelax_frame(rows, device="cpu", limit=2)       # the other columns unchanged
    kept = [c for c in same.columns if c not in S.TOPOLOGY_DTYPES and c != "seconds"]
    pd.testing.assert_frame_equal(out[kept], same[kept])
