"""The learned stage 1 of the two-stage model: a small VAE over the discrete one-hot
block (space group, Wyckoff indices, elements), trained with stage 2, whose draws
propose combinations the training table may not hold.

Its proposals go through the catalogue's check like the training combinations
(``Catalogue.add``), so every row drawn from them is a valid combination and every
proposal that is not is counted by its reason.  ``Stage1`` draws a row from the
training combinations or from the proposals, with probability ``1 - share`` and
``share``, each within the classes asked (no rejection).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .catalogue import Catalogue
from .classes import Classes
from .encoding import Span

SEED = 7          # the proposals' draws: the same model proposes the same combinations


class DiscreteVAE(nn.Module):
    """q(z | one-hots) and p(one-hots | z) over the blocks ``spans`` (local offsets)."""

    def __init__(self, spans: Sequence[Span], latent: int = 16, hidden: int = 128):
        super().__init__()
        self.spans = list(spans)
        width = sum(s.dim for s in spans)
        self.latent = latent
        self.enc = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 2 * latent))
        self.dec = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, width))

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of every block plus the KL divergence, per row."""
        mu, logvar = self.enc(x).chunk(2, dim=1)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        logits = self.dec(z)
        ce = logits.new_zeros(())
        for s in self.spans:
            block = slice(s.offset, s.offset + s.dim)
            ce = ce - (torch.log_softmax(logits[:, block], 1) * x[:, block]).sum()
        kld = -0.5 * torch.sum(1 + logvar - mu ** 2 - logvar.exp())
        return (ce + kld) / len(x)

    @torch.no_grad()
    def propose(self, n: int, generator: torch.Generator) -> np.ndarray:
        """``n`` combinations (rows of category indices) drawn from the prior."""
        z = torch.randn(n, self.latent, generator=generator)
        logits = self.dec(z.to(next(self.parameters()).device)).cpu()
        return np.stack([torch.multinomial(torch.softmax(logits[:, s.offset:s.offset + s.dim],
                                                         1), 1, generator=generator)[:, 0]
                         .numpy() for s in self.spans], 1)


class Stage1:
    """Draws of discrete rows: the training ``catalogue`` and, when ``share`` > 0, a
    second catalogue of the learned model's valid proposals (made on first use)."""

    def __init__(self, catalogue: Catalogue, net: DiscreteVAE, share: float, proposals: int):
        self.catalogue, self.net = catalogue, net
        self.share, self.proposals = share, proposals
        self._proposed: Catalogue | None = None

    def forget(self) -> None:
        """The network changed: its proposals are made again on next use."""
        self._proposed = None

    @property
    def proposed(self) -> Catalogue:
        """The catalogue of the network's valid proposals (invalid ones by reason)."""
        if self._proposed is None:
            c = self.catalogue
            self._proposed = Catalogue(c.columns, c.spg, c.wp, c.el, c.max_atoms,
                                       c.temperature)
            self.net.eval()
            self._proposed.add(self.net.propose(self.proposals,
                                                torch.Generator().manual_seed(SEED)))
            self.net.train()
        return self._proposed

    def sample(self, n: int, generator: torch.Generator, classes: Classes | None = None
               ) -> np.ndarray:
        """``n`` combinations within ``classes``: each from the proposals with
        probability ``share`` (all from one source when the other has none there)."""
        if self.share <= 0:
            return self.catalogue.sample(n, generator, classes)
        sources = [self.catalogue, self.proposed]
        usable = [s for s in sources if _has(s, classes)]
        if len(usable) < 2:
            return (usable or sources)[0].sample(n, generator, classes)
        learned = torch.rand(n, generator=generator).numpy() < self.share
        out = np.zeros((n, len(self.catalogue.names)), np.int64)
        for source, rows in ((self.catalogue, ~learned), (self.proposed, learned)):
            if rows.any():
                out[rows] = source.sample(int(rows.sum()), generator, classes)
        return out

    def report(self) -> dict[str, Any]:
        """What the network proposes: valid combinations, those new to the training
        table, and the invalid proposals by reason."""
        seen = {tuple(r) for r in self.catalogue.codes.tolist()}
        p = self.proposed
        return {"proposals": self.proposals, "valid": int(p.counts.sum()),
                "combinations": len(p.codes),
                "new_combinations": sum(tuple(r) not in seen for r in p.codes.tolist()),
                "rejected": _by_kind(p.rejected)}


def _by_kind(rejected: dict[str, int]) -> dict[str, int]:
    """Rejection counts by kind of reason (numbers and labels as ``N``)."""
    out: dict[str, int] = {}
    for reason, n in rejected.items():
        kind = re.sub(r"\b\d+[a-z]?\b", "N", reason)
        out[kind] = out.get(kind, 0) + n
    return out


def _has(catalogue: Catalogue, classes: Classes | None) -> bool:
    try:
        catalogue.probabilities(classes)
    except ValueError:
        return False
    return True
