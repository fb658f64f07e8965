"""A tiny MACE model for tests and benchmarks (no MACE-MP weights are needed).

ScaleShiftMACE, 8 scalar channels, r_max 4 Å, fitted in a few seconds (L-BFGS) to
ReaxFF energies and forces of strained, rattled graphite and diamond.  It is no
physical model beyond what it saw: it exercises the MACE paths (file -> mace_mp ->
relaxation, batched and not) at a MACE model's cost per atom, not its accuracy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from legodask import energy as E
from legodask.energy.relax import diamond, graphite


def build(path: Path) -> Path:
    """Fit the tiny model (deterministic) and save it at ``path``."""
    import mace  # noqa: F401  (mace before e3nn)
    import torch
    from e3nn import o3
    from mace import data as mace_data
    from mace import modules
    from mace.tools import torch_geometric, utils

    torch.manual_seed(0)
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        reaxff = E.get_model("reaxff")
        configs, energies, forces = [], [], []
        for k, make in enumerate((graphite, diamond)):
            for j, s in enumerate((0.94, 1.0, 1.06, 1.12)):
                a = make()
                a.set_cell(a.cell * s, scale_atoms=True)
                a.rattle(0.02, seed=10 * k + j)
                a.calc = reaxff.calculator()
                energies.append(a.get_potential_energy())
                forces.append(a.get_forces())
                configs.append(a)
        e0 = float(np.mean([e / len(a) for a, e in zip(configs, energies)]))
        block = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
        model = modules.ScaleShiftMACE(
            r_max=4.0, num_bessel=6, num_polynomial_cutoff=5, max_ell=1,
            interaction_cls=block, interaction_cls_first=block, num_interactions=1,
            num_elements=1, hidden_irreps=o3.Irreps("8x0e"), MLP_irreps=o3.Irreps("8x0e"),
            atomic_energies=np.array([e0]), avg_num_neighbors=8.0, atomic_numbers=[6],
            correlation=2, gate=torch.nn.functional.silu,
            atomic_inter_scale=1.0, atomic_inter_shift=0.0)
        z = utils.AtomicNumberTable([6])
        batch = torch_geometric.Batch.from_data_list(
            [mace_data.AtomicData.from_config(mace_data.config_from_atoms(a), z_table=z,
                                              cutoff=4.0) for a in configs]).to_dict()
        target_e = torch.tensor(energies)
        target_f = torch.tensor(np.concatenate(forces))
        natoms = torch.tensor([float(len(a)) for a in configs])
        opt = torch.optim.LBFGS(model.parameters(), max_iter=40, line_search_fn="strong_wolfe")

        def loss() -> torch.Tensor:
            opt.zero_grad()
            out = model(batch, training=True, compute_force=True)
            value = (((out["energy"] - target_e) / natoms) ** 2).mean() \
                + 0.01 * ((out["forces"] - target_f) ** 2).mean()
            value.backward()
            return value

        opt.step(loss)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model, path)
    finally:
        torch.set_default_dtype(dtype)
    return path
