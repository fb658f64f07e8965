"""``legodask dedup``: fingerprint a table and deduplicate it incrementally against
everything seen, and mark the known crystals (the kernels and the batch-by-batch
join: ``analysis.dedup``, ``analysis.novelty``)."""

from __future__ import annotations

import argparse

from ..crystal import fingerprint as F
from .. import schema as S
from ..analysis.dedup import DEFAULT_REQUIRE
from . import add_overwrite


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--input", help=f"table to dedup (default: {S.RANKED}, else {S.PRERELAXED})")
    p.add_argument("--output", default=S.FINGERPRINTS,
                   help="fingerprints table to write or extend")
    p.add_argument("--against", action="append", default=[],
                   help="other run directories or fingerprints tables (comma-separated, "
                        "repeatable) whose crystals count as already seen")
    p.add_argument("--geometry", help="fingerprint the relaxed_<MODEL> geometry "
                   "(default: the row's own)")
    p.add_argument("--symprec", type=float, default=F.SYMPREC, help="spglib tolerance (Å)")
    p.add_argument("--matcher", choices=F.MATCHERS, default="env",
                   help="fine comparison: environments and volume (env), then also "
                        "pymatgen's StructureMatcher (pymatgen)")
    p.add_argument("--env-tol", type=float, default=F.ENV_TOL, help="Å")
    p.add_argument("--vol-tol", type=float, default=F.VOL_TOL, help="relative")
    p.add_argument("--require", default=",".join(DEFAULT_REQUIRE),
                   help="boolean columns a row needs (those present) to be fingerprinted")
    p.add_argument("--window", type=int, default=8,
                   help="partitions fingerprinted in parallel before their joins")
    p.add_argument("--known", help=f"folder with a {S.KNOWN} table (`legodask known add`): "
                   f"mark each row's {S.KNOWN_ID} (default: the run's own {S.KNOWN} table "
                   "when it has one; 'none': do not)")
    add_overwrite(p)


def command(args: argparse.Namespace) -> int:
    from ..analysis.dedup import dedup, default_input
    from ..store import Run

    run = Run(args.run)
    against = [a for arg in args.against for a in arg.split(",") if a]
    known = args.known or (run.path if run.is_complete(S.KNOWN) else None)
    result = dedup(run, args.input or default_input(run), args.output, against,
                   args.geometry, args.symprec, args.matcher, args.env_tol, args.vol_tol,
                   [c for c in args.require.split(",") if c], args.window,
                   None if known == "none" else known, args.overwrite)
    print(result)
    return 0
