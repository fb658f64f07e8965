"""The rank stage: chained relaxation, energies above graphite, crashes and hangs."""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import pandas as pd
import pytest
from ase.calculators.emt import EMT
from threadpoolctl import threadpool_limits

from legodask import energy as E
from legodask import schema as S
from legodask import store
from legodask.crystal.convert import atoms_to_row, row_to_atoms
from legodask.energy import ranking
from legodask.energy.relax import RelaxSettings, diamond, graphite, text_to_atoms
from legodask.stages import rank as rank_stage
from legodask.store import Run

FAST = RelaxSettings(steps=20, timeout=60)


@pytest.fixture(autouse=True)
def _one_blas_thread():
    with threadpool_limits(1):
        yield


class Hanging(EMT):
    """EMT, except that it never returns for a structure of 8 atoms (diamond)."""

    def calculate(self, atoms=None, properties=None, system_changes=None):
        if len(atoms) == 8:
            time.sleep(3600)
        super().calculate(atoms, properties, system_changes or [])


class Crashing(EMT):
    """EMT, except that it kills its process (as a segfault would) on 8 atoms."""

    def calculate(self, atoms=None, properties=None, system_changes=None):
        if len(atoms) == 8:
            os.abort()
        super().calculate(atoms, properties, system_changes or [])


@E.register("fake_hang")
def _fake_hang() -> E.EnergyModel:
    return E.EnergyModel("fake_hang", Hanging, isolate=True)


@E.register("fake_crash")
def _fake_crash() -> E.EnergyModel:
    return E.EnergyModel("fake_crash", Crashing, isolate=True)


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    """Graphite, diamond and an invalid row, as structure-table rows."""
    recs = [atoms_to_row(graphite(), id="graphite"),
            atoms_to_row(diamond(), id="diamond"),
            {**atoms_to_row(diamond(), id="broken"), "valid_xtal": False,
             "error": "decoded badly"}]
    df = S.conform(pd.DataFrame.from_records(recs))
    df["valid_env"] = [True, True, True]
    return df


def test_rows_give_the_structures(rows):
    assert [len(row_to_atoms(r)) for r in rows.to_dict("records")[:2]] == [4, 8]


def test_rank_frame_chains_models_above_graphite(rows):
    refs = {m: ranking.reference_energy(m, {}, FAST).energy for m in ("tersoff", "rebo")}
    out = ranking.rank_frame(rows, ["tersoff", "rebo"], settings=FAST, references=refs)
    assert len(out) == len(rows) and list(out.columns[:len(rows.columns)]) == list(rows.columns)
    for m in ("tersoff", "rebo"):
        energy, e_above, steps, relaxed, error, converged, relaxer, spg = S.energy_columns(m)
        g, d, bad = out.to_dict("records")
        assert g[error] is None and d[error] is None
        assert g[converged] and d[converged] and not bad[converged]
        assert abs(g[e_above]) < 0.01 and 0.0 < d[e_above] < 0.5   # graphite is the zero
        assert len(text_to_atoms(d[relaxed])) == 8
        assert "not a valid crystal" in bad[error] and np.isnan(bad[energy])
        assert out[steps].dtype == "int32"
        assert g[relaxer] == d[relaxer] == "lammps" and bad[relaxer] is None
        assert (g[spg], d[spg], bad[spg]) == (194, 227, 0)
    # the second model starts where the first stopped: REBO relaxes Tersoff's graphite
    tersoff_graphite = text_to_atoms(out.loc[0, "relaxed_tersoff"])
    assert tersoff_graphite.cell.cellpar()[0] == pytest.approx(2.529, abs=0.01)
    assert out.loc[0, "relax_steps_rebo"] > 0          # REBO's graphite (2.46 Å) differs


def test_relaxation_ended_by_its_step_budget_says_so(rows):
    out = ranking.rank_frame(rows, ["tersoff"], settings=RelaxSettings(steps=1, fmax=1e-6),
                          references={"tersoff": 0.0})
    _, d, _ = out.to_dict("records")
    assert d["error_tersoff"] is None and np.isfinite(d["energy_tersoff"])
    assert d["relax_steps_tersoff"] == 1 and not d["converged_tersoff"]


def test_hanging_relaxation_is_stopped_and_recorded(rows):
    t0 = time.monotonic()
    out = ranking.rank_frame(rows, ["fake_hang"], settings=RelaxSettings(steps=5, timeout=1.0))
    assert time.monotonic() - t0 < 30
    g, d, _ = out.to_dict("records")
    assert g["error_fake_hang"] is None and np.isfinite(g["energy_fake_hang"])
    assert "timed out" in d["error_fake_hang"] and np.isnan(d["energy_fake_hang"])


def test_crashing_model_costs_one_row(rows):
    df = pd.concat([rows.iloc[[1]], rows.iloc[[0]]], ignore_index=True)   # crash first
    out = ranking.rank_frame(df, ["fake_crash"], settings=RelaxSettings(steps=5, timeout=30))
    d, g = out.to_dict("records")
    assert "SIGABRT" in d["error_fake_crash"] and "tried 2 times" in d["error_fake_crash"]
    assert g["error_fake_crash"] is None and np.isfinite(g["energy_fake_crash"])


def test_unavailable_model_is_recorded_per_row(rows):
    out = ranking.rank_frame(rows.iloc[:1], ["no-such-model"], settings=FAST)
    assert "model unavailable" in out.loc[0, "error_no-such-model"]


def test_rank_stage_writes_ranked_table(rows, tmp_path):
    run = Run(tmp_path / "run")
    df = rows.copy()
    df["valid_env"] = [True, False, True]
    run.write_frame_table("prerelaxed", df)
    result = rank_stage.rank(run, ["tersoff"], settings=FAST, only_valid_env=True)
    assert result.rows == 3
    ranked = run.read("ranked").compute()
    assert set(S.energy_columns("tersoff")) <= set(ranked.columns)
    assert list(ranked["id"]) == ["graphite", "diamond", "broken"]
    assert abs(ranked.loc[0, "e_above_tersoff"]) < 0.01
    assert "valid_env is false" in ranked.loc[1, "error_tersoff"]
    refs = json.loads(run.file(store.RANK_REFERENCES).read_text())
    assert refs[0]["model"] == "tersoff" and refs[0]["energy"] < -7.3
    # a rerun over the finished table writes no file of the run
    stamps = {f: f.stat().st_mtime_ns for f in run.path.rglob("*") if f.is_file()}
    assert rank_stage.rank(run, ["tersoff"], settings=FAST, only_valid_env=True).written == 0
    assert {f: f.stat().st_mtime_ns for f in run.path.rglob("*") if f.is_file()} == stamps


def test_unique_ranks_one_row_per_crystal(rows, tmp_path):
    """--unique: a repeat (the same graphite under another id, in another partition)
    is not relaxed and names the row that was; the partitions' rows stay in order."""
    run = Run(tmp_path / "run")
    again = rows.iloc[:1].assign(id="graphite-again")
    df = pd.concat([rows.iloc[:2], again], ignore_index=True)
    run.write_frame_table("prerelaxed", df, rows_per_part=2)
    result = rank_stage.rank(run, ["tersoff"], settings=FAST, only_valid_env=True, unique=True)
    assert result.rows == 3 and run.is_complete(S.RANK_UNIQUE)
    ranked = run.read("ranked").compute().set_index("id")
    assert list(ranked.index) == ["graphite", "diamond", "graphite-again"]
    assert ranked["energy_tersoff"].notna().tolist() == [True, True, False]
    assert "same crystal as graphite" in ranked.loc["graphite-again", "error_tersoff"]
    # a second table ranked in the same run keeps its own dedup beside the first one's
    run.write_frame_table("optimized", df.iloc[1:], rows_per_part=2)
    other = rank_stage.rank(run, ["tersoff"], input="optimized", output="ranked_optimized",
                            settings=FAST, only_valid_env=True, unique=True)
    assert other.rows == 2 and run.is_complete(S.rank_unique("ranked_optimized"))
    assert run.read(S.RANK_UNIQUE).compute()[S.ID].tolist() == ["graphite", "diamond",
                                                                "graphite-again"]


def test_command_line(tmp_path):
    parser = argparse.ArgumentParser()
    rank_stage.add_arguments(parser)
    args = parser.parse_args(["--run", str(tmp_path), "--models", "reaxff,gulp",
                              "--option", "reaxff.ffield=ffield.reax.cho",
                              "--option", "mace.dispersion=true", "--timeout", "30"])
    assert ranking.parse_options(args.option) == {"reaxff": {"ffield": "ffield.reax.cho"},
                                               "mace": {"dispersion": True}}
    if E.availability("gulp"):
        assert rank_stage.command(args) == 2          # says why, writes nothing
        assert not (tmp_path / "ranked.parquet").exists()
    with pytest.raises(ValueError, match="MODEL.NAME=VALUE"):
        ranking.parse_options(["reaxff=1"])


def _no_calculator():
    raise RuntimeError("licence server down")


def test_isolated_model_that_cannot_start_fails_each_row_once():
    from legodask.energy.runner import relax_many

    out = relax_many(E.EnergyModel("broken", _no_calculator, isolate=True),
                     [graphite(), diamond()], FAST)
    assert [r.error for r in out] == ["model broken unusable: RuntimeError: licence server down"] * 2
