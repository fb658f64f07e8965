"""TVAE-style variational autoencoder over the encoded structure table.

Encoder 512-512 -> 128-d latent (mean, log-variance); decoder 512-512 -> features,
with a learnable per-feature sigma clamped to [0.01, 1].  Loss: Gaussian negative
log-likelihood of the tanh scalars plus cross-entropy of the one-hot blocks, times
``loss_factor``, plus the KL divergence; L2 regularisation as Adam weight decay;
Adam's learning rate 1e-3 as TVAE's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .base import ChunkStream, EpochMeans, Layout, TabularModel, descend
from .encoding import Span

DEFAULTS: dict[str, Any] = {
    "embedding_dim": 128, "compress_dims": (512, 512), "decompress_dims": (512, 512),
    "lr": 1e-3, "l2scale": 1e-5, "batch_size": 500, "loss_factor": 2.0,
}


def _mlp(d: int, dims: Sequence[int]) -> tuple[list[nn.Module], int]:
    layers: list[nn.Module] = []
    for h in dims:
        layers += [nn.Linear(d, h), nn.ReLU()]
        d = h
    return layers, d


class Encoder(nn.Module):
    def __init__(self, data_dim: int, dims: Sequence[int], latent: int):
        super().__init__()
        layers, d = _mlp(data_dim, dims)
        self.seq = nn.Sequential(*layers)
        self.mu, self.logvar = nn.Linear(d, latent), nn.Linear(d, latent)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.seq(x)
        return self.mu(h), self.logvar(h)


class Decoder(nn.Module):
    def __init__(self, latent: int, dims: Sequence[int], data_dim: int):
        super().__init__()
        layers, d = _mlp(latent, dims)
        self.seq = nn.Sequential(*layers, nn.Linear(d, data_dim))
        self.sigma = nn.Parameter(torch.ones(data_dim) * 0.1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.seq(z)


class VAE(TabularModel):
    kind = "vae"
    score = "loss"

    def __init__(self, spans: Sequence[Span], width: int, device: torch.device | None = None,
                 **hparams: Any):
        hp = {**DEFAULTS, **hparams}
        super().__init__(spans, width, device, **hp)
        self._build(hp)
        self.opt = torch.optim.Adam([*self.enc.parameters(), *self.dec.parameters()],
                                    lr=hp["lr"], weight_decay=hp["l2scale"])

    def _build(self, hp: dict[str, Any]) -> None:
        """The networks, and the layout of what the decoder reconstructs: whole rows."""
        self.enc = Encoder(self.width, hp["compress_dims"], hp["embedding_dim"]).to(self.device)
        self.dec = Decoder(hp["embedding_dim"], hp["decompress_dims"], self.width).to(self.device)
        self.layout = Layout(self.spans, self.device)
        self.scalars = self.layout.scalars

    def prepare(self, stream: ChunkStream) -> None:
        """Nothing to look at: the VAE is unconditional."""

    def _loss(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.enc(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self._nll_kld(self.dec(z), x, mu, logvar)

    def _nll_kld(self, recon: torch.Tensor, x: torch.Tensor, mu: torch.Tensor,
                 logvar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstruction loss of ``x`` (times ``loss_factor``) and KL divergence, per row."""
        n = x.size(0)
        sigma = self.dec.sigma[self.scalars]
        diff = x[:, self.scalars] - torch.tanh(recon[:, self.scalars])
        nll = ((diff ** 2 / 2 / sigma ** 2).sum() + torch.log(sigma).sum() * n
               + self.layout.cross_entropy(recon, x))
        kld = -0.5 * torch.sum(1 + logvar - mu ** 2 - logvar.exp())
        return nll * self.hparams["loss_factor"] / n, kld / n

    def train_epoch(self, stream: ChunkStream, rng: np.random.Generator) -> dict[str, float]:
        bs = self.hparams["batch_size"]
        self.enc.train()
        self.dec.train()
        means = EpochMeans("loss", "recon", "kld")
        for chunk in stream.epoch(rng):
            data = torch.from_numpy(chunk).to(self.device)
            perm = torch.as_tensor(rng.permutation(len(chunk)), device=self.device)
            for s in range(0, len(chunk), bs):
                recon, kld = self._loss(data[perm[s:s + bs]])
                loss = recon + kld
                descend(self.opt, loss)
                self.dec.sigma.data.clamp_(0.01, 1.0)
                means.add(loss=loss, recon=recon, kld=kld)
        return means.means()

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator,
               condition: Sequence[int] | None = None) -> np.ndarray:
        """``n`` rows from the prior; scalars get the learnt sigma as noise (as TVAE).
        The VAE is unconditional: ``condition`` is left to the caller to filter by."""
        self.dec.eval()
        z = torch.randn(n, self.hparams["embedding_dim"], generator=generator).to(self.device)
        return self._outputs(self.dec(z), generator).cpu().numpy()

    def _outputs(self, raw: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Decoder output -> features: tanh, and the learnt sigma as noise on scalars."""
        out = torch.tanh(raw)
        noise = torch.randn(len(raw), len(self.scalars), generator=generator).to(self.device)
        sigma = self.dec.sigma[self.scalars]
        out[:, self.scalars] = (out[:, self.scalars] + noise * sigma).clamp(-1, 1)
        return out

    def state_dict(self, optimizer: bool = True) -> dict[str, Any]:
        state = {"enc": self.enc.state_dict(), "dec": self.dec.state_dict()}
        if optimizer:
            state["opt"] = self.opt.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.enc.load_state_dict(state["enc"])
        self.dec.load_state_dict(state["dec"])
        if "opt" in state:
            self.opt.load_state_dict(state["opt"])
