"""The energy-model interface and registry: what a back end builds (``EnergyModel``)
and registers under a name, and how callers get one (``get_model``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ase import Atoms
from ase.calculators.calculator import Calculator

# (structures) -> one dict per structure with "energy" (eV), "forces" (eV/Å), "stress" (eV/Å^3, Voigt)
BatchEvaluator = Callable[[Sequence[Atoms]], list[dict[str, Any]]]


class ModelUnavailable(RuntimeError):
    """The back end cannot run here (a binary, a package or weights are missing);
    the message says what to install or where to put which file."""


@dataclass(frozen=True)
class EnergyModel:
    """An energy model ready to be built where it runs.

    ``make_calculator`` is a picklable callable (a module-level function or a
    ``functools.partial`` of one) returning an ASE calculator; ``isolate`` asks the
    ranker to run it in a child process because it can crash or hang the process;
    ``gpu`` says a GPU worker helps; ``make_batch`` (optional) returns a function
    that evaluates a batch of structures in one call (the ``ase`` relaxer's lock
    step); ``reuse`` says one calculator may serve many structures (LAMMPS's ReaxFF
    may not: a fresh one per structure).  The fast relaxers: ``make_relaxer``
    (optional) builds, from the ``RelaxSettings``, a callable relaxing one structure
    after another in the back end's own minimiser (LAMMPS; run in the isolating
    child); ``make_torchsim`` (optional) builds the TorchSim model that the batched
    relaxer (``energy.batched``) steps many structures with.
    """

    name: str
    make_calculator: Callable[[], Calculator]
    isolate: bool = False
    gpu: bool = False
    make_batch: Callable[[], BatchEvaluator] | None = None
    reuse: bool = True
    options: dict[str, Any] = field(default_factory=dict)
    make_relaxer: Callable[[Any], Callable[[Atoms], Any]] | None = None
    make_torchsim: Callable[[], Any] | None = None

    def calculator(self) -> Calculator:
        return self.make_calculator()


Factory = Callable[..., EnergyModel]
_REGISTRY: dict[str, Factory] = {}


def register(name: str) -> Callable[[Factory], Factory]:
    """Decorator: register ``factory(**opts) -> EnergyModel`` under ``name``."""
    def deco(factory: Factory) -> Factory:
        _REGISTRY[name] = factory
        return factory
    return deco


def names() -> list[str]:
    """Names of the registered energy models."""
    return sorted(_REGISTRY)


def get_model(name: str, **opts: Any) -> EnergyModel:
    """The energy model ``name`` with back-end options ``opts``; raises
    ``ModelUnavailable`` when it cannot run here and ``KeyError`` for an unknown name."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown energy model {name!r}; registered: {', '.join(names())}") from None
    return factory(**opts)


def availability(name: str, **opts: Any) -> str | None:
    """``None`` when model ``name`` can be built here, else the reason it cannot."""
    try:
        get_model(name, **opts)
    except ModelUnavailable as exc:
        return str(exc)
    return None
