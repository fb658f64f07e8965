"""The paper's counts on a tiny run whose answers are known by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from ase.db import connect

from legodask import schema as S
from legodask.analysis import dedup as D
from legodask.analysis import metrics as M
from legodask.analysis.novelty import add_known
from legodask.cli import main
from legodask.crystal.convert import atoms_to_pyxtal, pyxtal_to_row
from legodask.crystal.frame import decode_frame
from legodask.store import Run

# Crystals of the tiny run (SACADA ids): A srs (I4_132, cubic), B (P6_222),
# C (I4_1/amd), D (P4_2/mmc), E (Immm); T is only in the training set.
A, B, C, D_, E, T = 2, 5, 3, 19, 20, 58

# The ranked rows: crystal, e_above_reaxff, e_above_mace (eV/atom).
RANKED = [(A, 0.10, 0.20), (A, 0.20, 0.30), (A, 0.05, 0.25),
          (B, 0.70, 0.80), (B, 0.45, 0.90),
          (C, 0.30, 0.52), (D_, 0.60, 0.10)]
# By hand: 10 samples, 8 decode (2 garbage), 7 valid_env (E is not), 4 unique
# (A B C D); training {A, C, T} -> 2 regenerated; within 0.5 eV/atom:
# reaxff {A, B (its second row), C} = 3, cubic {A} = 1; mace {A, D} = 2, cubic 1.
EXPECTED = {"n_total": 10, "n_valid_xtal": 8, "n_valid_env": 7, "n_unique": 4, "n_train": 2,
            "n_lowE_all": {"reaxff": 3, "mace": 2}, "n_lowE_cubic": {"reaxff": 1, "mace": 1}}


def _rows(db_path: Path) -> dict[int, list[dict]]:
    """Three representations of each crystal: the canonical row, the last atom of
    each orbit as representative, and a t-subgroup setting (when it fits)."""
    db = connect(db_path)
    out = {}
    for i in (A, B, C, D_, E, T):
        xtal = atoms_to_pyxtal(db.get(id=i).toatoms())
        reps = [pyxtal_to_row(xtal),
                pyxtal_to_row(xtal, ids=[len(s.coords) - 1 for s in xtal.atom_sites])]
        reps += [r for r in map(pyxtal_to_row, xtal.subgroup(eps=0, group_type="t",
                                                                     max_cell=2))
                 if r["valid_xtal"]][:1]
        out[i] = reps
    return out


def build_tiny_run(path: Path, db_path: Path) -> Run:
    """samples -> prerelaxed -> ranked -> ingested, as the stages would leave them."""
    reps = _rows(db_path)
    picks = [(A, 0), (A, 1), (A, 2), (B, 0), (B, 1), (C, 0), (D_, 0), (E, 0)]
    samples = [{**reps[c][k], "id": f"s{n}", "source": "test"} for n, (c, k) in enumerate(picks)]
    samples += [{**reps[A][0], "id": "s8", "spg": 0},
                {**reps[B][0], "id": "s9", "wp0": 77}]
    run = Run(path)
    decoded = decode_frame(pd.DataFrame(samples))
    run.write_frame_table("samples", decoded)
    pre = decoded[decoded.valid_xtal].copy()
    pre["valid_env"] = [True] * 7 + [False]
    pre["loss"] = 0.01
    run.write_frame_table("prerelaxed", pre)
    ranked = pre[pre.valid_env].copy()
    for j, model in ((1, "reaxff"), (2, "mace")):
        ranked[f"e_above_{model}"] = [r[j] for r in RANKED]
        ranked[f"energy_{model}"] = ranked[f"e_above_{model}"] - 9.0
    ranked["relaxed_reaxff"] = None
    run.write_frame_table("ranked", ranked)
    train = pd.DataFrame([{**reps[i][0], "id": f"sacada-{i}"} for i in (A, C, T)])
    train["vasp_energy"] = [-8.9, -8.6, -8.7]
    run.write_frame_table("ingested", S.conform(train))
    known = path.parent / "sacada.db"           # known crystals: sacada-1 A, -2 C, -3 T
    with connect(known) as db:
        for i in (A, C, T):
            db.write(connect(db_path).get(id=i).toatoms())
    add_known(run, known)
    D.dedup(run, "ranked", known=run.path)
    return run


@pytest.fixture(scope="module")
def tiny_run(sacada_db, tmp_path_factory) -> Run:
    return build_tiny_run(tmp_path_factory.mktemp("tiny") / "run", sacada_db)


def test_metrics_of_a_tiny_run_match_the_hand_count(tiny_run, capsys):
    assert main(["metrics", "--run", str(tiny_run.path)]) == 0
    got = json.loads(tiny_run.file("metrics.json").read_text())
    assert {k: got[k] for k in EXPECTED} == EXPECTED
    assert got["models"] == ["reaxff", "mace"] and got["notes"] == []
    printed = capsys.readouterr().out
    assert "| run | N_total | N_valid_xtal | N_valid_env | N_unique | N_train |" in printed
    assert ("| 10 | 8 | 7 | 4 | 2 | reaxff: 3 / mace: 2 | reaxff: 1 / mace: 1 |"
            in printed)
    assert "| N_3d | N_new | N_new_net | N_SUN | N_SUN_3d | N_SUN_cubic |" in printed


def test_sun_counts_of_the_tiny_run(tiny_run):
    """Known: A and C (and T, never generated); new: B and D.  Stable within 0.5
    eV/atom: reaxff {A, B, C}, mace {A, D}; so SUN reaxff {B}, mace {D}; the only
    cubic crystal, A (srs), is known."""
    fps = tiny_run.read("fingerprints").compute().set_index("id")
    assert fps.loc[["s0", "s1", "s2", "s5"], "known_id"].tolist() == [
        "sacada-1", "sacada-1", "sacada-1", "sacada-2"]
    assert fps.loc[["s3", "s4", "s6"], "known_id"].isna().all()
    assert fps.loc["s0", "topology"] == "srs" and (fps["dimension"].dropna() >= 0).all()
    nov = M.compute_metrics(tiny_run)["novelty"]
    assert nov["by_dimension"] == {"3": 4} and nov["n_3d"] == 4
    assert ["srs", 1] in nov["top_nets"]
    assert (nov["n_new"], nov["n_new_3d"], nov["n_new_cubic"]) == (2, 2, 0)
    assert nov["n_new_net"] == 2                   # B's and D's nets are not A's, C's, T's
    assert nov["n_stable"] == {"reaxff": 3, "mace": 2}
    assert nov["n_SUN"] == {"reaxff": 1, "mace": 1}
    assert nov["n_SUN_3d"] == {"reaxff": 1, "mace": 1}
    assert nov["n_SUN_cubic"] == {"reaxff": 0, "mace": 0}
    tight = M.compute_metrics(tiny_run, window=0.2)["novelty"]
    assert tight["n_SUN"] == {"reaxff": 0, "mace": 1}           # D at 0.10 with mace


def test_window_changes_the_low_energy_counts(tiny_run):
    got = M.compute_metrics(tiny_run, window=0.25)
    assert got["n_lowE_all"] == {"reaxff": 1, "mace": 2}       # A ; A (0.20), D (0.10)
    assert got["n_lowE_cubic"] == {"reaxff": 1, "mace": 1}


def test_missing_tables_give_nulls_with_notes(sacada_db, tmp_path):
    run = Run(tmp_path / "partial")
    rows = _rows(sacada_db)
    run.write_frame_table("samples", decode_frame(pd.DataFrame(
        [{**rows[A][0], "id": "a"}, {**rows[B][0], "id": "b"}])))
    got = M.compute_metrics(run)
    assert got["n_total"] == 2 and got["n_valid_xtal"] == 2
    assert got["n_unique"] is None and got["n_lowE_all"] is None and got["n_train"] is None
    assert any("fingerprints" in n for n in got["notes"])


def test_overlap_matrix_between_runs_and_training(tiny_run, sacada_db, tmp_path):
    rows = _rows(sacada_db)
    other = Run(tmp_path / "other")
    # B and D in another setting, T; B twice
    df = pd.DataFrame([{**rows[B][1], "id": "o1"}, {**rows[D_][-1], "id": "o2"},
                       {**rows[T][1], "id": "o3"}, {**rows[B][0], "id": "o4"}])
    other.write_frame_table("prerelaxed", S.conform(df))
    D.dedup(other, "prerelaxed")
    mat = M.overlap_matrix([tiny_run.path, other.path], train=tiny_run.path)
    names = ["Train", tiny_run.path.name, "other"]
    assert mat.loc[names, names].values.tolist() == [[3, 2, 1], [2, 4, 2], [1, 2, 3]]


def test_training_structures_are_found_at_another_models_volume(tiny_run, sacada_db, tmp_path):
    # the same crystals relaxed by another model: cells 8 % longer, same shape
    rows = _rows(sacada_db)
    grown = []
    for n, c in enumerate((A, C, B)):
        row = {**rows[c][0], "id": f"g{n}"}
        grown.append({**row, **{k: row[k] * 1.08 for k in S.LENGTHS}})
    run = Run(tmp_path / "grown")
    run.write_frame_table("prerelaxed", S.conform(pd.DataFrame(grown)))
    D.dedup(run, "prerelaxed")
    train = M.train_fingerprints(tiny_run)
    mine = D.table_files(run.path)
    assert D.overlap(train, mine) == 2                       # A and C, not B
    assert D.overlap(train, mine, scale=False) == 0          # not at equal volume


def test_optimized_rows_are_counted_by_round(tiny_run, tmp_path):
    """The rounds of `legodask optimize`: the rows that reached the environment in
    each round, beside the pre-relaxation's."""
    import shutil

    from legodask.analysis.candidates import processed_lines

    shutil.copytree(tiny_run.path, tmp_path / "run")
    run = Run(tmp_path / "run")
    opt = run.read("prerelaxed").compute()
    opt["round"] = [0, 0, 1, 0, 2, 0, 0, 1]           # the last row reached it in round 1
    opt["valid_env"] = [True, True, True, True, False, True, True, True]
    opt["z_steps"] = 0
    run.write_frame_table("optimized", opt)
    got = M.compute_metrics(run)["processed"]["optimized"]
    assert got["reached"] == 7 and got["by_round"] == {1: 2}
    line = next(x for x in processed_lines({"optimized": got}) if x.startswith("optimized"))
    assert line == ("optimized: 7 of 8 rows in the environment, 2 of them reached in "
                    "the rounds (round 1: 2)")
