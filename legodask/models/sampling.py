"""Rows drawn from a trained model: the sample stage's kernel (``sample_partition``:
one partition, its own seed, decoded batch by batch) and the validity check that
training logs after each epoch.

Each partition loads the model (once per worker process), draws its share with its
own seed (from the run's seed and the partition index, so a partition is the same
whichever worker draws it and whenever), turns features into table rows and decodes
them (``valid_xtal``, ``error``) batch by batch, so that no process holds more than
one partition.  Sampling can be restricted to classes (``Classes``: space groups,
crystal systems, atom counts): the two-stage model draws within them directly; the
GAN is conditioned on their space groups, and rows outside them are drawn again.
"""

from __future__ import annotations

import functools
import logging
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
from .classes import Classes
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
         classes: Classes | None = None, max_rounds: int = 100) -> pd.DataFrame:
    """``n`` table rows (not yet decoded) from a model, within ``classes`` if given.

    A model that samples within classes (``sample_in``) draws them directly.  For the
    others, a GAN is conditioned on the classes' space groups, and rows outside the
    classes are drawn again, at most ``max_rounds`` times; fewer rows come back when
    the model rarely makes them.
    """
    if classes is not None:
        x = model.sample_in(n, generator, classes)
        if x is not None:
            return encoder.inverse_transform(x)
    cond = None
    if classes is not None:
        cats = encoder.categories(S.SPG)
        cond = [i for i, s in enumerate(cats) if classes.allows_spg(np.array([s]))[0]]
        if not cond:
            raise ValueError(f"no training row has {classes.describe()}")
    frames, got = [], 0
    for _ in range(max_rounds):
        df = encoder.inverse_transform(model.sample(n - got, generator, cond))
        if classes is not None:
            df = df[classes.allows_rows(df)]
        frames.append(df)
        got += len(df)
        if got >= n:
            break
    if got < n:
        log.warning("only %d of %d rows of %s after %d rounds", got, n,
                    classes.describe() if classes else "any class", max_rounds)
    return pd.concat(frames, ignore_index=True).iloc[:n]


def sample_partition(model_dir: str, name: str, n: int, seed: int, part: int,
                     classes: Classes | None = None, batch_rows: int = 10_000,
                     min_distance: float = 0.6, stage1_share: float | None = None
                     ) -> pd.DataFrame:
    """Partition ``part`` of a sample: ``n`` decoded rows, ids ``<name>-<part>-<i>``
    (atoms closer than ``min_distance`` Å make a row invalid); ``stage1_share``: a
    two-stage model's share of rows from its learned stage 1 (``None``: its own)."""
    stamp = (Path(model_dir) / store.MODEL_BEST).stat().st_mtime
    model, encoder = _load(model_dir, stamp)
    stage1 = getattr(model, "stage1", None)
    if stage1 is not None:      # the model is cached: set the share every time
        stage1.share = model.hparams["stage1_share"] if stage1_share is None else stage1_share
    generator = torch.Generator().manual_seed(part_seed(seed, part))
    frames = []
    for start in range(0, n, batch_rows):
        df = draw(model, encoder, min(batch_rows, n - start), generator, classes)
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
