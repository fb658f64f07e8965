"""``legodask known add [SOURCE]``: known structures (the SACADA sp2 set by default)
into the known table of ``--run`` (a run, or a folder that many runs name with
``dedup --known``): their fingerprints and nets, for novelty (``analysis.novelty``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .. import schema as S
from ..store import Run


def _source(source: str | None) -> Path:
    from ..sources.sacada import sacada_db

    return Path(source) if source else sacada_db()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["add"], help="add: append a source's structures")
    p.add_argument("source", nargs="?", default=None,
                   help="ASE db, CIF file or folder of CIFs, extxyz (default: the SACADA "
                        "sp2 set, $LEGODASK_SACADA_DB or fetched)")
    p.add_argument("--run", required=True,
                   help=f"folder of the {S.KNOWN} table: a run, or one shared by many runs")
    p.add_argument("--symprec", type=float, default=1e-3, help="spglib tolerance (Å)")
    p.add_argument("--items-per-task", type=int, default=16)


def is_done(run: Run, opts: dict[str, Any]) -> bool:
    """Whether the source is in the run's known table already."""
    path = str(_source(opts.get("source")).resolve())
    return any(s["path"] == path for s in run.info(S.KNOWN).get("sources", []))


def command(args: argparse.Namespace) -> int:
    from ..analysis.novelty import add_known

    print(add_known(Run(args.run), _source(args.source), args.symprec, args.items_per_task))
    return 0
