"""Energy models behind one interface, like ASE calculators.

A back end registers a factory under a name; ``get_model(name, **opts)`` returns an
``EnergyModel``: a small, picklable description that builds an ASE calculator where
it runs (a dask worker, or a child process that isolates a back end able to crash
the interpreter), and, where the back end supports it, evaluates many structures
in one batch.  Back ends import their heavy packages only when they are used.

Built in: ``reaxff``, ``tersoff``, ``rebo``, ``airebo`` (LAMMPS), ``mace``,
``chgnet`` (ML potentials), ``gulp`` (ReaxFF in GULP when the binary exists).
"""

from .model import (BatchEvaluator, EnergyModel, ModelUnavailable, availability,
                    get_model, names, register)

# The built-in back ends register themselves on import.
from . import gulp, lammps, mlip  # noqa: F401

__all__ = ["BatchEvaluator", "EnergyModel", "ModelUnavailable", "availability", "get_model",
           "names", "register"]
