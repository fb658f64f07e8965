"""Many structures with one model: the one place that picks how they are relaxed --
by the fast relaxers unless ``settings.relaxer`` is ``ase`` (the batched relaxer
for models with a TorchSim model; LAMMPS's own minimiser, in the isolating child,
for LAMMPS models), else in lock-step batches when the model has a batch
evaluator, in a child process when it can crash the interpreter, or here with
one calculator for all."""

from __future__ import annotations

from collections.abc import Sequence

from ase import Atoms

from .model import EnergyModel
from .isolate import IsolatedRelaxer
from .relax import RelaxResult, RelaxSettings, relax, relax_lockstep


def relax_many(model: EnergyModel, structures: Sequence[Atoms],
               settings: RelaxSettings = RelaxSettings(),
               isolate: bool | None = None) -> list[RelaxResult]:
    """Relax ``structures`` with ``model``: by the batched relaxer or the back end's
    own minimiser (``settings.relaxer`` fast), in lock-step batches, in a child process when it can crash the interpreter (``model.isolate``
    unless ``isolate`` says otherwise), else here with one calculator for all."""
    if not structures:
        return []
    if settings.relaxer != "ase" and model.make_torchsim is not None:
        from .batched import relax_batched

        return relax_batched(structures, model.make_torchsim(), settings)
    if model.make_batch is not None and settings.batch_size > 1:
        evaluate = model.make_batch()
        return [r for k in range(0, len(structures), settings.batch_size)
                for r in relax_lockstep(structures[k:k + settings.batch_size], evaluate,
                                        settings)]
    if model.isolate if isolate is None else isolate:
        with IsolatedRelaxer(model, settings) as child:
            return [child.relax(a) for a in structures]
    calc = model.calculator() if model.reuse else None
    return [relax(a, calc or model.calculator(), settings) for a in structures]
