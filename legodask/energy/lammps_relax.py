"""Relaxation inside LAMMPS: one persistent instance relaxing structures one after
another with its own minimiser and the cell free.

Each structure replaces the previous one in the same instance (``delete_atoms``
and ``change_box`` would keep stale state, so the box is rebuilt after ``clear``,
which keeps the loaded library and its potential files cached by the OS).  The
cell relaxes under ``fix box/relax tri 0.0`` (all six cell degrees of freedom to
zero stress) with conjugate gradients and the ``forcezero`` line search (which
looks for a zero of the force along the search direction, not a minimum of the
energy: ReaxFF's energy steps at its bond-order cut-offs stall the energy-based
line searches, which then spend up to five force evaluations an iteration).  A
``fix halt`` stops the minimisation inside LAMMPS as soon as the structure meets
the ASE path's convergence test (largest atomic force and cell force below
``fmax``; LAMMPS's own force tolerance would weigh the cell N times more);
``minimize`` also stops at the step budget (``STEP_FACTOR`` times the ASE path's)
or ``timer timeout`` (the wall-clock
limit, which stops it cleanly so the last geometry is kept).  A minimisation that
ends before that test passes is restarted from where it stopped (``box/relax``
measures the cell against its state at the start of each ``minimize``), within
the same budget.
LAMMPS does not impose symmetry: the result records the space group it reached.
Used in ``isolate``'s child process, so a crash of LAMMPS costs one structure.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from ase import Atoms

from .relax import RelaxResult, RelaxSettings, atoms_to_text, budget, check_state
from .symmetry import space_group

# The two phases a relaxation alternates: conjugate gradients with the cell free,
# then, where ReaxFF's forces stop matching its energy (its bond-order cut-offs)
# and the line search stalls, FIRE on the atoms, which needs forces only (LAMMPS's
# damped-dynamics minimisers do not move the cell).  ``fix halt`` watches the
# first only: FIRE does not compute the virial at every step, and cannot move the cell.
CELL_PHASE = ["fix relax all box/relax tri 0.0 vmax 0.01",
              "fix halt all halt 1 v_done > 0.5 error continue", "min_style cg",
              "min_modify line forcezero norm max"]
ATOMS_PHASE = ["unfix relax", "unfix halt", "min_style fire", "min_modify norm max"]
PHASE_STEPS = 50         # iterations of one phase at most
MAX_EVALS_PER_STEP = 3   # force evaluations per iteration (line search) at most
# Iterations of the size-dependent budget (``relax.budget``) a structure gets here:
# twice the ASE path's FIRE steps, because the phases restart each other (a restart
# forgets the search directions and FIRE's speed) and an iteration costs less than
# an ASE step; a budget given in the settings is used as it is.
STEP_FACTOR = 2


class LammpsRelaxer:
    """Relax structures one after another in one LAMMPS instance.

    ``lmpcmds`` are the potential's commands (``pair_style``, ``pair_coeff``),
    ``header`` the ones before the box (``units``, ``atom_style``; LAMMPS's
    defaults with ``units metal`` when ``None``), ``elements`` the atom types 1.."""

    def __init__(self, lmpcmds: Sequence[str], elements: Sequence[str],
                 header: Sequence[str] | None = None,
                 settings: RelaxSettings = RelaxSettings()):
        from .lammps_lib import import_lammps

        self.lmpcmds = list(lmpcmds)
        self.types = {el: i + 1 for i, el in enumerate(elements)}
        self.header = list(header) if header is not None else ["units metal",
                                                               "atom_style atomic"]
        self.units = next(c.split()[1] for c in self.header if c.startswith("units"))
        self.settings = settings
        self._lammps = import_lammps()
        self.lmp = self._new()

    def _new(self) -> Any:
        return self._lammps.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])

    def close(self) -> None:
        self.lmp.close()

    def __call__(self, atoms: Atoms) -> RelaxResult:
        """Relax one structure; LAMMPS's errors become failed results (and a fresh
        instance serves the next structure)."""
        t0 = time.monotonic()
        try:
            return self._relax(atoms, t0)
        except Exception as exc:
            self.lmp.close()
            self.lmp = self._new()
            return RelaxResult(error=f"{type(exc).__name__}: {exc}"[:500], relaxer="lammps",
                               seconds=time.monotonic() - t0)

    # -- one structure ---------------------------------------------------------
    def _setup(self, atoms: Atoms) -> Any:
        from ase.calculators.lammps import Prism
        from ase.data import atomic_masses, atomic_numbers

        prism = Prism(np.asarray(atoms.cell), pbc=True)
        xhi, yhi, zhi, xy, xz, yz = (repr(float(v)) for v in prism.get_lammps_prism())
        lmp = self.lmp
        lmp.command("clear")
        lmp.commands_list([*self.header, "boundary p p p", "atom_modify map array sort 0 0",
                           f"region cell prism 0 {xhi} 0 {yhi} 0 {zhi} {xy} {xz} {yz} units box",
                           f"create_box {len(self.types)} cell"])
        for el, t in self.types.items():
            lmp.command(f"mass {t} {float(atomic_masses[atomic_numbers[el]])!r}")
        x = prism.vector_to_lammps(atoms.positions, wrap=True)
        lmp.create_atoms(len(atoms), list(range(1, len(atoms) + 1)),
                         [self.types[s] for s in atoms.get_chemical_symbols()],
                         x.ravel().tolist())
        lmp.commands_list([*self.lmpcmds, "neighbor 0.5 bin",
                           "neigh_modify every 1 delay 0 check yes",
                           "thermo_style custom step pe pxx pyy pzz pxy pxz pyz",
                           "thermo_modify norm no flush no"])
        return prism

    def _halt(self, fmax: float) -> list[str]:
        """``fix halt`` stopping a minimisation inside LAMMPS once the larger of the
        largest atomic force and the Frobenius norm of virial/N (which bounds the
        largest row that ``_read`` tests, in any frame) is below ``fmax``."""
        from ase.calculators.lammps import convert

        nktv2p = {"real": 68568.415, "metal": 1.6021765e6}[self.units]
        ftol = float(convert(fmax, "force", "ASE", self.units))
        return ["variable fatom atom sqrt(fx*fx+fy*fy+fz*fz)",
                "compute fatom all reduce max v_fatom",
                f"variable fcell equal sqrt(pxx^2+pyy^2+pzz^2+2*(pxy^2+pxz^2+pyz^2))"
                f"*vol/{nktv2p}/atoms",
                f"variable done equal (c_fatom<{ftol!r})*(v_fcell<{ftol!r})"]

    def _relax(self, atoms: Atoms, t0: float) -> RelaxResult:
        """Descend; where the result drifted out of the starting space group but is
        still in it at a looser tolerance, symmetrise it and descend again from there
        with the steps left (once); converged is judged on the structure returned."""
        s = self.settings
        n = len(atoms)
        fmax, max_steps = budget(n, s)
        max_steps *= STEP_FACTOR if s.steps is None else 1
        start = space_group(atoms, s.symprec)
        state, steps, error = self._descend(atoms, fmax, max_steps, t0)
        for again in (True, False):
            if error:
                return RelaxResult(steps=steps, error=error, relaxer="lammps",
                                   seconds=time.monotonic() - t0)
            spg = space_group(state["atoms"], s.symprec)
            fixed = self._symmetrized(state["atoms"], start) if spg != start else None
            if fixed is None:
                break
            if not again or steps >= max_steps:
                state, spg = self._read(self._setup(fixed), fixed), start
                break
            state, more, error = self._descend(fixed, fmax, max_steps - steps, t0)
            steps += more
        return RelaxResult(energy=state["energy"] / n, steps=steps,
                           relaxed=atoms_to_text(state["atoms"]),
                           seconds=time.monotonic() - t0, converged=state["fmax"] <= fmax,
                           relaxer="lammps", spg=spg)

    def _descend(self, atoms: Atoms, fmax: float, max_steps: int, t0: float
                 ) -> tuple[dict[str, Any], int, str | None]:
        """Alternate the cell and atom phases from ``atoms`` until converged, out of
        steps, stuck or out of time: the last state, the steps taken, and an error
        when the structure blew up."""
        from ase.calculators.lammps import convert

        s = self.settings
        n = len(atoms)
        prism = self._setup(atoms)
        lmp = self.lmp
        lmp.commands_list(self._halt(fmax))
        v0 = atoms.get_volume()
        ftol = convert(fmax, "force", "ASE", self.units)
        steps, state = 0, None
        k = idle = 0
        while steps < max_steps and idle < 2 and time.monotonic() - t0 < s.timeout:
            lmp.commands_list(ATOMS_PHASE if k % 2 else CELL_PHASE)
            k += 1
            todo = min(PHASE_STEPS, max_steps - steps)
            lmp.command("reset_timestep 0")
            left = s.timeout - (time.monotonic() - t0)
            lmp.command(f"timer timeout {max(left, 1.0):.1f} every 10")
            lmp.command(f"minimize 0.0 {float(ftol)!r} {todo} {MAX_EVALS_PER_STEP * todo}")
            done = int(lmp.extract_global("ntimestep"))
            steps += done
            idle = 0 if done else idle + 1
            state = self._read(prism, atoms)
            error = check_state(state["energy"], state["forces"], state["volume"] / v0, n, s)
            if error:
                return state, steps, error
            if state["fmax"] <= fmax:
                break
        return (state if state is not None else self._read(prism, atoms)), steps, None

    def _symmetrized(self, relaxed: Atoms, start: int) -> Atoms | None:
        """``relaxed`` symmetrised in space group ``start`` (ASE's ``refine_symmetry``)
        when it is still in it at a looser tolerance (``box/relax`` moves a hexagonal
        cell's tilt apart from its lengths), else None."""
        from ase.spacegroup.symmetrize import refine_symmetry

        for loose in (3 * self.settings.symprec, 10 * self.settings.symprec):
            if space_group(relaxed, loose) == start:
                fixed = relaxed.copy()
                refine_symmetry(fixed, symprec=loose)
                return fixed
        return None

    def _read(self, prism: Any, atoms: Atoms) -> dict[str, Any]:
        """Energy (eV), forces (eV/Å), geometry and the convergence measure (the
        larger of the largest atomic force and the largest row of virial/N, the
        cell force of ASE's Fréchet filter) of the current state, in ASE's frame."""
        from ase.calculators.lammps import convert

        lmp = self.lmp
        n = len(atoms)
        lmp.command("run 0")
        energy = convert(lmp.get_thermo("pe"), "energy", self.units, "ASE")
        p = [lmp.get_thermo(k) for k in ("pxx", "pyy", "pzz", "pxy", "pxz", "pyz")]
        press = np.array([[p[0], p[3], p[4]], [p[3], p[1], p[5]], [p[4], p[5], p[2]]])
        stress = -convert(prism.tensor2_to_ase(press), "pressure", self.units, "ASE")
        forces = convert(np.array(lmp.gather_atoms("f", 1, 3)).reshape(n, 3),
                         "force", self.units, "ASE")
        boxlo, boxhi, xy, yz, xz, _, _ = lmp.extract_box()
        lx, ly, lz = (hi - lo for hi, lo in zip(boxhi, boxlo))
        tilt = np.array([[lx, 0, 0], [xy, ly, 0], [xz, yz, lz]])
        cell = tilt @ prism.rot_mat.T
        x = np.array(lmp.gather_atoms("x", 1, 3)).reshape(n, 3) - np.asarray(boxlo)
        relaxed = Atoms(atoms.numbers, x @ prism.rot_mat.T, cell=cell, pbc=True)
        relaxed.wrap()
        volume = relaxed.get_volume()
        virial = -volume * stress / n
        f_atoms = float(np.sqrt((forces ** 2).sum(axis=1)).max()) if n else 0.0
        f_cell = float(np.sqrt((virial ** 2).sum(axis=1)).max())
        return {"energy": float(energy), "forces": forces, "volume": volume,
                "fmax": max(f_atoms, f_cell) if math.isfinite(f_atoms) else math.inf,
                "atoms": relaxed}

