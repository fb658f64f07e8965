"""``legodask augment``: the ingested table's training structures as augmented rows
(the kernel is ``legodask.augment.frame.augment_frame``), one task per few
structures."""

from __future__ import annotations

import argparse
import dataclasses
import json

from . import add_overwrite
from .. import schema as S
from ..augment.params import PRESETS, Params, preset
from ..store import Run, StageResult


def augment(run: Run, p: Params, per_task: int = 1, overwrite: bool = False) -> StageResult:
    """Augment ``RUN/ingested`` into ``RUN/augmented``: one task (and partition) per
    ``per_task`` structures of each input partition, so that no process holds more
    than a few structures' rows and the table is the same for any worker count.  A
    table made with other parameters is refused (``overwrite``: replaced)."""
    import dask

    from ..augment.frame import meta, slice_frame
    from ..cluster import compute

    params = json.loads(json.dumps(dataclasses.asdict(p)))
    parts = run.read(S.INGESTED).to_delayed()
    sizes = compute([dask.delayed(len)(part) for part in parts], desc="sizes")
    tasks = [dask.delayed(slice_frame)(part, i, i + per_task, p)
             for part, n in zip(parts, sizes) for i in range(0, n, per_task)]
    return run.write(S.AUGMENTED, tasks, meta(), desc="augment", source=S.INGESTED,
                     overwrite=overwrite, params=params, per_task=per_task)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="run directory")
    parser.add_argument("--preset", default="v1", choices=sorted(PRESETS),
                        help="dataset size: v1 ~60k, v2 ~120k, v3 ~240k, 2m ~2M rows")
    parser.add_argument("--seed", type=int, default=None, help="run seed (default 0)")
    parser.add_argument("--max-per-subgroup", type=int, default=None,
                        help="rows (orbit swaps) per subgroup representation")
    parser.add_argument("--max-per-parent", type=int, default=None,
                        help="rows (orbit swaps) of the structure's own representation "
                             "(default 3 x --max-per-subgroup)")
    parser.add_argument("--max-per-structure", type=int, default=None,
                        help="stop trying subgroups of a structure at this many rows")
    parser.add_argument("--tries", type=int, default=None,
                        help="subgroup_once tries per group type, t and k (default 20)")
    parser.add_argument("--eps", type=float, default=None,
                        help="random distortion in Å (default 0.001)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds per structure (default 60; raise it with "
                             "--check prerelax, which pre-relaxes every subgroup)")
    parser.add_argument("--check", choices=["prerelax", "env", "none"], default=None,
                        help="environment test of each representation (default env)")
    parser.add_argument("--env", dest="environment", default=None,
                        help="target environment: prototype name or structure file "
                             "(default graphite)")
    parser.add_argument("--per-task", type=int, default=1,
                        help="structures per task and output partition")
    add_overwrite(parser)


def command(args: argparse.Namespace) -> int:
    p = preset(args.preset, seed=args.seed, max_per_subgroup=args.max_per_subgroup,
               max_per_parent=args.max_per_parent,
               max_per_structure=args.max_per_structure, tries=args.tries, eps=args.eps,
               timeout=args.timeout, check=args.check, environment=args.environment)
    result = augment(Run(args.run), p, per_task=args.per_task, overwrite=args.overwrite)
    print(result)
    return 0
