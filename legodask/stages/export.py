"""``legodask export``: write a run's structures as CIF files, one extended-XYZ file
or an ASE database (the selection and writing: ``analysis.export``)."""

from __future__ import annotations

import argparse

from .. import schema as S
from ..analysis.export import FORMATS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--table", default=S.RANKED, help="table to export from")
    p.add_argument("--where", help=f'SQL condition, e.g. "{S.E_ABOVE}mace < 0.5 AND '
                   f"{S.DIMENSION} = 3 AND {S.KNOWN_ID} IS NULL AND {S.TOPOLOGY} = 'dia'\"")
    p.add_argument("--unique", action="store_true",
                   help="only the first row of each distinct crystal (needs dedup)")
    p.add_argument("--format", choices=FORMATS, default="cif")
    p.add_argument("--geometry", help=f"use {S.RELAXED}<MODEL> (default: the last filled one)")
    p.add_argument("--limit", type=int, help="at most this many structures")
    p.add_argument("--out", required=True, help="output folder")


def command(args: argparse.Namespace) -> int:
    from ..analysis.export import export
    from ..store import Run

    written, failed = export(Run(args.run, create=False), args.table, args.out, args.format,
                             args.where, args.unique, args.geometry, args.limit)
    print(f"wrote {written} structures to {args.out}" + (f" ({failed} failed)" if failed else ""))
    return 0
