"""A two-stage model: the discrete part of a row (stage 1) from a ``Catalogue`` of the
training combinations and, for a share ``stage1_share`` of rows, from the valid
proposals of a small VAE over the one-hots (``stage1``); then its continuous part
from a conditional VAE given the discrete part (stage 2).

Stage 2 is the TVAE of ``vae`` with the discrete one-hots as a condition:
q(z | continuous, discrete) and p(continuous | z, discrete), over the features of
the encoder's mixture columns only (a scalar and a mode block per cell parameter and
coordinate, in the encoder's normalised space, so ``Encoder.inverse_transform`` reads
its rows and ``TorchInverse`` maps them to cells and sites differentiably).  In the
generator form of sites the coordinates a position fixes are constants of the
discrete row, so the condition carries them.

Sampling within classes (``sample_in``) restricts stage 1's support: every row drawn
is in the classes asked, at the cost of unrestricted sampling.  ``decode_latent``
is the decoder alone, for a caller that moves the latent vector of fixed discrete
rows (``steer``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .. import schema as S
from .base import ChunkStream, Layout
from .catalogue import Catalogue
from .classes import Classes
from .encoding import Span
from .stage1 import DiscreteVAE, Stage1
from .vae import DEFAULTS as VAE_DEFAULTS
from .vae import VAE, Decoder, Encoder

# stage 1: training combinations tempered by ``temperature``; a share ``stage1_share``
# of rows from the learned model's valid proposals (``proposals`` draws of it)
DEFAULTS: dict[str, Any] = {**VAE_DEFAULTS, "temperature": 1.0, "max_atoms": 2000,
                            "stage1_share": 0.0, "proposals": 20_000}


class CVAE(VAE):
    kind = "cvae"

    def __init__(self, spans: Sequence[Span], width: int, device: torch.device | None = None,
                 discrete: dict[str, list[Any]] | None = None, **hparams: Any):
        """``discrete``: the encoder's discrete columns and their categories (not
        hyper-parameters: ``models.build`` reads them from the encoder)."""
        if not discrete or not any(s.kind == "scalar" for s in spans):
            raise ValueError("a cvae needs the encoder's \"cont\" mode and its discrete columns")
        self.discrete = discrete
        super().__init__(spans, width, device, **{**DEFAULTS, **hparams})
        self.opt.add_param_group({"params": list(self.stage1.net.parameters())})

    def _build(self, hp: dict[str, Any]) -> None:
        """Networks over the continuous features given the discrete ones; stage 1."""
        disc = [s for s in self.spans if s.column in self.discrete]
        cont = [s for s in self.spans if s.column not in self.discrete]
        self.disc_spans = disc
        idx = lambda spans: torch.as_tensor(  # noqa: E731
            [i for s in spans for i in range(s.offset, s.offset + s.dim)], device=self.device)
        self.disc_idx, self.cont_idx = idx(disc), idx(cont)
        n_disc, n_cont = len(self.disc_idx), len(self.cont_idx)
        latent = hp["embedding_dim"]
        self.enc = Encoder(n_cont + n_disc, hp["compress_dims"], latent).to(self.device)
        self.dec = Decoder(latent + n_disc, hp["decompress_dims"], n_cont).to(self.device)
        self.layout = Layout(_within(cont), self.device)
        self.scalars = self.layout.scalars
        self.catalogue = Catalogue(self.discrete, S.SPG, [c for c in S.WP if c in self.discrete],
                                   [c for c in S.EL if c in self.discrete], hp["max_atoms"],
                                   hp["temperature"])
        self.stage1 = Stage1(self.catalogue, DiscreteVAE(_within(disc)).to(self.device),
                             hp["stage1_share"], hp["proposals"])

    # -- stage 1 ---------------------------------------------------------------------
    def codes(self, x: np.ndarray) -> np.ndarray:
        """The discrete part of feature rows as category indices, one per column."""
        return np.stack([x[:, s.offset:s.offset + s.dim].argmax(1) for s in self.disc_spans], 1)

    def one_hot(self, codes: np.ndarray) -> torch.Tensor:
        """Discrete feature block (n, n_disc) of category indices ``codes``."""
        out = torch.zeros(len(codes), len(self.disc_idx), device=self.device)
        start = 0
        for i, s in enumerate(self.disc_spans):
            out[torch.arange(len(codes)), start + torch.as_tensor(codes[:, i])] = 1.0
            start += s.dim
        return out

    def prepare(self, stream: ChunkStream) -> None:
        """Stage 1 from one pass over the data: the discrete combinations and counts."""
        for s, e in stream.bounds():
            self.catalogue.add(self.codes(np.asarray(stream.array[s:e])))

    # -- stage 2 ---------------------------------------------------------------------
    def _loss(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cont, disc = x[:, self.cont_idx], x[:, self.disc_idx]
        mu, logvar = self.enc(torch.cat([cont, disc], 1))
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        recon, kld = self._nll_kld(self.dec(torch.cat([z, disc], 1)), cont, mu, logvar)
        return recon + self.stage1.net.loss(disc), kld    # both stages learn together

    def train_epoch(self, stream: ChunkStream, rng: np.random.Generator) -> dict[str, float]:
        losses = super().train_epoch(stream, rng)
        self.stage1.forget()
        return losses

    def notes(self) -> dict[str, Any]:
        """Stage 1's learned proposals (valid, new, rejected by reason) when it uses them."""
        return {"stage1": self.stage1.report()} if self.stage1.share > 0 else {}

    def decode_latent(self, z: torch.Tensor, disc: torch.Tensor) -> torch.Tensor:
        """Raw decoder output (n, n_cont) for latent vectors ``z`` and discrete block
        ``disc``, differentiable: tanh of it gives the scalars, softmax of a mode
        block its probabilities."""
        return self.dec(torch.cat([z, disc.to(z.dtype)], 1))

    def features(self, cont: torch.Tensor, disc: torch.Tensor) -> torch.Tensor:
        """Whole feature rows (n, width) from continuous and discrete blocks."""
        out = cont.new_zeros(len(cont), self.width)
        out[:, self.cont_idx] = cont
        out[:, self.disc_idx] = disc.to(cont.dtype)
        return out

    @torch.no_grad()
    def sample_in(self, n: int, generator: torch.Generator, classes: Classes | None
                  ) -> np.ndarray:
        """``n`` rows within ``classes`` (``None``: any): stage 1 draws the discrete
        part from the combinations in the classes, stage 2 the rest."""
        self.dec.eval()
        disc = self.one_hot(self.stage1.sample(n, generator, classes))
        z = torch.randn(n, self.hparams["embedding_dim"], generator=generator).to(self.device)
        cont = self._outputs(self.decode_latent(z, disc), generator)
        return self.features(cont, disc).cpu().numpy()

    def sample(self, n: int, generator: torch.Generator,
               condition: Sequence[int] | None = None) -> np.ndarray:
        """``n`` rows; ``condition``: space-group categories to draw from."""
        classes = None
        if condition is not None:
            cats = self.discrete[S.SPG]
            classes = Classes.of(spgs=[int(cats[i]) for i in condition])
        return self.sample_in(n, generator, classes)

    def state_dict(self, optimizer: bool = True) -> dict[str, Any]:
        return {**super().state_dict(optimizer), "catalogue": self.catalogue.state_dict(),
                "stage1": self.stage1.net.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = dict(state)
        self.catalogue.load_state_dict(state.pop("catalogue"))
        self.stage1.net.load_state_dict(state.pop("stage1"))
        self.stage1.forget()
        super().load_state_dict(state)


def _within(spans: Sequence[Span]) -> list[Span]:
    """``spans`` with offsets within the block they make when taken together."""
    out, offset = [], 0
    for s in spans:
        out.append(Span(s.column, s.kind, offset, s.dim))
        offset += s.dim
    return out
