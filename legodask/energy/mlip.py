"""Machine-learned potentials: MACE (foundation models or a model file) and CHGNet.

MACE foundation models are loaded the way mace-torch loads them
(``mace.calculators.mace_mp(model=...)``), which reads mace's download cache.  No
download happens here: when the weights are not in the cache the error says where
to put the file, or which option / environment variable names a model file.
``mace`` is always imported before ``e3nn`` (importing e3nn first breaks unpickling
of MACE models under recent torch).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import os
import re
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ase import Atoms
from ase.calculators.calculator import Calculator

from .model import BatchEvaluator, EnergyModel, ModelUnavailable, register

MACE_MODEL_ENV = "LEGODASK_MACE_MODEL"


def _device(device: str | None) -> str:
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def mace_model_file(model: str) -> Path:
    """The file of MACE model ``model`` (a foundation-model name or a path), or
    ``ModelUnavailable`` saying exactly how to provide it."""
    if importlib.util.find_spec("mace") is None:
        raise ModelUnavailable("mace-torch is not installed: `pip install mace-torch`")
    from mace.calculators import foundations_models as fm

    how = (f"or pass a model file with the option `--option mace.model=/path/to/file.model` "
           f"(`get_model('mace', model=...)`) or the environment variable {MACE_MODEL_ENV}")
    if model in fm.mace_mp_urls:
        if model == "medium-mpa-0" and os.path.isfile(fm.local_model_path):
            return Path(fm.local_model_path)
        url = fm.mace_mp_urls[model]
        cached = Path(fm.get_cache_dir()) / re.sub(r"[^A-Za-z0-9_]", "", os.path.basename(url))
        if cached.is_file():
            return cached
        raise ModelUnavailable(
            f"MACE foundation model {model!r} is not on this machine and is not downloaded "
            f"here. Download {url} on a machine with internet access and put it at {cached} "
            f"(mace's cache: $XDG_CACHE_HOME/mace, default ~/.cache/mace), {how}.")
    path = Path(model).expanduser()
    if path.is_file():
        return path.resolve()
    raise ModelUnavailable(
        f"MACE model {model!r} is neither a foundation model name "
        f"({', '.join(fm.mace_mp_urls)}) nor an existing file; {how}.")


def make_mace_calculator(model: str, dispersion: bool, device: str | None,
                         default_dtype: str) -> Calculator:
    """``mace_mp(model=..., dispersion=...)``: mace-torch's own loader."""
    import mace  # noqa: F401  (before e3nn)
    from mace.calculators import mace_mp

    return mace_mp(model=model, dispersion=dispersion, device=_device(device),
                   default_dtype=default_dtype)


def make_mace_batch(model: str, device: str | None, default_dtype: str) -> BatchEvaluator:
    """A function evaluating energy, forces and stress of many structures in one
    forward pass of the MACE model (one graph batch; the GPU path)."""
    from mace import data as mace_data
    from mace.tools import torch_geometric, torch_tools

    calc = make_mace_calculator(model, False, device, default_dtype)
    net = calc.models[0]
    keyspec = mace_data.KeySpecification(info_keys=calc.info_keys, arrays_keys=calc.arrays_keys)

    def evaluate(structures: Sequence[Atoms]) -> list[dict[str, Any]]:
        with torch_tools.default_dtype(calc.default_dtype):
            graphs = [mace_data.AtomicData.from_config(
                mace_data.config_from_atoms(a, key_specification=keyspec, head_name=calc.head),
                z_table=calc.z_table, cutoff=calc.r_max, heads=calc.available_heads)
                for a in structures]
        batch = torch_geometric.Batch.from_data_list(graphs).to(calc.device)
        batch["positions"].requires_grad_(True)
        out = net(batch.to_dict(), compute_stress=True, training=False)
        energy = out["energy"].detach().cpu().numpy() * calc.energy_units_to_eV
        forces = out["forces"].detach().cpu().numpy() * (calc.energy_units_to_eV
                                                           / calc.length_units_to_A)
        stress = out["stress"].detach().cpu().numpy() * (calc.energy_units_to_eV
                                                           / calc.length_units_to_A ** 3)
        ptr = batch["ptr"].cpu().numpy()
        from ase.stress import full_3x3_to_voigt_6_stress

        return [{"energy": float(energy[i]), "forces": forces[ptr[i]:ptr[i + 1]],
                 "stress": full_3x3_to_voigt_6_stress(stress[i])}
                for i in range(len(structures))]

    return evaluate


def make_mace_torchsim(model: str, device: str | None, default_dtype: str) -> Any:
    """The MACE model as a TorchSim model (``torch_sim.models.mace.MaceModel``), for
    the batched relaxer; loaded by mace-torch's own loader, as the calculator is."""
    import torch
    from torch_sim.models.mace import MaceModel

    calc = make_mace_calculator(model, False, device, default_dtype)
    return MaceModel(calc.models[0], device=torch.device(calc.device),
                     dtype=getattr(torch, default_dtype))


@register("mace")
def mace(model: str | None = None, dispersion: bool = False, device: str | None = None,
         default_dtype: str = "float64") -> EnergyModel:
    """MACE: ``model`` is a foundation model name (``small``, ``medium``, ...) or a
    model file; default ``$LEGODASK_MACE_MODEL``, else ``small`` (the paper's
    MACE-MP-0 small).  ``dispersion`` adds D3 (needs torch-dftd), as the paper did."""
    model = model or os.environ.get(MACE_MODEL_ENV) or "small"
    path = mace_model_file(model)
    if dispersion and importlib.util.find_spec("torch_dftd") is None:
        raise ModelUnavailable("MACE with dispersion=True needs torch-dftd: "
                               "`pip install torch-dftd`, or use dispersion=False")
    make = functools.partial(make_mace_calculator, str(path), dispersion, device, default_dtype)
    batch = (None if dispersion
             else functools.partial(make_mace_batch, str(path), device, default_dtype))
    torchsim = (None if dispersion
                else functools.partial(make_mace_torchsim, str(path), device, default_dtype))
    return EnergyModel("mace", make, gpu=True, make_batch=batch, make_torchsim=torchsim,
                       options={"model": model, "file": str(path), "dispersion": dispersion})


_PRINTS = threading.Lock()


def _load_chgnet(device: str) -> Any:
    """CHGNet's bundled model, built without its prints on the terminal (its size and
    device, unconditionally; one thread at a time, so that redirects never
    interleave) and without its per-call note on a tensor it converts."""
    from chgnet.model import CHGNet

    warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad",
                            module="chgnet")
    with _PRINTS, contextlib.redirect_stdout(io.StringIO()):
        return CHGNet.load(use_device=device, verbose=False)


def make_chgnet_calculator(device: str | None) -> Calculator:
    from chgnet.model.dynamics import CHGNetCalculator

    dev = _device(device)
    model = _load_chgnet(dev)
    with _PRINTS, contextlib.redirect_stdout(io.StringIO()):   # "CHGNet will run on ..."
        return CHGNetCalculator(model=model, use_device=dev)


def make_chgnet_torchsim(device: str | None) -> Any:
    """CHGNet as a TorchSim model: each call builds the crystal graphs of the
    batch's structures and evaluates them as one batch of graphs; forces and
    stress come from one backward pass over positions and strains together
    (CHGNet's own forward takes two, keeping the graph for training), so the
    numbers are its ASE calculator's at less cost.  eV, eV/Å, eV/Å^3, in float64
    for the optimiser."""
    import torch
    from chgnet.model.model import BatchedGraph
    from pymatgen.core import Lattice, Structure
    from torch_sim.models.interface import ModelInterface

    dev = _device(device)
    net = _load_chgnet(dev)
    net.eval()

    class CHGNetModel(ModelInterface):
        def __init__(self) -> None:
            super().__init__()
            self.net = net
            self._device, self._dtype = torch.device(dev), torch.float64
            self._compute_forces = self._compute_stress = True

        def forward(self, state: Any, **kwargs: Any) -> dict[str, Any]:
            cells = state.row_vector_cell.detach().cpu().numpy()
            pos = state.positions.detach().cpu().numpy()
            numbers = state.atomic_numbers.cpu().numpy()
            system = state.system_idx.cpu().numpy()
            graphs = [self.net.graph_converter(Structure(
                Lattice(cells[b]), numbers[system == b], pos[system == b],
                coords_are_cartesian=True)).to(dev) for b in range(state.n_systems)]
            counts = torch.bincount(state.system_idx, minlength=state.n_systems)
            with torch.enable_grad():
                g = BatchedGraph.from_graphs(
                    graphs, bond_basis_expansion=self.net.bond_basis_expansion,
                    angle_basis_expansion=self.net.angle_basis_expansion, compute_stress=True)
                energy = self.net._compute(g)["e"]       # eV/atom without the composition
                if self.net.composition_model is not None:
                    energy = energy + self.net.composition_model(graphs)
                n = counts.to(device=energy.device, dtype=energy.dtype)
                total = energy * n if self.net.is_intensive else energy
                grads = torch.autograd.grad(total.sum(), [*g.atom_positions, *g.strains])
            k = state.n_systems
            f64 = dict(dtype=torch.float64, device=self._device)
            stress = torch.stack([d / v for d, v in zip(grads[k:], g.volumes)])
            return {"energy": total.detach().to(**f64),
                    "forces": -torch.cat(grads[:k]).to(**f64),
                    "stress": stress.detach().to(**f64)}

    return CHGNetModel()


@register("chgnet")
def chgnet(device: str | None = None) -> EnergyModel:
    """CHGNet with the weights bundled in the chgnet package (works offline)."""
    if importlib.util.find_spec("chgnet") is None:
        raise ModelUnavailable("chgnet is not installed: `pip install chgnet`")
    return EnergyModel("chgnet", functools.partial(make_chgnet_calculator, device), gpu=True,
                       make_torchsim=functools.partial(make_chgnet_torchsim, device))
