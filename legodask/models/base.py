"""What the training loop and the sampler need of a tabular model: ``TabularModel``,
the encoder's layout as index tensors (``Layout``) and the feature rows as a stream
of chunks (``ChunkStream``), so that a model trains from a Zarr array of any size
holding one chunk in memory at a time."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .encoding import Span

if TYPE_CHECKING:
    from .classes import Classes

class EpochMeans:
    """The mean of each named loss over an epoch's steps (what ``train_epoch``
    returns); a name never added stays 0."""

    def __init__(self, *names: str) -> None:
        self.sums = dict.fromkeys(names, 0.0)
        self.steps = 0

    def add(self, **losses: torch.Tensor) -> None:
        for name, value in losses.items():
            self.sums[name] = self.sums.get(name, 0.0) + value.item()
        self.steps += 1

    def means(self) -> dict[str, float]:
        return {k: v / max(self.steps, 1) for k, v in self.sums.items()}


def descend(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """One step of ``optimizer`` down ``loss``."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


# What a validity check after each epoch logs: the shares of rows drawn that decode
# as valid crystals (``sampling.validity``); plotted on their own axis.
SHARES = ("valid", "valid_no_distance")


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

    def sample_in(self, n: int, generator: torch.Generator, classes: Classes
                  ) -> np.ndarray | None:
        """``n`` feature rows all within ``classes``, drawn without rejection; ``None``
        from a model that cannot (the sampler then keeps the rows that are)."""
        return None

    @abstractmethod
    def state_dict(self, optimizer: bool = True) -> dict[str, Any]: ...

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def notes(self) -> dict[str, Any]:
        """What the training summary should say of the model beyond its losses."""
        return {}

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "hparams": self.hparams}
