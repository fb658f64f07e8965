"""``legodask sample``: parallel tasks draw rows from a trained model and decode
them (the kernel is ``legodask.models.sampling.sample_partition``), one task per
partition; ``--spg``, ``--crystal-system`` and ``--max-atoms`` restrict the rows
(``models.classes``: a two-stage model draws within them, others are filtered)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import add_overwrite
from .. import schema as S
from .. import store
from ..models.checkpoint import read_json
from ..models.encoding import Encoder
from ..store import Run, StageResult, fingerprint


def sample_stage(run: Run, model: str, n: int, seed: int = 0, spgs: Sequence[int] | None = None,
                 rows_per_part: int = 50_000, table: str = S.SAMPLES,
                 batch_rows: int = 10_000, min_distance: float = 0.6,
                 overwrite: bool = False, systems: Sequence[str] | None = None,
                 max_atoms: int | None = None, stage1_share: float | None = None
                 ) -> StageResult:
    """Write ``n`` decoded rows of model ``model`` as table ``table``, one task per
    partition of ``rows_per_part`` rows; ``min_distance=0`` keeps crystals whose atoms
    overlap as valid (the paper's decoder checks no distances), for the pre-relaxation
    to pull apart.  Rows are restricted to space groups ``spgs``, crystal systems
    ``systems`` and conventional cells of at most ``max_atoms`` atoms when given;
    ``stage1_share``: a two-stage model's share of rows from its learned stage 1, in
    place of the one it was trained with."""
    import dask

    from ..models.classes import Classes
    from ..models.sampling import sample_partition

    model_dir = run.model_dir(model)
    if not (model_dir / store.MODEL_BEST).exists():
        raise FileNotFoundError(f"no trained model {model!r} in {run.path} (run legodask train)")
    classes = Classes.of(spgs, systems, max_atoms)
    cfg = read_json(model_dir / store.MODEL_CONFIG)
    if stage1_share is not None and (cfg["kind"] != "cvae" or not 0 <= stage1_share <= 1):
        raise ValueError("--stage1-share takes a share from 0 to 1 of a two-stage model (cvae)")
    if classes is not None:
        known = Encoder.from_dict(cfg["encoder"]).categories(S.SPG)
        missing = sorted(set(spgs or ()) - set(known))
        if missing:
            raise ValueError(f"space groups {missing} are not in {model!r}'s training data")
        if not classes.allows_spg(np.array(known)).any():
            raise ValueError(f"no space group of {model!r}'s training data has "
                             f"{classes.describe()}")
    sizes = [min(rows_per_part, n - s) for s in range(0, n, rows_per_part)]
    parts = [dask.delayed(sample_partition, pure=False)(str(model_dir), model, size, seed, i,
                                                        classes, batch_rows, min_distance,
                                                        stage1_share)
             for i, size in enumerate(sizes)]
    info: dict[str, Any] = {"model": model, "n": n, "seed": seed,
                            "spgs": None if spgs is None else sorted(set(spgs)),
                            "min_distance": min_distance, "rows_per_part": rows_per_part,
                            "model_file": fingerprint(model_dir / store.MODEL_BEST)}
    if systems is not None:
        info["crystal_systems"] = sorted(set(systems))
    if max_atoms is not None:
        info["max_atoms"] = max_atoms
    if stage1_share is not None:
        info["stage1_share"] = stage1_share
    return run.write(table, parts, S.empty_frame(), desc=f"sample {model}",
                     overwrite=overwrite, **info)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="run directory")
    parser.add_argument("--model", required=True, help="model name (RUN/models/<name>)")
    parser.add_argument("--n", type=int, default=100_000, help="rows to draw")
    parser.add_argument("--seed", type=int, default=0, help="run seed (partitions derive theirs)")
    parser.add_argument("--spg", type=lambda s: [int(v) for v in s.split(",")], default=None,
                        help="only these space groups, e.g. 227,194")
    parser.add_argument("--crystal-system", type=lambda s: s.split(","), default=None,
                        help="only these crystal systems, e.g. cubic or cubic,hexagonal")
    parser.add_argument("--max-atoms", type=int, default=None,
                        help="only rows whose conventional cell holds at most this many atoms")
    parser.add_argument("--rows-per-part", type=int, default=50_000)
    parser.add_argument("--batch-rows", type=int, default=10_000,
                        help="rows drawn and decoded at a time within a partition")
    parser.add_argument("--table", default=S.SAMPLES, help="table to write")
    parser.add_argument("--min-distance", type=float, default=0.6,
                        help="atoms closer than this (Å) make a row invalid; 0 keeps "
                        "overlapping crystals for the pre-relaxation, as the paper does")
    parser.add_argument("--stage1-share", type=float, default=None,
                        help="cvae: share of rows from its learned stage 1 (default: the "
                        "model's own)")
    add_overwrite(parser)


def command(args: argparse.Namespace) -> int:
    result = sample_stage(Run(args.run), args.model, args.n, args.seed, args.spg,
                          args.rows_per_part, args.table, args.batch_rows, args.min_distance,
                          args.overwrite, args.crystal_system, args.max_atoms,
                          args.stage1_share)
    print(result)
    return 0
