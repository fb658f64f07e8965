"""The pre-relaxation objective of crystals decoded from latent vectors, differentiable
end to end: latent ``z`` -> the CVAE's decoder (discrete rows fixed) -> ``TorchInverse``
(cell and each site's free parameters) -> the free variables of the pre-relaxation's
``Problem`` -> ``prerelax.batch.batch_loss`` (distance of the atoms' power spectra to
the target environment's).  A latent optimiser moves ``z`` along its gradient; the
discrete row, its Wyckoff positions and so the space group stay as they are.

The problems are built once, from the rows decoded at the starting latent vectors
(the atoms' symmetry and count depend on the discrete row only); a row that does not
decode there is left out with the reason (``LatentObjective.reasons``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .. import schema as S
from ..crystal.decode import DecodeError
from ..crystal.descriptor import SO3Params
from ..crystal.environment import Environment
from ..prerelax.batch import batch_loss, make_batch
from ..prerelax.problem import build_problem
from .cvae import CVAE
from .encoding import Encoder
from .torch_transform import TorchInverse


class LatentObjective:
    """Per-row pre-relaxation losses of the rows with discrete part ``codes`` decoded
    from latent vectors; the rows ``kept`` are those that decode at ``z0``."""

    def __init__(self, model: CVAE, encoder: Encoder, codes: np.ndarray, z0: torch.Tensor,
                 env: Environment, params: SO3Params | None = None, soft: bool = False):
        self.model, self.soft = model, soft
        self.inverse = TorchInverse(encoder, z0.device)
        self.disc = model.one_hot(codes).to(z0.device, z0.dtype)
        self.spg = model.catalogue.spgs(codes)
        self.wp = model.catalogue.wyckoff(codes)
        with torch.no_grad():
            rows = encoder.inverse_transform(self.features(z0).cpu().numpy())
        problems, self.kept, self.reasons = [], [], {}
        for i, row in enumerate(rows.to_dict("records")):
            try:
                problems.append(build_problem(row))
                self.kept.append(i)
            except DecodeError as exc:
                self.reasons[i] = str(exc)
        self.batch = make_batch(problems, [p.x0 for p in problems], env,
                                params or SO3Params(), z0.device)
        self.index = self._variable_index(problems)

    def features(self, z: torch.Tensor) -> torch.Tensor:
        """Feature rows decoded from ``z``: tanh scalars (no noise), mode blocks as the
        decoder's softmax (``soft``) or its raw logits (read by their argmax)."""
        raw = self.model.decode_latent(z, self.disc)
        cont = raw.clone()
        cont[:, self.model.scalars] = torch.tanh(raw[:, self.model.scalars])
        if self.soft:
            for idx in self.model.layout.groups:
                cont[:, idx] = torch.softmax(raw[:, idx], -1)
        return self.model.features(cont, self.disc)

    def _variable_index(self, problems: list[Any]) -> torch.Tensor:
        """Where each free variable of the batch is read from ``variables``' source:
        the symmetrised cells (B, 6) then the sites' free parameters (B, sites, 3)."""
        n, n_cell = len(self.spg), len(S.CELL)
        idx = []
        for i, p in zip(self.kept, problems):
            src = np.zeros(len(p.x0), int)
            for k in range(n_cell):
                if p.cell_var[k] >= 0:
                    src[p.cell_var[k]] = i * n_cell + k
            sites = np.flatnonzero(self.wp[i] >= 0)
            for s, k in enumerate(sites):
                for col in range(3):
                    if p.site_var[s, col] >= 0:
                        src[p.site_var[s, col]] = n * n_cell + (i * S.MAX_SITES + k) * 3 + col
            idx.append(src)
        return torch.as_tensor(np.concatenate(idx) if idx else np.zeros(0, int))

    def variables(self, z: torch.Tensor) -> torch.Tensor:
        """The batch's free variables (natural units) of the crystals decoded from ``z``."""
        rows = self.inverse.rows(self.features(z), self.spg, self.wp, self.soft)
        src = torch.cat([rows.sym_cell.reshape(-1), rows.free.reshape(-1)])
        return src[self.index.to(src.device)]

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        """Loss of each kept row, (len(kept),), differentiable in ``z`` (all rows')."""
        return batch_loss(self.batch, self.variables(z))
