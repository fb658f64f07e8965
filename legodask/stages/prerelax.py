"""``legodask prerelax``: pre-relax a table of a run towards a reference
environment (the kernel is ``legodask.prerelax.frame.prerelax_frame``), with a
``--limit`` spread evenly over the partitions; each relaxed row gets the
dimension and net of its relaxed geometry (``crystal.topology.topology_frame``)."""

from __future__ import annotations

import argparse
import functools
from collections.abc import Sequence
from dataclasses import asdict, replace
from typing import Any

import pandas as pd

from . import add_environment, add_overwrite
from .. import schema as S
from ..crystal.environment import Environment, get_environment
from ..crystal.topology import topology_frame
from ..prerelax.frame import EXTRA_DTYPES, prerelax_frame
from ..prerelax.options import Options


def spread_limit(limit: int, counts: Sequence[int]) -> list[int]:
    """Share ``limit`` rows over partitions holding ``counts`` valid rows as evenly
    as their counts allow (the earlier partitions take the remainder), so that a
    quick look keeps every worker busy instead of filling the first partitions."""
    quota = [0] * len(counts)
    left = min(int(limit), int(sum(counts)))
    while left > 0:
        open_ = [i for i, c in enumerate(counts) if quota[i] < c]
        share = max(1, left // len(open_))
        for i in open_:
            take = min(share, counts[i] - quota[i], left)
            quota[i] += take
            left -= take
            if left == 0:
                break
    return quota


def prerelax_part(df: pd.DataFrame, partition_info: dict[str, Any] | None = None,
                  **kwargs: Any) -> pd.DataFrame:
    """The stage's kernel: ``prerelax_frame``, then the topology of every row it
    relaxed (those with a ``loss``), in its relaxed geometry (~14 ms a row)."""
    out = prerelax_frame(df, partition_info=partition_info, **kwargs)
    return topology_frame(out, rows=out[S.LOSS].notna().to_numpy())


def prerelax(run: Any, source: str | None = None, env: str | Environment = "graphite",
             device: str = "auto", limit: int | None = None,
             options: Options = Options(), output: str = S.PRERELAXED,
             rdf_bins: int = 0, overwrite: bool = False) -> Any:
    """Pre-relax table ``source`` (``samples``, else ``decoded``) of a run into
    ``RUN/prerelaxed.parquet``; on a cluster with a GPU worker the batched path
    runs there.  ``rdf_bins`` > 0 adds the smoothed RDF to the descriptor."""
    from .. import cluster

    if rdf_bins:
        env = replace(get_environment(env), rdf_bins=rdf_bins)

    if source is None:
        source = S.SAMPLES if run.table_path(S.SAMPLES).exists() else S.DECODED
    ddf = run.read(source)
    extra = {c: str(t) for c, t in ddf.dtypes.items() if c not in S.COLUMNS}
    extra.update(EXTRA_DTYPES)
    extra.update(S.TOPOLOGY_DTYPES)
    meta = S.empty_frame(extra)
    annotations = None
    if device in ("auto", "torch") and cluster.has_gpu_worker():
        annotations = {"resources": cluster.GPU_RESOURCE}
        device = "torch"
    limits = None
    if limit is not None:
        import dask

        counts = cluster.compute([dask.delayed(lambda d: int(d[S.VALID_XTAL].sum()))(part)
                                  for part in ddf[[S.VALID_XTAL]].to_delayed()], desc="count")
        limits = spread_limit(limit, counts)
    kernel = functools.partial(prerelax_part, env=env, device=device, options=options,
                               limits=limits)
    made_with = {"env": getattr(env, "name", env), "rdf_bins": rdf_bins, "device": device,
                 "limit": limit, "options": asdict(options)}
    return run.map_table(source, output, kernel, meta, desc="prerelax",
                         annotations=annotations, options=made_with, overwrite=overwrite)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--input", default=None,
                   help="table to pre-relax (default: samples, else decoded)")
    p.add_argument("--output", default=S.PRERELAXED, help="output table name")
    add_environment(p)
    p.add_argument("--device", choices=["cpu", "torch", "auto"], default="auto",
                   help="cpu: scipy per structure; torch: batched (GPU if any); "
                        "auto: batched on a GPU worker, else scipy")
    p.add_argument("--limit", type=int, default=None,
                   help="relax only N valid rows, spread evenly over the partitions "
                        "(the first valid rows of each)")
    p.add_argument("--budget", type=float, default=Options.budget,
                   help="seconds per structure (batched path: its share of each step)")
    p.add_argument("--batch-size", type=int, default=Options.batch_size)
    p.add_argument("--hops", type=int, default=Options.hops,
                   help="basin-hopping restarts for structures that miss the environment")
    p.add_argument("--density-rescue", type=float, default=Options.density,
                   help="restart at the reference's volume per atom a structure that misses "
                        "the environment from a start off by more than this factor (0: never)")
    p.add_argument("--wide-rcut", type=float, default=Options.wide_rcut,
                   help="rescue cutoff (Å) for structures that miss the environment "
                        "(0: no such rescue)")
    p.add_argument("--rdf-bins", type=int, default=0,
                   help="add the smoothed RDF in so many bins to the descriptor (pyxtal: 20)")
    add_overwrite(p)


def command(args: argparse.Namespace) -> int:
    from ..store import Run

    opts = Options(budget=args.budget, batch_size=args.batch_size, hops=args.hops,
                   wide_rcut=args.wide_rcut, density=args.density_rescue)
    result = prerelax(Run(args.run), args.input, args.env, args.device, args.limit, opts,
                      args.output, args.rdf_bins, args.overwrite)
    print(result)
    return 0
