"""``legodask rank``: relax a table's structures with a chain of energy models and
rank their energies above graphite (the kernel: ``energy.ranking.rank_frame``);
with ``--unique`` one row per crystal is relaxed."""

from __future__ import annotations

import argparse
import functools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, fields
from typing import Any

from . import add_overwrite
from .. import schema as S
from .. import store
from ..energy.relax import RelaxSettings
from ..store import Run, StageResult

log = logging.getLogger("legodask")


def rank(run: Run, models: Sequence[str], input: str = S.PRERELAXED,
         output: str = S.RANKED, options: Mapping[str, Mapping[str, Any]] | None = None,
         settings: RelaxSettings = RelaxSettings(),
         only_valid_env: bool = False, unique: bool = False,
         overwrite: bool = False) -> StageResult:
    """Map ``rank_frame`` over table ``input`` into table ``output``; graphite is
    relaxed with each model first (one task per model) as the energy zero.  With
    ``unique`` the input is deduplicated first (or that dedup resumed) and repeats
    are not relaxed."""
    import dask
    import pandas as pd

    from .. import cluster
    from ..analysis.dedup import dedup
    from ..energy import get_model
    from ..energy.ranking import energy_dtypes, rank_frame, rank_unique, reference_energy

    options = {m: dict((options or {}).get(m, {})) for m in models}
    gpu = any(get_model(m, **options[m]).gpu for m in models) and cluster.has_gpu_worker()
    annotations = {"resources": cluster.GPU_RESOURCE} if gpu else None
    with dask.annotate(**(annotations or {})):
        tasks = [dask.delayed(reference_energy)(m, options[m], settings) for m in models]
    refs = cluster.compute(tasks, desc="graphite references")
    store.write_json(run.file(store.RANK_REFERENCES), [asdict(r) for r in refs])
    for r in refs:
        if r.error:
            log.warning("rank: graphite with %s failed (%s); %s%s is NaN",
                        r.model, r.error, S.E_ABOVE, r.model)
    references = {r.model: r.energy for r in refs}
    dtypes = run.read(input).dtypes
    meta = pd.DataFrame({c: pd.Series(dtype=t) for c, t in
                         {**dtypes.to_dict(), **energy_dtypes(models)}.items()})
    kwargs = dict(models=list(models), options=options, settings=settings,
                  references=references, only_valid_env=only_valid_env)
    made_with = {"models": list(models), "options": options, "settings": asdict(settings),
                 "only_valid_env": only_valid_env, "unique": unique}
    if not unique:
        kernel = functools.partial(rank_frame, **kwargs)   # its ``options`` are not map_table's
        return run.map_table(input, output, kernel, meta, desc=f"rank {','.join(models)}",
                             annotations=annotations, options=made_with, overwrite=overwrite)
    dedup(run, input, S.rank_unique(output),
          require=[S.VALID_XTAL, *([S.VALID_ENV] if only_valid_env else [])],
          overwrite=overwrite)
    fps = run.read(S.rank_unique(output), columns=[S.ID, S.FINGERPRINT, S.FP_DATA, S.FIRST_ID])
    with dask.annotate(**(annotations or {})):
        mapped = run.read(input).map_partitions(rank_unique, fps, align_dataframes=False,
                                                meta=meta, **kwargs)
    return run.write(output, mapped.to_delayed(), meta, desc=f"rank {','.join(models)}",
                     source=input, overwrite=overwrite, **made_with)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="run directory")
    parser.add_argument("--models", default="reaxff",
                        help="comma-separated energy models, relaxed in this order "
                             "(reaxff, mace, chgnet, gulp, tersoff, rebo, airebo)")
    parser.add_argument("--input", default=S.PRERELAXED, help="table to rank")
    parser.add_argument("--output", default=S.RANKED, help="table to write")
    parser.add_argument("--only-valid-env", action="store_true",
                        help=f"rank only rows whose {S.VALID_ENV} is true")
    parser.add_argument("--unique", action="store_true",
                        help="deduplicate the input first and rank one row per crystal")
    parser.add_argument("--option", action="append", default=[], metavar="MODEL.NAME=VALUE",
                        help="back-end option, e.g. reaxff.ffield=ffield.reax.cho, "
                             "mace.model=/path/file.model, mace.dispersion=true")
    defaults = RelaxSettings()
    g = parser.add_argument_group("relaxation")
    g.add_argument("--fmax", type=float, default=None,
                   help="force criterion, eV/Å (default: by size, 0.1 below 100 atoms)")
    g.add_argument("--steps", type=int, default=None,
                   help="step budget (default: by size, 250 below 100 atoms)")
    g.add_argument("--timeout", type=float, default=defaults.timeout,
                   help="wall-clock seconds per structure")
    g.add_argument("--maxstep", type=float, default=defaults.maxstep,
                   help="FIRE maxstep of the ase relaxer, Å")
    g.add_argument("--relaxer", choices=("fast", "ase"), default=defaults.relaxer,
                   help="fast: LAMMPS's own minimiser for LAMMPS models, batched BFGS for "
                        "MACE and CHGNet; ase: ASE's FIRE one structure at a time "
                        "(recorded per row in relaxer_<model>)")
    g.add_argument("--batch-atoms", type=int, default=defaults.batch_atoms,
                   help="atoms per batch of the batched relaxer (default: by GPU memory, "
                        "2048 on a CPU)")
    g.add_argument("--batch-size", type=int, default=defaults.batch_size,
                   help="structures per lock-step batch of the ase relaxer (MACE)")
    g.add_argument("--retries", type=int, default=defaults.retries,
                   help="retries of a structure whose child process died")
    add_overwrite(parser)


def command(args: argparse.Namespace) -> int:
    from ..energy import ModelUnavailable, get_model
    from ..energy.ranking import parse_options

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    options = parse_options(args.option)
    names = {f.name for f in fields(RelaxSettings)}
    settings = RelaxSettings(**{k: v for k, v in vars(args).items()
                                if k in names and v is not None})
    try:
        for m in models:
            get_model(m, **options.get(m, {}))
    except (ModelUnavailable, KeyError) as exc:
        log.error("rank: %s", exc)
        return 2
    log.debug("rank: models %s, settings %s", models, asdict(settings))
    result = rank(Run(args.run), models, args.input, args.output, options, settings,
                  args.only_valid_env, args.unique, args.overwrite)
    print(result)
    return 0
