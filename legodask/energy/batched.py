"""Batched relaxation of many structures for machine-learned potentials.

The structures being relaxed share one batched state (TorchSim's ``SimState``:
positions, cells, forces); one model call per step evaluates them all, and
BFGS with the Fréchet cell filter (``bfgs``: ASE's ``BFGS`` on the ``ase``
relaxer's filter, each structure with its own Hessian) moves them.  What TorchSim
lacks is written here:

* symmetry kept as ``FixSymmetry`` keeps it: the model is wrapped so that its
  forces and stresses are averaged over each structure's space-group operations
  (``symmetry.SymmetryBatch``) before the optimiser sees them;
* in-flight batching: a structure leaves the batch when it has converged (ASE's
  test: largest atomic and cell force below ``fmax``), blown up, used its step
  budget or its time, and the next ones enter while atoms are left in the batch's
  budget, so a slow structure holds no one back;
* denormal floats flushed to zero on a CPU;
* a batch sized by atoms: ``settings.batch_atoms``, else on a GPU from the memory
  one structure's evaluation took and the memory free, else 2048 atoms;
* per-structure records: a blow-up (energy, force or volume out of range, as the
  other relaxers test) or a failing model call is that structure's error, and a
  relaxation cut by its budget or time keeps its last energy, ``converged`` false.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ase import Atoms

from .bfgs import Memory, frechet_cell_bfgs
from .relax import RelaxResult, RelaxSettings, atoms_to_text, budget, check_state
from .symmetry import SymmetryBatch, SymmetryOps, space_group, symmetry_ops

CPU_BATCH_ATOMS = 2048
GPU_MEMORY_SHARE = 0.5      # of the free memory, for the batch's model calls


def symmetrized(model: Any) -> Any:
    """``model`` (a TorchSim model) with forces and stresses averaged over the
    operations set with ``.use(SymmetryBatch)`` for the batch it is called on."""
    from torch_sim.models.interface import ModelInterface

    class Symmetrized(ModelInterface):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model
            self._device, self._dtype = model.device, model.dtype
            self._compute_forces = self._compute_stress = True
            self.sym: SymmetryBatch | None = None

        def use(self, sym: SymmetryBatch) -> None:
            self.sym = sym

        def forward(self, state: Any, **kwargs: Any) -> dict[str, Any]:
            out = {k: v.detach() for k, v in self.inner(state, **kwargs).items()}
            if self.sym is not None:
                cell = state.row_vector_cell
                out["forces"] = self.sym.forces(out["forces"], cell)
                out["stress"] = self.sym.stress(out["stress"], cell)
            return out

    return Symmetrized()


@dataclass
class _Job:
    """One structure: its budget, symmetry, and where it stands."""

    atoms: Atoms
    ops: SymmetryOps
    fmax: float
    max_steps: int
    v0: float
    steps: int = 0
    seconds: float = 0.0
    memory: Memory | None = None  # its optimiser's (set when it enters a batch)
    alone: bool = False       # relax it in a batch of its own (a shared call failed)
    converged: bool = False
    error: str | None = None
    result: RelaxResult | None = None


def relax_batched(structures: Sequence[Atoms], model: Any,
                  settings: RelaxSettings = RelaxSettings()) -> list[RelaxResult]:
    """Relax ``structures`` with the TorchSim ``model`` in in-flight batches; on a
    CPU with denormal floats flushed to zero (the models' activations make them,
    and a CPU computes with them many times slower: CHGNet takes 1.3x longer)."""
    import torch

    cpu = torch.device(model.device).type == "cpu"
    torch.set_flush_denormal(cpu)
    try:
        return _relax_batched(structures, model, settings)
    finally:
        torch.set_flush_denormal(False)


def _relax_batched(structures: Sequence[Atoms], model: Any,
                   settings: RelaxSettings) -> list[RelaxResult]:
    sym_model = symmetrized(model)
    opt_init, opt_step = frechet_cell_bfgs(sym_model)
    jobs = []
    for a in structures:
        atoms = Atoms(a.numbers, a.positions, cell=a.cell, pbc=True)
        jobs.append(_Job(atoms, symmetry_ops(atoms, settings.symprec),
                         *budget(len(atoms), settings), atoms.get_volume()))
    queue = list(range(len(jobs)))
    limit = settings.batch_atoms
    members: list[int] = []
    state = None

    def use(batch: list[int]) -> None:
        sym_model.use(SymmetryBatch([jobs[k].ops for k in batch], model.device, model.dtype))

    while queue or members:
        new = _admit(queue, members, jobs, limit or CPU_BATCH_ATOMS)
        if new:
            use(new)
            fresh, limit = _enter(new, jobs, opt_init, model, limit, queue)
            if fresh is not None:
                state = fresh if not members else _concat(state, fresh)
                members += new
        if not members:
            continue
        done = _finished(state, members, jobs, settings)
        if done:
            state = _leave(state, members, done, jobs, settings)
            members = [k for i, k in enumerate(members) if i not in done]
            if not members:
                continue
        use(members)
        t0 = time.perf_counter()
        try:
            state = opt_step(state, [jobs[k].memory for k in members])
        except Exception as exc:  # a failing model call: each again alone, then recorded
            _failed(members, jobs, queue, exc, time.perf_counter() - t0)
            members, state = [], None
            continue
        share = (time.perf_counter() - t0) / len(members)
        for k in members:
            jobs[k].steps += 1
            jobs[k].seconds += share
    return [j.result or RelaxResult(error="not relaxed", relaxer="batched") for j in jobs]


def _admit(queue: list[int], members: list[int], jobs: list[_Job], limit: int) -> list[int]:
    """Take structures from ``queue`` while the batch stays within ``limit`` atoms
    (one at least into an empty batch; one that must be alone only into an empty one)."""
    used = sum(len(jobs[k].atoms) for k in members)
    new: list[int] = []
    while queue:
        k = queue[0]
        if (members or new) and (jobs[k].alone or any(jobs[m].alone for m in members + new)
                                 or used + len(jobs[k].atoms) > limit):
            break
        new.append(queue.pop(0))
        used += len(jobs[k].atoms)
    return new


def _enter(new: list[int], jobs: list[_Job], opt_init: Callable[..., Any], model: Any,
           limit: int | None, queue: list[int]) -> tuple[Any, int | None]:
    """The optimiser's state of the ``new`` structures (``None`` when their model call
    failed: see ``_failed``), and the batch's atom limit (on a GPU measured the
    first time: the memory this call took per atom against the memory free)."""
    import torch
    import torch_sim as ts

    measure = limit is None and torch.device(model.device).type == "cuda"
    t0 = time.perf_counter()
    try:
        if measure:
            torch.cuda.reset_peak_memory_stats(model.device)
            before = torch.cuda.memory_allocated(model.device)
        fresh = opt_init(ts.io.atoms_to_state([jobs[k].atoms for k in new], model.device,
                                               model.dtype))
        if measure:
            per_atom = ((torch.cuda.max_memory_allocated(model.device) - before)
                        / sum(len(jobs[k].atoms) for k in new))
            free, _ = torch.cuda.mem_get_info(model.device)
            limit = max(1, int(GPU_MEMORY_SHARE * free / max(per_atom, 1.0)))
    except Exception as exc:
        _failed(new, jobs, queue, exc, time.perf_counter() - t0)
        return None, limit
    for k in new:
        jobs[k].seconds += (time.perf_counter() - t0) / len(new)
        jobs[k].memory = Memory()
    return fresh, limit


def _failed(members: list[int], jobs: list[_Job], queue: list[int], exc: Exception,
            seconds: float) -> None:
    """A model call over ``members`` raised: a structure that was alone is recorded
    with the error; the others go back to the front of the queue, to start again
    alone (so one bad structure fails alone)."""
    retry = []
    for k in members:
        j = jobs[k]
        j.seconds += seconds / len(members)
        if j.alone or len(members) == 1:
            j.result = RelaxResult(error=f"{type(exc).__name__}: {exc}"[:500], steps=j.steps,
                                   seconds=j.seconds, relaxer="batched")
        else:
            j.alone, j.steps = True, 0
            retry.append(k)
    queue[:0] = retry


def _concat(state: Any, fresh: Any) -> Any:
    from torch_sim.state import concatenate_states

    return concatenate_states([state, fresh])


def _finished(state: Any, members: list[int], jobs: list[_Job],
              settings: RelaxSettings) -> list[int]:
    """Positions in the batch of the structures that leave it now (converged,
    blown up, out of steps or time); sets their ``converged`` and ``error``."""
    import torch

    fnorm = torch.linalg.norm(state.forces, dim=1)
    f_atoms = torch.zeros(state.n_systems, dtype=fnorm.dtype, device=fnorm.device
                          ).scatter_reduce_(0, state.system_idx, fnorm, "amax",
                                            include_self=False)
    f_cell = torch.linalg.norm(state.cell_forces, dim=2).amax(dim=1)
    fmax = torch.maximum(f_atoms, f_cell).cpu().numpy()
    f_atoms = f_atoms.cpu().numpy()
    energy = state.energy.cpu().numpy()
    volume = torch.linalg.det(state.cell).abs().cpu().numpy()
    done = []
    for i, k in enumerate(members):
        j = jobs[k]
        j.error = check_state(float(energy[i]), f_atoms[i:i + 1, None],
                              float(volume[i]) / j.v0, len(j.atoms), settings)
        j.converged = bool(fmax[i] <= j.fmax)
        if j.error or j.converged or j.steps >= j.max_steps or j.seconds > settings.timeout:
            done.append(i)
    return done


def _leave(state: Any, members: list[int], done: list[int], jobs: list[_Job],
           settings: RelaxSettings) -> Any:
    """Record the structures at positions ``done`` and return the batch without them."""
    import torch_sim as ts

    gone = state.pop(done)
    for i, s in zip(done, gone):
        j = jobs[members[i]]
        if j.error:
            j.result = RelaxResult(steps=j.steps, error=j.error, seconds=j.seconds,
                                   relaxer="batched")
            continue
        atoms = ts.io.state_to_atoms(s)[0]
        atoms.wrap()
        j.result = RelaxResult(energy=float(s.energy[0]) / len(atoms), steps=j.steps,
                               relaxed=atoms_to_text(atoms), seconds=j.seconds,
                               converged=j.converged, relaxer="batched",
                               spg=space_group(atoms, settings.symprec))
    return state
