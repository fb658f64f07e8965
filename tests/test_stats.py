"""Stats: counts, symmetries, regenerated training rows and marginals, against a
table whose answers are known by construction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_encode import training_table

from legodask import cli
from legodask import schema as S
from legodask.analysis.stats import Tolerance
from legodask.crystal.convert import atoms_to_row, pyxtal_verdicts, symmetry_key
from legodask.crystal.frame import decode_frame
from legodask.crystal.wyckoff import wyckoff_ops
from legodask.stages.stats import stats_stage
from legodask.store import Run


def test_symmetry_key_ignores_site_order() -> None:
    a = S.conform(pd.DataFrame({"spg": [227, 227, 191], "wp0": [3, 1, 1], "wp1": [1, 3, -1]}))
    k = symmetry_key(a)
    assert k[0] == k[1] != k[2]
    assert k[0] == "227 48f 96h" and k[2] == "191 12q"


@pytest.fixture(scope="module")
def run(sacada_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Training: 12 rows of 4 crystals.  Samples: 5 training rows as they are, 3 with
    their coordinates moved by 0.01 (beyond the tolerance), 2 moved by 0.001 Å in a (within), one crystal of
    a symmetry not in training, 2 invalid rows and one whose two atoms coincide."""
    train = training_table(sacada_db, n_structures=4)
    run = Run(tmp_path_factory.mktemp("stats"))
    run.write_frame_table("augmented", train, meta=S.empty_frame(), rows_per_part=5)
    same = train.iloc[:5].copy()
    far = train.iloc[5:8].copy()
    far[S.XYZ_FLAT] = (far[S.XYZ_FLAT] + 0.01) % 1   # the free coordinates among them
    near = train.iloc[8:10].copy()
    near["a"] += 0.001
    other = S.conform(pd.DataFrame([atoms_to_row(_graphite())]))
    bad = train.iloc[:2].assign(valid_xtal=False, error="made up")
    twice = decode_frame(S.conform(pd.DataFrame([{
        "spg": 1, "a": 3.0, "b": 3.0, "c": 3.0, "alpha": 90.0, "beta": 90.0, "gamma": 90.0,
        "wp0": 0, "el0": "C", "x0": 0.1, "y0": 0.2, "z0": 0.3,
        "wp1": 0, "el1": "C", "x1": 0.1, "y1": 0.2, "z1": 0.3}])))
    samples = pd.concat([same, far, near, other, bad, twice], ignore_index=True)
    samples["id"] = [f"s-{i}" for i in range(len(samples))]
    run.write_frame_table("samples", S.conform(samples), meta=S.empty_frame(), rows_per_part=4)
    return run


def _graphite():  # type: ignore[no-untyped-def]
    from ase.build import graphene

    atoms = graphene(a=2.46, vacuum=3.35)
    atoms.cell[2, 2] = 6.7
    return atoms


def test_sample_stats_count_what_was_built(run: Run) -> None:
    stats = stats_stage(run, "samples")
    assert stats["training"] == "augmented"
    assert (stats["rows"], stats["valid_xtal"], stats["overlapping"]) == (14, 11, 1)
    assert stats["valid_share_no_distance_check"] == pytest.approx(12 / 14)
    assert stats["pyxtal_rows"] == 14 and stats["pyxtal_valid_lost_a_site"] == 0
    assert stats["training_symmetries"] == 4
    assert stats["symmetries"] == 5 and stats["new_symmetries"] == 1
    assert stats["rows_regenerating_training"] == 7
    # the four crystals' sites are all special, so their orbit swaps are one row in the
    # generator's form: a sample of each crystal regenerates its three training rows
    assert stats["training_rows_regenerated"] == 12
    h = np.asarray(stats["histograms"]["sample"])
    assert h.shape == (6, 100) and (h.sum(1) == 11).all()
    assert run.file("stats-samples.png").stat().st_size > 1000


def test_tolerance_decides_what_is_regenerated(run: Run) -> None:
    loose = stats_stage(run, "samples", tol=Tolerance(coord=0.02))
    assert loose["rows_regenerating_training"] == 10
    tight = stats_stage(run, "samples", tol=Tolerance(length=1e-4))
    assert tight["rows_regenerating_training"] == 5


def test_cli_prints_paper_table_for_augmented(run: Run, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["stats", "--run", str(run.path), "--table", "augmented"]) == 0
    out = capsys.readouterr().out
    assert "v3-240k" in out and "242,766" in out and "485" in out
    assert "12 valid crystals" in out


def test_pyxtal_decoder_keeps_a_crystal_without_a_site_ours_rejects(sacada_db: Path) -> None:
    """The paper's validity: pyxtal drops a site off its Wyckoff position and still calls
    the crystal valid; legodask calls the row invalid and says why."""
    train = training_table(sacada_db, n_structures=12)
    row = train[(train["n_sites"] >= 2) & (train["wp1"] > 0)].iloc[[0]].copy()
    assert pyxtal_verdicts(row).tolist() == [[True, False]]
    for c, d in zip(S.XYZ[1], (0.21, 0.13, 0.07)):
        row[c] = (row[c] + d) % 1
    ours = decode_frame(row.drop(columns=["valid_xtal", "error"]))
    assert not ours["valid_xtal"].iloc[0] and "from Wyckoff position" in ours["error"].iloc[0]
    assert pyxtal_verdicts(row).tolist() == [[True, True]]  # valid, a site lost



def test_a_training_crystal_written_by_other_atoms_of_its_special_orbits_is_regenerated(
        sacada_db: Path) -> None:
    from legodask.analysis.stats import match_training, training_keys

    train = training_table(sacada_db, n_structures=12).set_index("id", drop=False)
    special = [i for i, r in train.iterrows() if i.endswith("-1") and all(
        wyckoff_ops(r["spg"], r[f"wp{k}"]).dof < 3 for k in range(r["n_sites"]))]
    generators = train[train["id"].str.endswith("-0")]
    swapped = train.loc[special]
    first = generators.loc[[i[:-2] + "-0" for i in special]]
    written_otherwise = ~np.isclose(swapped[S.XYZ_FLAT].fillna(0).to_numpy(float),
                                    first[S.XYZ_FLAT].fillna(0).to_numpy(float)).all(1)
    assert written_otherwise.sum() >= 3
    m = match_training(swapped.assign(id=[f"s-{i}" for i in range(len(special))]),
                       training_keys(generators), Tolerance())
    assert m["id"].nunique() == len(special)
