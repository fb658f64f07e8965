"""``legodask status``: which tables of a run are complete, partition by partition."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="run directory")


def command(args: argparse.Namespace) -> int:
    from ..store import Run

    table = Run(args.run, create=False).status()
    print(table.to_string(index=False) if len(table) else f"{args.run}: no tables yet")
    return 0
