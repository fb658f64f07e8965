"""Rows drawn from a trained model: the sample stage's kernel (``sample_partition``:
one partition, its own seed, decoded batch by batch) and the validity check that
training logs after each epoch.

Each partition loads the model (once per worker process), draws its share with its
own seed (from the run's seed and the partition index, so a partition is the same
whichever worker draws it and whenever), turns features into table rows and decodes
them (``valid_xtal``, ``error``) batch by batch, so that no process holds more than
one partition.  Sampling can be restricted to a set of space groups: the GAN is
conditioned on them, and rows of other groups are drawn again.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import schema as S
from .. import store
from ..crystal.decode import only_overlapping
from ..crystal.frame import decode_frame
from . import load
from .base import SHARES, TabularModel
from .encoding import Encoder

log = logging.getLogger("legodask")


@functools.lru_cache(maxsize=4)
def _load(model_dir: str, stamp: float) -> tuple[TabularModel, Encoder]:
    """A model, cached per worker process (``stamp``: its file's mtime)."""
    return load(Path(model_dir))


def part_seed(seed: int, part: int) -> int:
    """The seed of partition ``part`` of a sample drawn with ``seed``."""
    return int(np.random.SeedSequence([seed, part]).generate_state(1)[0])


def draw(model: TabularModel, encoder: Encoder, n: int, generator: torch.Generator,
         spgs: Sequence[int] | None = None, max_rounds: int = 100) -> pd.DataFrame:
    """``n`` table rows (not yet decoded) from a model, of space groups ``spgs`` if given.

    Rows of other groups (a VAE, or a GAN ignoring its condition) are drawn again, at
    most ``max_rounds`` times; fewer rows come back when the model rarely makes them.
    """
    cond = None
    if spgs is not None:
        cats = encoder.categories(S.SPG)
        cond = [cats.index(s) for s in spgs if s in cats]
        if not cond:
            raise ValueError(f"no training row has space group {sorted(spgs)}")
    frames, got = [], 0
    for _ in range(max_rounds):
        df = encoder.inverse_transform(model.sample(n - got, generator, cond))
        if spgs is not None:
            df = df[df[S.SPG].isin(list(spgs))]
        frames.append(df)
        got += len(df)
        if got >= n:
            break
    if got < n:
        log.warning("only %d of %d rows of space groups %s after %d rounds", got, n,
                    sorted(spgs or []), max_rounds)
    return pd.concat(frames, ignore_index=True).iloc[:n]


def sample_partition(model_dir: str, name: str, n: int, seed: int, part: int,
                     spgs: Sequence[int] | None = None, batch_rows: int = 10_000,
                     min_distance: float = 0.6) -> pd.DataFrame:
    """Partition ``part`` of a sample: ``n`` decoded rows, ids ``<name>-<part>-<i>``
    (atoms closer than ``min_distance`` Å make a row invalid)."""
    stamp = (Path(model_dir) / store.MODEL_BEST).stat().st_mtime
    model, encoder = _load(model_dir, stamp)
    generator = torch.Generator().manual_seed(part_seed(seed, part))
    frames = []
    for start in range(0, n, batch_rows):
        df = draw(model, encoder, min(batch_rows, n - start), generator, spgs)
        df[S.ID] = [f"{name}-{part}-{i}" for i in range(start, start + len(df))]
        df[S.SOURCE] = name
        frames.append(decode_frame(df, min_distance=min_distance))
    if not frames:
        return S.empty_frame()
    return pd.concat(frames, ignore_index=True)


def validity(model: TabularModel, encoder: Encoder, n: int, seed: int = 0) -> dict[str, float]:
    """Shares of ``n`` rows drawn (the same noise at every call) that decode as valid
    crystals, and that would without the distance check (sites on their positions,
    atoms overlapping): a measure that compares across epochs, where a GAN's losses,
    against a discriminator that changes, do not."""
    x = model.sample(n, torch.Generator().manual_seed(seed))
    out = decode_frame(encoder.inverse_transform(x))
    valid = out[S.VALID_XTAL]
    return dict(zip(SHARES, (float(valid.mean()),
                             float((valid | only_overlapping(out)).mean()))))
