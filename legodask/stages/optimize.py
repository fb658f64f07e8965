"""``legodask optimize``: rounds of latent-space and direct optimisation for the
pre-relaxed rows that missed the reference environment, through a trained two-stage
model (the kernel is ``legodask.models.optimize.optimize_frame``); ``--resample`` is
the control that draws a fresh latent vector each round and optimises directly only.
Every row of the input is written once, with ``round`` and ``z_steps``; the rows a
round changed get the dimension and net of their new geometry."""

from __future__ import annotations

import argparse
import functools
from dataclasses import asdict
from typing import Any

import numpy as np
import pandas as pd

from . import add_environment, add_overwrite
from .. import schema as S
from .. import store
from ..prerelax.options import Options
from ..store import Run, StageResult, fingerprint

# A round's direct optimisation: the pre-relaxation's, without its basin hops (a
# round's fresh start is the restart; hops in every round would repeat the work).
ROUND_OPTIONS = Options(hops=0)


def optimize_part(df: pd.DataFrame, **kwargs: Any) -> pd.DataFrame:
    """The stage's kernel: ``optimize_frame``, then the topology of the rows it changed."""
    from ..crystal.topology import topology_frame
    from ..models.optimize import optimize_frame

    out = optimize_frame(df, **kwargs)
    if not set(S.TOPOLOGY_DTYPES) <= set(out.columns):
        return topology_frame(out, rows=out[S.LOSS].notna().to_numpy())
    changed = out[S.ROUND].to_numpy() > 0
    if changed.any():
        topo = topology_frame(out.iloc[np.flatnonzero(changed)])
        for c in S.TOPOLOGY_DTYPES:
            col = out[c].to_numpy(copy=True)
            col[changed] = topo[c].to_numpy()
            out[c] = col
    return out

def optimize(run: Run, model: str, rounds: int = 4, resample: bool = False,
             z_steps: int | None = None, starts: int | None = None, env: str = "graphite",
             device: str = "auto",
             options: Options = ROUND_OPTIONS, input: str = S.PRERELAXED,
             output: str = S.OPTIMIZED, seed: int = 0, overwrite: bool = False) -> StageResult:
    """Write table ``output``: table ``input`` with its missed rows optimised for up
    to ``rounds`` rounds through model ``model`` (``z_steps`` latent steps from each of
    ``starts`` latent starts a round; 0 with ``resample``); on a cluster with a GPU
    worker it runs there."""
    from .. import cluster
    from ..models.latent import LatentOptions

    model_dir = run.path / store.MODELS / model
    if not (model_dir / store.MODEL_BEST).exists():
        raise FileNotFoundError(f"no trained model {model!r} in {run.path} (run legodask train)")
    given = {"steps": z_steps, "starts": starts}
    latent = LatentOptions(**{k: v for k, v in given.items() if v is not None})
    ddf = run.read(input)
    extra = {c: str(t) for c, t in ddf.dtypes.items() if c not in S.COLUMNS}
    extra.update(S.OPTIMIZE_DTYPES)
    extra.update(S.TOPOLOGY_DTYPES)     # kept where the input has them, else added last
    annotations = None
    if device in ("auto", "torch") and cluster.has_gpu_worker():
        annotations = {"resources": cluster.GPU_RESOURCE}
        device = "torch"
    kernel = functools.partial(optimize_part, model_dir=str(model_dir), env=env, rounds=rounds,
                               resample=resample, latent=latent, options=options,
                               device=device, seed=seed)
    made_with = {"model": model, "model_file": fingerprint(model_dir / store.MODEL_BEST),
                 "env": env, "rounds": rounds, "resample": resample, "seed": seed,
                 "device": device, "latent": asdict(latent), "options": asdict(options)}
    return run.map_table(input, output, kernel, S.empty_frame(extra), desc="optimize",
                         annotations=annotations, options=made_with, overwrite=overwrite)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--model", default="cvae-cont",
                   help="a trained two-stage model (RUN/models/<name>)")
    p.add_argument("--rounds", type=int, default=4,
                   help="rounds for the rows that still miss the environment")
    p.add_argument("--z-steps", type=int, default=None,
                   help="latent steps per row and round "
                        "(default: models.latent.LatentOptions.steps)")
    p.add_argument("--starts", type=int, default=None,
                   help="latent starts per row and round, the lowest kept: the posterior's, "
                        "then prior draws (default: models.latent.LatentOptions.starts)")
    p.add_argument("--resample", action="store_true",
                   help="the control: a fresh latent vector each round, direct optimisation "
                        "only (the same rounds and direct steps)")
    p.add_argument("--input", default=S.PRERELAXED, help="pre-relaxed table to optimise")
    p.add_argument("--output", default=S.OPTIMIZED, help="output table name")
    add_environment(p)
    p.add_argument("--device", choices=["cpu", "torch", "auto"], default="auto",
                   help="latent steps in torch (on a GPU when there is one); direct steps "
                        "as prerelax --device")
    p.add_argument("--budget", type=float, default=Options.budget,
                   help="seconds per structure and round of direct optimisation")
    p.add_argument("--hops", type=int, default=ROUND_OPTIONS.hops,
                   help="basin-hopping restarts of each round's direct optimisation")
    p.add_argument("--seed", type=int, default=0, help="seed of the latent draws")
    add_overwrite(p)


def command(args: argparse.Namespace) -> int:
    opts = Options(budget=args.budget, hops=args.hops)
    z_steps = 0 if args.resample else args.z_steps
    print(optimize(Run(args.run), args.model, args.rounds, args.resample, z_steps, args.starts,
                   args.env, args.device, opts, args.input, args.output, args.seed,
                   args.overwrite))
    return 0
