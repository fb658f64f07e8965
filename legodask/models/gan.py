"""CTGAN-style conditional WGAN-GP over the encoded structure table.

Generator: noise (128) + condition -> residual FC-BN-ReLU blocks -> tanh scalars and
Gumbel-softmax one-hots.  Discriminator: PAC groups of rows, LeakyReLU 0.2, dropout,
gradient penalty.  The condition is one discrete column (the space group); training
by sampling draws a category with log-frequency weights and real rows of that
category, within the chunk of the stream being trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .base import ChunkStream, EpochMeans, Layout, TabularModel, descend
from .encoding import Span

DEFAULTS: dict[str, Any] = {
    "embedding_dim": 128, "generator_dim": (512, 512), "discriminator_dim": (256, 256),
    "pac": 10, "lr": 2e-4, "weight_decay": 1e-6, "batch_size": 500, "tau": 0.2,
    "gp_lambda": 10.0, "dropout": 0.5, "discriminator_steps": 1,
}


class Residual(nn.Module):
    """FC-BN-ReLU whose output is concatenated with its input."""

    def __init__(self, i: int, o: int):
        super().__init__()
        self.fc, self.bn = nn.Linear(i, o), nn.BatchNorm1d(o)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.relu(self.bn(self.fc(x))), x], dim=1)


class Generator(nn.Module):
    def __init__(self, in_dim: int, dims: Sequence[int], out_dim: int):
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for h in dims:
            layers.append(Residual(d, h))
            d += h
        layers.append(nn.Linear(d, out_dim))
        self.seq = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class Discriminator(nn.Module):
    """Scores groups of ``pac`` rows together (PacGAN), against mode collapse."""

    def __init__(self, in_dim: int, dims: Sequence[int], pac: int, dropout: float):
        super().__init__()
        self.pac, self.pacdim = pac, in_dim * pac
        layers: list[nn.Module] = []
        d = self.pacdim
        for h in dims:
            layers += [nn.Linear(d, h), nn.LeakyReLU(0.2), nn.Dropout(dropout)]
            d = h
        layers.append(nn.Linear(d, 1))
        self.seq = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x.reshape(-1, self.pacdim))

    def gradient_penalty(self, real: torch.Tensor, fake: torch.Tensor, lam: float) -> torch.Tensor:
        alpha = torch.rand(real.size(0) // self.pac, 1, 1, device=real.device)
        alpha = alpha.repeat(1, self.pac, real.size(1)).reshape(-1, real.size(1))
        mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
        grad = torch.autograd.grad(self(mixed).sum(), mixed, create_graph=True)[0]
        norm = grad.reshape(-1, self.pacdim).norm(2, dim=1)
        return ((norm - 1) ** 2).mean() * lam


class GAN(TabularModel):
    kind = "gan"
    score, maximise = "valid", True  # its losses do not compare across epochs

    def __init__(self, spans: Sequence[Span], width: int, device: torch.device | None = None,
                 cond: Span | None = None, **hparams: Any):
        hp = {**DEFAULTS, **hparams}
        super().__init__(spans, width, device, **hp)
        if hp["batch_size"] % hp["pac"]:
            raise ValueError(f"batch_size {hp['batch_size']} is not a multiple of pac {hp['pac']}")
        if cond is None:
            raise ValueError("the GAN needs a conditional one-hot column")
        self.cond = cond
        self.layout = Layout(spans, self.device)
        self.G = Generator(hp["embedding_dim"] + cond.dim, hp["generator_dim"], width).to(self.device)
        self.D = Discriminator(width + cond.dim, hp["discriminator_dim"], hp["pac"],
                               hp["dropout"]).to(self.device)
        opt = {"lr": hp["lr"], "betas": (0.5, 0.9), "weight_decay": hp["weight_decay"]}
        self.opt_g = torch.optim.Adam(self.G.parameters(), **opt)
        self.opt_d = torch.optim.Adam(self.D.parameters(), **opt)
        self.cond_counts = np.zeros(cond.dim)

    def prepare(self, stream: ChunkStream) -> None:
        self.cond_counts = stream.column_counts(self.cond)

    def _onehot(self, cats: np.ndarray) -> torch.Tensor:
        return F.one_hot(torch.as_tensor(cats, device=self.device), self.cond.dim).float()

    def _noise(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn(n, self.hparams["embedding_dim"], generator=generator).to(self.device)

    def train_epoch(self, stream: ChunkStream, rng: np.random.Generator) -> dict[str, float]:
        hp = self.hparams
        bs = hp["batch_size"]
        self.G.train()
        self.D.train()
        means = EpochMeans("loss_g", "loss_d", "penalty")
        for chunk in stream.epoch(rng):
            data = torch.from_numpy(chunk).to(self.device)
            cats = chunk[:, self.cond.offset:self.cond.offset + self.cond.dim].argmax(1)
            order = np.argsort(cats, kind="stable")
            counts = np.bincount(cats, minlength=self.cond.dim)
            starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
            p = np.log1p(counts)
            p /= p.sum()

            def rows_of(c: np.ndarray) -> torch.Tensor:
                """Real rows, one of category ``c[i]`` for each i (training by sampling)."""
                pick = starts[c] + (rng.random(len(c)) * counts[c]).astype(int)
                return data[torch.as_tensor(order[pick], device=self.device)]

            for _ in range(max(1, len(chunk) // bs)):
                for _ in range(hp["discriminator_steps"]):
                    c1 = rng.choice(self.cond.dim, size=bs, p=p)
                    perm = rng.permutation(bs)
                    real = rows_of(c1[perm])
                    oh1 = self._onehot(c1)
                    fake = self.layout.activate(self.G(torch.cat([self._noise(bs), oh1], 1)),
                                                hp["tau"])
                    fake_cat = torch.cat([fake, oh1], 1)
                    real_cat = torch.cat([real, oh1[perm]], 1)
                    loss_d = self.D(fake_cat).mean() - self.D(real_cat).mean()
                    pen = self.D.gradient_penalty(real_cat, fake_cat, hp["gp_lambda"])
                    descend(self.opt_d, loss_d + pen)
                c1 = rng.choice(self.cond.dim, size=bs, p=p)
                oh1 = self._onehot(c1)
                raw = self.G(torch.cat([self._noise(bs), oh1], 1))
                fake = self.layout.activate(raw, hp["tau"])
                ce = F.cross_entropy(raw[:, self.cond.offset:self.cond.offset + self.cond.dim],
                                     torch.as_tensor(c1, device=self.device))
                loss_g = -self.D(torch.cat([fake, oh1], 1)).mean() + ce
                descend(self.opt_g, loss_g)
                means.add(loss_g=loss_g, loss_d=loss_d, penalty=pen)
        return means.means()

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator,
               condition: Sequence[int] | None = None) -> np.ndarray:
        """``n`` rows; the condition's category is drawn with the training frequencies,
        among the categories ``condition`` when given."""
        self.G.eval()
        weights = torch.as_tensor(self.cond_counts, dtype=torch.float64)
        if condition is not None:
            mask = torch.zeros_like(weights)
            mask[list(condition)] = 1
            weights = weights * mask
        if not weights.sum() > 0:
            raise ValueError("no training row has a category of the condition")
        cats = torch.multinomial(weights, n, replacement=True, generator=generator).numpy()
        z = self._noise(n, generator)
        raw = self.G(torch.cat([z, self._onehot(cats)], 1))
        return self.layout.activate(raw, self.hparams["tau"], generator).cpu().numpy()

    def state_dict(self, optimizer: bool = True) -> dict[str, Any]:
        state = {"G": self.G.state_dict(), "D": self.D.state_dict(),
                 "cond_counts": self.cond_counts.tolist()}
        if optimizer:
            state.update(opt_g=self.opt_g.state_dict(), opt_d=self.opt_d.state_dict())
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.G.load_state_dict(state["G"])
        if "D" in state:  # a file for sampling alone may carry the generator only
            self.D.load_state_dict(state["D"])
        self.cond_counts = np.asarray(state["cond_counts"], float)
        if "opt_g" in state:
            self.opt_g.load_state_dict(state["opt_g"])
            self.opt_d.load_state_dict(state["opt_d"])
