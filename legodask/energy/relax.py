"""Symmetry-constrained relaxation of one structure, or of a batch in lock step.

Each structure is relaxed under ``FixSymmetry`` with a cell filter by FIRE (a small
``maxstep``: LAMMPS has crashed under BFGS with a cell filter).  ``fmax`` and the
step budget follow the number of atoms as the reference does (250 steps below 100
atoms, fewer above); a wall-clock time-out stops a slow relaxation; energies or
forces out of range and volume explosions are rejected.  The result carries the
energy in eV/atom and the relaxed geometry as extended-XYZ text.  A relaxation cut
by its time-out or step budget keeps its last energy and geometry, with
``converged`` false.  This is the ``ase`` relaxer; ``lammps_relax`` (LAMMPS's own
minimiser) and ``batched`` (many structures in one batched state) are the fast ones.
"""

from __future__ import annotations

import functools
import io
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator
from ase.geometry import cellpar_to_cell

from .model import BatchEvaluator
from .symmetry import space_group


@dataclass(frozen=True)
class RelaxSettings:
    """How to relax: ``fmax``/``steps`` fixed when given, else by size (``budget``)."""

    fmax: float | None = None
    steps: int | None = None
    maxstep: float = 0.1            # FIRE's largest move (Å)
    timeout: float = 600.0          # wall-clock seconds per structure
    cell_filter: str = "frechet"    # frechet | exp | none
    symprec: float = 0.01           # FixSymmetry tolerance
    energy_range: tuple[float, float] = (-20.0, 5.0)  # eV/atom accepted
    max_force: float = 100.0        # eV/Å; larger is a blow-up
    volume_range: tuple[float, float] = (0.3, 4.0)    # V/V0 accepted
    batch_size: int = 16            # structures per lock-step batch (``ase`` relaxer)
    retries: int = 1                # restarts after a crashed child process
    relaxer: str = "fast"           # fast (LAMMPS's minimiser, batched FIRE) | ase
    batch_atoms: int | None = None  # atoms per batched state (None: by memory / 2048 on a CPU)


@dataclass
class RelaxResult:
    """One relaxation: energy per atom (NaN on failure), steps, geometry, error,
    whether the forces reached ``fmax`` (else the step budget or the time-out ended
    it), the relaxer that ran it and the space group it ended in (0: unknown)."""

    energy: float = math.nan
    steps: int = 0
    relaxed: str | None = None
    error: str | None = None
    seconds: float = 0.0
    converged: bool = False
    relaxer: str | None = None      # ase | lammps | batched; None: not relaxed
    spg: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None


def budget(natoms: int, settings: RelaxSettings = RelaxSettings()) -> tuple[float, int]:
    """``(fmax, steps)`` for a structure of ``natoms``: 0.1 eV/Å and 250 steps below
    100 atoms, looser and fewer above (big cells are rare and slow)."""
    if natoms < 100:
        fmax, steps = 0.1, 250
    elif natoms < 200:
        fmax, steps = 0.15, 150
    elif natoms < 500:
        fmax, steps = 0.2, 100
    else:
        fmax, steps = 0.25, 50
    return (settings.fmax if settings.fmax is not None else fmax,
            settings.steps if settings.steps is not None else steps)


# ---------------------------------------------------------------------------
# geometry as text, reference structures
# ---------------------------------------------------------------------------

def atoms_to_text(atoms: Atoms) -> str:
    """Extended-XYZ text of a structure (no calculator results)."""
    from ase.io import write

    buf = io.StringIO()
    write(buf, Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc),
          format="extxyz")
    return buf.getvalue()


def text_to_atoms(text: str) -> Atoms:
    """The structure written by ``atoms_to_text``."""
    from ase.io import read

    return read(io.StringIO(text), format="extxyz")


def graphite() -> Atoms:
    """AB graphite (P6_3/mmc, a = 2.46 Å, c = 6.70 Å): the carbon ground state."""
    return Atoms("C4", cell=cellpar_to_cell([2.46, 2.46, 6.70, 90, 90, 120]), pbc=True,
                 scaled_positions=[(0, 0, 0.25), (0, 0, 0.75),
                                   (1 / 3, 2 / 3, 0.25), (2 / 3, 1 / 3, 0.75)])


def diamond() -> Atoms:
    """Cubic diamond, conventional 8-atom cell (a = 3.567 Å)."""
    from ase.build import bulk

    return bulk("C", "diamond", a=3.567, cubic=True)


# ---------------------------------------------------------------------------
# one structure
# ---------------------------------------------------------------------------

def _cached_filter(base: type) -> type:
    """``base`` (a cell filter) computing its forces once per geometry: ASE's
    optimisers ask three times per step and the Fréchet derivative is costly."""
    class Cached(base):  # type: ignore[misc, valid-type]
        _key: tuple[Any, ...] | None = None
        _forces: np.ndarray

        def get_forces(self, *args: Any, **kwargs: Any) -> np.ndarray:
            key = (self.atoms.positions.tobytes(), self.atoms.cell.array.tobytes(),
                   args, tuple(sorted(kwargs.items())))
            if key != self._key:
                self._forces, self._key = super().get_forces(*args, **kwargs), key
            return self._forces.copy()

    Cached.__name__ = f"Cached{base.__name__}"
    return Cached


def _prepare(atoms: Atoms, settings: RelaxSettings) -> tuple[Atoms, Any]:
    """A copy of ``atoms`` under FixSymmetry and the object the optimiser moves."""
    from ase.constraints import FixSymmetry
    from ase.filters import ExpCellFilter, FrechetCellFilter

    atoms = Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=True)
    atoms.set_constraint(FixSymmetry(atoms, symprec=settings.symprec))
    if settings.cell_filter == "none":
        return atoms, atoms
    base = {"frechet": FrechetCellFilter, "exp": ExpCellFilter}[settings.cell_filter]
    return atoms, _cached_filter(base)(atoms)


def check_state(energy: float, forces: np.ndarray, volume_ratio: float, natoms: int,
                settings: RelaxSettings) -> str | None:
    """Why a state (total energy in eV, forces in eV/Å, volume over the starting
    one) is a blow-up, or ``None``: the one test of every relaxer."""
    e = energy / natoms
    lo, hi = settings.energy_range
    if not (math.isfinite(e) and lo <= e <= hi):
        return f"energy {e:.3f} eV/atom outside [{lo}, {hi}]"
    fmax = float(np.sqrt((forces ** 2).sum(axis=1)).max()) if len(forces) else 0.0
    if not (math.isfinite(fmax) and fmax <= settings.max_force):
        return f"force {fmax:.3g} eV/Å above {settings.max_force}"
    vlo, vhi = settings.volume_range
    if not vlo <= volume_ratio <= vhi:
        return f"volume changed by a factor {volume_ratio:.2f} (outside [{vlo}, {vhi}])"
    return None


def _blowup(atoms: Atoms, v0: float, settings: RelaxSettings) -> str | None:
    """Why the current state is a blow-up, or ``None``."""
    return check_state(atoms.get_potential_energy(), atoms.get_forces(apply_constraint=False),
                       atoms.get_volume() / v0, len(atoms), settings)


def _result(atoms: Atoms, steps: int, seconds: float, error: str | None,
            converged: bool = False, symprec: float = 0.01) -> RelaxResult:
    """The result of a relaxation that ended at ``atoms`` (with ``error``, if any)
    after ``seconds`` of its own."""
    if error:
        return RelaxResult(steps=steps, error=error, seconds=seconds, relaxer="ase")
    return RelaxResult(energy=float(atoms.get_potential_energy() / len(atoms)), steps=steps,
                       relaxed=atoms_to_text(atoms), seconds=seconds, converged=bool(converged),
                       relaxer="ase", spg=space_group(atoms, symprec))


def _quietly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``fn`` without the harmless warnings a relaxation repeats at every step:
    the cell filter's matrix logarithm, and back ends (CHGNet) saying that their
    pymatgen structures drop ASE's FixSymmetry, which ASE still applies."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="logm result may be inaccurate")
            warnings.filterwarnings("ignore", message="Only FixAtoms and FixCartesian")
            warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad")
            return fn(*args, **kwargs)
    return wrapper


@_quietly
def relax(atoms: Atoms, calc: Calculator, settings: RelaxSettings = RelaxSettings()) -> RelaxResult:
    """Relax one structure with ``calc``; failures are returned, not raised."""
    from ase.optimize import FIRE

    t0 = time.monotonic()
    steps = 0
    try:
        atoms, movable = _prepare(atoms, settings)
        atoms.calc = calc
        fmax, max_steps = budget(len(atoms), settings)
        v0 = atoms.get_volume()
        opt = FIRE(movable, maxstep=settings.maxstep, logfile=None)
        for converged in opt.irun(fmax=fmax, steps=max_steps):
            steps = opt.nsteps
            error = _blowup(atoms, v0, settings)
            if error or converged or time.monotonic() - t0 > settings.timeout:
                return _result(atoms, steps, time.monotonic() - t0, error, converged,
                               settings.symprec)
        return _result(atoms, steps, time.monotonic() - t0, None, symprec=settings.symprec)
    except Exception as exc:  # a back end's failure is a recorded result
        return RelaxResult(steps=steps, error=f"{type(exc).__name__}: {exc}"[:500],
                           seconds=time.monotonic() - t0, relaxer="ase")


# ---------------------------------------------------------------------------
# a batch in lock step (one model call per step for all structures)
# ---------------------------------------------------------------------------

class _Cached(Calculator):
    """Holds results the batch evaluator computed for the structure's current state."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def calculate(self, atoms: Atoms | None = None, properties: Any = None,
                  system_changes: Any = None) -> None:
        raise RuntimeError("batched structure evaluated outside its batch")

    def fill(self, atoms: Atoms, result: dict[str, Any]) -> None:
        self.results = {"energy": result["energy"], "free_energy": result["energy"],
                        "forces": np.asarray(result["forces"], float),
                        "stress": np.asarray(result["stress"], float)}
        self.atoms = atoms.copy()


@_quietly
def relax_lockstep(structures: Sequence[Atoms], evaluate: BatchEvaluator,
                settings: RelaxSettings = RelaxSettings()) -> list[RelaxResult]:
    """Relax ``structures`` together: each step evaluates all unfinished ones in one
    call of ``evaluate`` (one GPU forward pass), then moves each with its own FIRE.
    A structure's seconds are its share of each call plus its own steps."""
    from ase.optimize import FIRE

    t0 = time.monotonic()
    results: list[RelaxResult | None] = [None] * len(structures)
    spent = [0.0] * len(structures)
    active = []
    for i, a in enumerate(structures):
        try:
            atoms, movable = _prepare(a, settings)
        except Exception as exc:
            results[i] = RelaxResult(error=f"{type(exc).__name__}: {exc}", relaxer="ase")
            continue
        atoms.calc = _Cached()
        opt = FIRE(movable, maxstep=settings.maxstep, logfile=None)
        opt.fmax, max_steps = budget(len(atoms), settings)
        active.append((i, atoms, opt, max_steps, atoms.get_volume()))
    while active:
        t1 = time.monotonic()
        try:
            out = evaluate([a for _, a, *_ in active])
        except Exception as exc:
            for i, *_ in active:
                results[i] = RelaxResult(error=f"{type(exc).__name__}: {exc}"[:500],
                                         seconds=spent[i], relaxer="ase")
            break
        share = (time.monotonic() - t1) / len(active)
        still = []
        for (i, atoms, opt, max_steps, v0), res in zip(active, out):
            t1 = time.monotonic()
            atoms.calc.fill(atoms, res)
            converged = opt.gradient_converged(opt.optimizable.get_gradient())
            error = _blowup(atoms, v0, settings)
            if (error or converged or opt.nsteps >= max_steps
                    or time.monotonic() - t0 > settings.timeout):
                spent[i] += share + time.monotonic() - t1
                results[i] = _result(atoms, opt.nsteps, spent[i], error, converged,
                                     settings.symprec)
                continue
            opt.step()
            opt.nsteps += 1
            spent[i] += share + time.monotonic() - t1
            still.append((i, atoms, opt, max_steps, v0))
        active = still
    return [r if r is not None else RelaxResult(error="not relaxed", relaxer="ase")
            for r in results]
