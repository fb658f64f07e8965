"""Tabular generative models (CTGAN-style GAN, TVAE-style VAE, a two-stage conditional
VAE): ``build`` a new one for an encoder's layout, ``load`` a trained one for sampling.

Modules: ``encoding`` (table rows <-> features), ``base`` (what a model provides),
``gan``, ``vae`` and ``cvae`` (with its stage 1, ``catalogue``, and the classes a sample
may be restricted to, ``classes``), ``torch_transform`` (the differentiable inverse of
the continuous encoding), ``steer`` (the pre-relaxation loss of decoded latent
vectors), ``latent`` (latent steps down that loss), ``optimize`` (rounds of them and of
direct optimisation), ``training`` (the loop), ``checkpoint`` (a model's files),
``plot`` (its loss curves) and ``sampling`` (rows drawn from a trained model).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import schema as S
from .. import store

if TYPE_CHECKING:
    import torch

    from .base import TabularModel
    from .encoding import Encoder

KINDS = ("gan", "vae", "cvae")


def build(kind: str, encoder: Encoder, device: torch.device | None = None, seed: int = 0,
          **hparams: Any) -> TabularModel:
    """A new model of ``kind`` for an encoder's layout, its weights drawn with ``seed``."""
    import torch

    torch.manual_seed(seed)
    if kind == "gan":
        from .gan import GAN

        return GAN(encoder.spans, encoder.width, device,
                   cond=encoder.span(S.SPG), **hparams)
    if kind == "vae":
        from .vae import VAE

        return VAE(encoder.spans, encoder.width, device, **hparams)
    if kind == "cvae":
        from .cvae import CVAE
        from .encoding import CONTINUOUS, Categorical

        discrete = {c.column: c.categories for c in encoder.columns
                    if isinstance(c, Categorical) and c.column not in CONTINUOUS}
        return CVAE(encoder.spans, encoder.width, device, discrete=discrete, **hparams)
    raise ValueError(f"model kind must be one of {KINDS}, not {kind!r}")


def load(model_dir: Path, device: torch.device | None = None) -> tuple[TabularModel, Encoder]:
    """The best epoch of a trained model and its encoder."""
    from . import checkpoint
    from .encoding import Encoder

    cfg = checkpoint.read_json(model_dir / store.MODEL_CONFIG)
    encoder = Encoder.from_dict(cfg["encoder"])
    model = build(cfg["kind"], encoder, device, **cfg["hparams"])
    model.load_state_dict(checkpoint.load(model_dir / store.MODEL_BEST, model.device)["model"])
    return model, encoder
