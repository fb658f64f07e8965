"""``legodask encode``: fit the encoder on the training table and write the run's
features (``legodask.models.encoding.write_features``)."""

from __future__ import annotations

import argparse

from .. import schema as S
from .. import store
from ..models.encoding import MODES, SITES, write_features
from ..store import Run


def is_done(run: Run, opts: dict) -> bool:
    """Whether the run has its features."""
    return run.file(store.FEATURES).exists()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="run directory")
    parser.add_argument("--mode", choices=MODES, default="cont",
                        help="cont: one-hot + Bayesian GMM; dis: everything binned")
    parser.add_argument("--sites", choices=SITES, default="generator",
                        help="generator (default): each special site on its Wyckoff "
                        "generator, so that sampled sites are always on their positions; "
                        "as-given: as the table writes them (any atom of an orbit)")
    parser.add_argument("--input", default=S.AUGMENTED, help="training table")
    parser.add_argument("--chunk-rows", type=int, default=16_384, help="rows per Zarr chunk")
    parser.add_argument("--max-modes", type=int, default=10, help="mixture modes per column")
    parser.add_argument("--fit-rows", type=int, default=20_000,
                        help="rows sampled to fit the mixtures")
    parser.add_argument("--seed", type=int, default=0)


def command(args: argparse.Namespace) -> int:
    write_features(Run(args.run), args.mode, args.input, args.chunk_rows, args.max_modes,
                   args.fit_rows, args.seed, args.sites)  # logs what it wrote
    return 0
