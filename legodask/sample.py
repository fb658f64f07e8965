"""The sample stage: parallel tasks draw rows from a trained model and decode them.

Each partition is one task that loads the model (once per worker process), draws its
share with its own seed (from the run's seed and the partition index, so a partition
is the same whichever worker draws it and whenever), turns features into table rows
and decodes them (``valid_xtal``, ``error``) batch by batch, so that no process holds
more than one partition.  Sampling can be restricted to a set of space groups: the
GAN is conditioned on them, and rows of other groups are drawn again.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pandas as pd
import torch

from . import codec, models
from . import schema as S
from .encode import Encoder
from .store import Run, StageResult, fingerprint

log = logging.getLogger("legodask")

TABLE = "samples"


@functools.lru_cache(maxsize=4)
def _load(model_dir: str, stamp: float) -> tuple[models.TabularModel, Encoder]:
    """A model, cached per worker process (``stamp``: its file's mtime)."""
    return models.load(Path(model_dir))


def part_seed(seed: int, part: int) -> int:
    """The seed of partition ``part`` of a sample drawn with ``seed``."""
    return int(np.random.SeedSequence([seed, part]).generate_state(1)[0])


def draw(model: models.TabularModel, encoder: Encoder, n: int, generator: torch.Generator,
         spgs: Sequence[int] | None = None, max_rounds: int = 100) -> pd.DataFrame:
    """``n`` table rows (not yet decoded) from a model, of space groups ``spgs`` if given.

    Rows of other groups (a VAE, or a GAN ignoring its condition) are drawn again, at
    most ``max_rounds`` times; fewer rows come back when the model rarely makes them.
    """
    cond = None
    if spgs is not None:
        cats = encoder.categories("spg")
        cond = [cats.index(s) for s in spgs if s in cats]
        if not cond:
            raise ValueError(f"no training row has space group {sorted(spgs)}")
    frames, got = [], 0
    for _ in range(max_rounds):
        df = encoder.inverse_transform(model.sample(n - got, generator, cond))
        if spgs is not None:
            df = df[df["spg"].isin(list(spgs))]
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
    stamp = (Path(model_dir) / models.BEST).stat().st_mtime
    model, encoder = _load(model_dir, stamp)
    generator = torch.Generator().manual_seed(part_seed(seed, part))
    frames = []
    for start in range(0, n, batch_rows):
        df = draw(model, encoder, min(batch_rows, n - start), generator, spgs)
        df["id"] = [f"{name}-{part}-{i}" for i in range(start, start + len(df))]
        df["source"] = name
        frames.append(codec.decode_frame(df, min_distance=min_distance))
    if not frames:
        return S.empty_frame()
    return pd.concat(frames, ignore_index=True)


def sample_stage(run: Run, model: str, n: int, seed: int = 0, spgs: Sequence[int] | None = None,
                 rows_per_part: int = 50_000, table: str = TABLE,
                 batch_rows: int = 10_000, min_distance: float = 0.6,
                 overwrite: bool = False) -> StageResult:
    """Write ``n`` decoded rows of model ``model`` as table ``table``, one task per
    partition of ``rows_per_part`` rows; ``min_distance=0`` keeps crystals whose atoms
    overlap as valid (the paper's decoder checks no distances), for the pre-relaxation
    to pull apart."""
    model_dir = run.model_dir(model)
    if not (model_dir / models.BEST).exists():
        raise FileNotFoundError(f"no trained model {model!r} in {run.path} (run legodask train)")
    if spgs is not None:
        cfg = json.loads((model_dir / models.CONFIG).read_text())
        known = set(Encoder.from_dict(cfg["encoder"]).categories("spg"))
        missing = sorted(set(spgs) - known)
        if missing:
            raise ValueError(f"space groups {missing} are not in {model!r}'s training data")
        spgs = sorted(set(spgs))
    sizes = [min(rows_per_part, n - s) for s in range(0, n, rows_per_part)]
    parts = [dask.delayed(sample_partition, pure=False)(str(model_dir), model, size, seed, i,
                                                        spgs, batch_rows, min_distance)
             for i, size in enumerate(sizes)]
    info: dict[str, Any] = {"model": model, "n": n, "seed": seed, "spgs": spgs,
                            "min_distance": min_distance, "rows_per_part": rows_per_part,
                            "model_file": fingerprint(model_dir / models.BEST)}
    return run.write(table, parts, S.empty_frame(), desc=f"sample {model}",
                     overwrite=overwrite, **info)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="run directory")
    parser.add_argument("--model", required=True, help="model name (RUN/models/<name>)")
    parser.add_argument("--n", type=int, default=100_000, help="rows to draw")
    parser.add_argument("--seed", type=int, default=0, help="run seed (partitions derive theirs)")
    parser.add_argument("--spg", type=lambda s: [int(v) for v in s.split(",")], default=None,
                        help="only these space groups, e.g. 227,194")
    parser.add_argument("--rows-per-part", type=int, default=50_000)
    parser.add_argument("--batch-rows", type=int, default=10_000,
                        help="rows drawn and decoded at a time within a partition")
    parser.add_argument("--table", default=TABLE, help="table to write")
    parser.add_argument("--min-distance", type=float, default=0.6,
                        help="atoms closer than this (Å) make a row invalid; 0 keeps "
                        "overlapping crystals for the pre-relaxation, as the paper does")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the table when it was drawn with other options")


def command(args: argparse.Namespace) -> int:
    result = sample_stage(Run(args.run), args.model, args.n, args.seed, args.spg,
                          args.rows_per_part, args.table, args.batch_rows, args.min_distance,
                          args.overwrite)
    print(result)
    return 0
