"""Tabular generative models (CTGAN-style GAN, TVAE-style VAE) and their training loop.

A model sees only the encoder's layout (``encode.Span`` blocks: tanh scalars and
one-hot blocks) and a stream of feature chunks, so it trains from a Zarr array of any
size holding one chunk in memory at a time.  ``fit`` runs the epochs, logs the losses
(``losses.json``, ``losses.png``) and after each epoch the share of rows drawn that
decode as valid crystals, keeps the best epoch (``best.pt``) and a resumable checkpoint
(``last.pt``); ``load`` gives back a model and its encoder for sampling.  A model's
directory holds JSON (``config.json``: hyper-parameters and encoder) and checkpoints
of tensors and plain data, read with ``torch.load(weights_only=True)``: a model file
from someone else's run is data, and loading it never runs code.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import codec
from ..encode import Encoder, Span

log = logging.getLogger("legodask")

KINDS = ("gan", "vae")
CONFIG, BEST, LAST, LOSSES, PLOT = "config.json", "best.pt", "last.pt", "losses.json", "losses.png"
SHARES = ("valid", "valid_no_distance")  # what ``validity`` logs after each epoch


def default_device() -> torch.device:
    """CUDA when this process sees a GPU, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class ChunkStream:
    """Feature rows from an array-like (Zarr or NumPy), one chunk of rows at a time,
    chunks in random order each epoch."""

    def __init__(self, array: Any, chunk_rows: int | None = None):
        self.array = array
        self.n = int(array.shape[0])
        chunks = getattr(array, "chunks", None)
        self.chunk_rows = int(chunk_rows or (chunks[0] if chunks else self.n))

    def bounds(self) -> list[tuple[int, int]]:
        return [(s, min(s + self.chunk_rows, self.n)) for s in range(0, self.n, self.chunk_rows)]

    def epoch(self, rng: np.random.Generator) -> Iterator[np.ndarray]:
        b = self.bounds()
        for i in rng.permutation(len(b)):
            s, e = b[i]
            yield np.asarray(self.array[s:e], dtype=np.float32)

    def column_counts(self, span: Span) -> np.ndarray:
        """How many rows have each category of a one-hot span (one pass over chunks)."""
        counts = np.zeros(span.dim)
        for s, e in self.bounds():
            block = np.asarray(self.array[s:e, span.offset:span.offset + span.dim])
            counts += np.bincount(block.argmax(1), minlength=span.dim)
        return counts


class Layout:
    """The encoder's spans as index tensors, so that activations and losses over all
    one-hot blocks are a few tensor operations, not a loop over columns: blocks of
    the same width are gathered together into a ``(rows, blocks, width)`` tensor."""

    def __init__(self, spans: Sequence[Span], device: torch.device):
        self.scalars = torch.as_tensor([s.offset for s in spans if s.kind == "scalar"],
                                       dtype=torch.long, device=device)
        widths = sorted({s.dim for s in spans if s.kind == "onehot"})
        self.groups = [torch.as_tensor([list(range(s.offset, s.offset + s.dim)) for s in spans
                                        if s.kind == "onehot" and s.dim == w], device=device)
                       for w in widths]

    def activate(self, raw: torch.Tensor, tau: float = 0.2,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Generator output -> features: tanh for scalars, Gumbel-softmax (noise from
        ``generator`` when given) for one-hots."""
        out = torch.empty_like(raw)
        out[:, self.scalars] = torch.tanh(raw[:, self.scalars])
        for idx in self.groups:
            u = torch.rand(raw.shape[0], *idx.shape, generator=generator).to(raw.device)
            gumbel = -torch.log((-torch.log(u.clamp_min(1e-20))).clamp_min(1e-20))
            out[:, idx] = torch.softmax((raw[:, idx] + gumbel) / tau, dim=-1)
        return out

    def cross_entropy(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Summed cross-entropy of every one-hot block of ``logits`` against the
        categories set in ``target``."""
        loss = logits.new_zeros(())
        for idx in self.groups:
            logp = torch.log_softmax(logits[:, idx], dim=-1)
            loss = loss - logp.gather(-1, target[:, idx].argmax(-1, keepdim=True)).sum()
        return loss


class TabularModel(ABC):
    """What the training loop and the sampler need of a model."""

    kind: str
    score: str  # the logged value that picks the best epoch
    maximise = False  # whether its highest value does, not its lowest

    def __init__(self, spans: Sequence[Span], width: int, device: torch.device | None = None,
                 **hparams: Any):
        self.spans = list(spans)
        self.width = width
        self.device = device or default_device()
        self.hparams = hparams

    @abstractmethod
    def prepare(self, stream: ChunkStream) -> None:
        """Look at the data once before the first epoch (category frequencies)."""

    @abstractmethod
    def train_epoch(self, stream: ChunkStream, rng: np.random.Generator) -> dict[str, float]:
        """One pass over the data; mean losses."""

    @abstractmethod
    def sample(self, n: int, generator: torch.Generator,
               condition: Sequence[int] | None = None) -> np.ndarray:
        """``n`` feature rows; ``condition``: categories (indices) of the conditional
        column to draw from (models without one ignore it; the sampler filters)."""

    @abstractmethod
    def state_dict(self, optimizer: bool = True) -> dict[str, Any]: ...

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "hparams": self.hparams}


def build(kind: str, encoder: Encoder, device: torch.device | None = None, seed: int = 0,
          **hparams: Any) -> TabularModel:
    """A new model of ``kind`` for an encoder's layout, its weights drawn with ``seed``."""
    torch.manual_seed(seed)
    if kind == "gan":
        from .gan import GAN

        return GAN(encoder.spans, encoder.width, device,
                   cond=encoder.span("spg"), **hparams)
    if kind == "vae":
        from .vae import VAE

        return VAE(encoder.spans, encoder.width, device, **hparams)
    raise ValueError(f"model kind must be one of {KINDS}, not {kind!r}")


def _save(obj: Any, path: Path) -> None:
    """Write a checkpoint atomically; ``obj`` holds only tensors, numbers, strings,
    lists and dicts, all that ``_load`` accepts."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _load(path: Path, device: torch.device) -> dict[str, Any]:
    """A checkpoint written by ``_save``, read with ``weights_only``: a file that holds
    anything but tensors and plain data (a pickled object, which could run code when
    loaded) is refused with a ``ValueError``, never executed."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(f"{path} holds more than tensors and plain data, and is not "
                         f"loaded: loading it could run code; retrain the model (legodask "
                         f"train) or take the run from a source you trust") from exc


def _write_json(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def validity(model: TabularModel, encoder: Encoder, n: int, seed: int = 0) -> dict[str, float]:
    """Shares of ``n`` rows drawn (the same noise at every call) that decode as valid
    crystals, and that would without the distance check (sites on their positions,
    atoms overlapping): a measure that compares across epochs, where a GAN's losses,
    against a discriminator that changes, do not."""
    x = model.sample(n, torch.Generator().manual_seed(seed))
    out = codec.decode_frame(encoder.inverse_transform(x))
    valid = out["valid_xtal"]
    return dict(zip(SHARES, (float(valid.mean()),
                             float((valid | codec.only_overlapping(out)).mean()))))


def best_epoch(history: list[dict[str, float]], model: TabularModel) -> dict[str, float] | None:
    """The epoch of ``history`` with the best ``model.score``; the last epoch when none
    has one (a GAN trained without validity checks)."""
    scored = [h for h in history if np.isfinite(h.get(model.score, np.nan))]
    if not scored:
        return history[-1] if history else None
    return (max if model.maximise else min)(scored, key=lambda h: h[model.score])


def fit(model: TabularModel, encoder: Encoder, stream: ChunkStream, epochs: int, out: Path,
        resume: bool = True, seed: int = 0, check_rows: int = 1000) -> list[dict[str, float]]:
    """Train ``model`` for ``epochs`` epochs in all, saving into ``out``; with ``resume``
    a checkpoint there of the same configuration (model and encoder) is continued.
    After each epoch ``check_rows`` rows are drawn and decoded (``validity``; 0: none).
    Returns the loss history."""
    out.mkdir(parents=True, exist_ok=True)
    config = json.loads(json.dumps({**model.config(), "encoder": encoder.to_dict()}))
    same = (out / CONFIG).exists() and json.loads((out / CONFIG).read_text()) == config
    if resume and (out / LAST).exists() and not same:
        log.warning("%s holds a model of another configuration: training anew", out)
    _write_json(config, out / CONFIG)
    history: list[dict[str, float]] = []
    if resume and same and (out / LAST).exists():
        ckpt = _load(out / LAST, model.device)
        model.load_state_dict(ckpt["model"])
        history = ckpt["history"]
        torch.set_rng_state(ckpt["torch_rng"].cpu())  # map_location may have moved it
        rng = np.random.default_rng()
        rng.bit_generator.state = ckpt["numpy_rng"]
        log.info("resuming %s at epoch %d", out, len(history))
    else:
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        model.prepare(stream)
    for epoch in range(len(history), epochs):
        t = time.perf_counter()
        losses = {k: float(v) for k, v in model.train_epoch(stream, rng).items()}
        losses["seconds"] = time.perf_counter() - t  # the training alone, not the check
        if check_rows:
            losses.update(validity(model, encoder, check_rows, seed))
        losses["epoch"] = epoch
        history.append(losses)
        if best_epoch(history, model) is losses:
            _save({"model": model.state_dict(optimizer=False), "epoch": epoch}, out / BEST)
        _save({"model": model.state_dict(), "history": history, "torch_rng": torch.get_rng_state(),
               "numpy_rng": rng.bit_generator.state}, out / LAST)
        _write_json(history, out / LOSSES)
        log.debug("epoch %d: %s", epoch, losses)
    plot_losses(history, out / PLOT, model.kind)
    return history


def plot_losses(history: list[dict[str, float]], path: Path, title: str) -> None:
    """Loss curves per epoch as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    keys = list(dict.fromkeys(k for h in history for k in h if k not in ("epoch", "seconds")))
    shares = [k for k in keys if k in SHARES]
    axes = {k: ax for k in keys}
    if shares:
        right = ax.twinx()
        right.set_ylabel("share of rows drawn")
        right.set_ylim(0, 1)
        axes.update({k: right for k in shares})
    for i, k in enumerate(keys):
        pts = [(h["epoch"], h[k]) for h in history if k in h]
        axes[k].plot(*zip(*pts), label=k, color=f"C{i}", ls=":" if k in shares else "-")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title)
    if keys:
        fig.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def load(model_dir: Path, device: torch.device | None = None) -> tuple[TabularModel, Encoder]:
    """The best epoch of a trained model and its encoder."""
    cfg = json.loads((model_dir / CONFIG).read_text())
    encoder = Encoder.from_dict(cfg["encoder"])
    model = build(cfg["kind"], encoder, device, **cfg["hparams"])
    model.load_state_dict(_load(model_dir / BEST, model.device)["model"])
    return model, encoder
