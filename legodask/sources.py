"""Known structures into the structure table: readers, the training filter, the
SACADA training data (fetched once, verified by checksum), and ``legodask ingest``.

Sources: an ASE database (``.db``), a CIF file or a folder of CIFs, an extxyz file,
or a table (CSV in the reference implementation's 39-column layout or in the
table's own layout, or Parquet).  Each structure is symmetrised with spglib
(``symprec``) and written as one row; the source's own key-value data (energies,
labels) become columns.  A file that cannot be read is reported by name and
skipped; the rest is ingested.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pandas as pd

from . import codec, layouts
from . import schema as S
from .store import Run

log = logging.getLogger("legodask")

SACADA_URL = "https://raw.githubusercontent.com/MaterSim/LEGO-xtal/main/data/source/sp2_sacada.db"
SACADA_SHA256 = "8581c894316744994d4f412698a1ff6c4370ec99eb148a297c21eeab58145ce9"
SACADA_ENV = "LEGODASK_SACADA_DB"


# ---------------------------------------------------------------------------
# the training data
# ---------------------------------------------------------------------------

def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_dir() -> Path:
    """Where fetched data live: ``$LEGODASK_CACHE`` or the user cache folder."""
    import platformdirs

    return Path(os.environ.get("LEGODASK_CACHE", platformdirs.user_cache_dir("legodask")))


def sacada_db(path: str | os.PathLike | None = None, fetch: bool = True) -> Path:
    """Path of ``sp2_sacada.db``: ``path``, else ``$LEGODASK_SACADA_DB``, else the
    cached copy, fetched from the LEGO-xtal repository on first use.  Every copy is
    checked against the published SHA-256."""
    given = path or os.environ.get(SACADA_ENV)
    if given:
        p = Path(given)
        if not p.exists():
            raise FileNotFoundError(f"{p} does not exist (given as the SACADA db)")
        _verify(p)
        return p
    p = cache_dir() / "sp2_sacada.db"
    if p.exists():
        _verify(p)
        return p
    if not fetch:
        raise FileNotFoundError(f"{p} is not cached; set {SACADA_ENV} or allow fetching")
    p.parent.mkdir(parents=True, exist_ok=True)
    log.info("fetching %s", SACADA_URL)
    with tempfile.NamedTemporaryFile(dir=p.parent, delete=False) as tmp:
        try:
            with urllib.request.urlopen(SACADA_URL, timeout=60) as resp:
                shutil.copyfileobj(resp, tmp)
        except OSError as exc:
            os.unlink(tmp.name)
            raise OSError(f"could not fetch {SACADA_URL} ({exc}); download it by hand and "
                          f"set {SACADA_ENV}=/path/to/sp2_sacada.db") from exc
    _verify(Path(tmp.name))
    os.replace(tmp.name, p)
    return p


def _verify(p: Path) -> None:
    digest = sha256(p)
    if digest != SACADA_SHA256:
        raise ValueError(f"{p}: sha256 {digest} is not the published {SACADA_SHA256}")


# ---------------------------------------------------------------------------
# readers: a source is split into small items, each read inside a task
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Item:
    """One readable unit of a source: a db row, a file, a frame, a table."""

    kind: str          # "db", "cif", "extxyz", "table"
    path: str
    key: Any = None    # db id or frame index
    id: str = ""


def list_items(source: str | os.PathLike) -> list[Item]:
    """Split ``source`` into items without reading the structures."""
    p = Path(source)
    if p.is_dir():
        cifs = sorted(p.glob("*.cif"))
        if not cifs:
            raise ValueError(f"{p} holds no .cif files")
        return [Item("cif", str(f), None, f.stem) for f in cifs]
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist")
    suffix = p.suffix.lower()
    if suffix == ".db":
        from ase.db import connect

        with connect(p) as db:
            ids = [r.id for r in db.select(include_data=False, columns=["id"])]
        return [Item("db", str(p), i, f"{p.stem}-{i}") for i in ids]
    if suffix == ".cif":
        return [Item("cif", str(p), None, p.stem)]
    if suffix in (".xyz", ".extxyz"):
        from ase.io import iread

        n = sum(1 for _ in iread(p, index=":", format="extxyz"))
        return [Item("extxyz", str(p), i, f"{p.stem}-{i}") for i in range(n)]
    if suffix in (".csv", ".parquet"):
        return [Item("table", str(p), None, p.stem)]
    raise ValueError(f"{p}: unknown source type {suffix!r} (expected .db, .cif, a folder of "
                     f"CIFs, .xyz/.extxyz, .csv or .parquet)")


_CLASHES = set(S.COLUMNS)


def _extra(kvp: dict[str, Any]) -> dict[str, Any]:
    """A source's key-value data as columns (renamed ``src_<key>`` on a clash)."""
    out = {}
    for k, v in kvp.items():
        if isinstance(v, (np.generic,)):
            v = v.item()
        if not isinstance(v, (str, int, float, bool)):
            v = json.dumps(v, default=str)
        out[f"src_{k}" if k in _CLASHES else k] = v
    return out


def _read_atoms(item: Item) -> tuple[Any, dict[str, Any]]:
    if item.kind == "db":
        from ase.db import connect

        with connect(item.path) as db:
            r = db.get(id=item.key)
        return r.toatoms(), _extra(dict(r.key_value_pairs))
    if item.kind == "cif":
        from ase.io import read

        atoms = read(item.path, format="cif")
        return atoms, {}
    from ase.io import read

    atoms = read(item.path, index=item.key, format="extxyz")
    kv = {k: v for k, v in atoms.info.items() if np.ndim(v) == 0}
    return atoms, _extra(kv)


def read_items(items: list[Item], symprec: float, source: str,
               min_distance: float = 0.6) -> pd.DataFrame:
    """Read and symmetrise a list of structure items (the ingest kernel).  An item
    that cannot be read, or whose row decoding calls invalid (``check_rows``),
    becomes a row with ``valid_xtal`` false and the reason."""
    rows = []
    for it in items:
        try:
            atoms, extra = _read_atoms(it)
            if len(atoms) == 0:
                raise ValueError("no atoms")
            if not atoms.pbc.all() or atoms.cell.rank < 3:
                raise ValueError("no periodic cell (a molecule or a slab?): a crystal needs "
                                 "three cell vectors, periodic in every direction")
            row = codec.atoms_to_row(atoms, symprec=symprec, **extra)
        except Exception as exc:  # malformed files: reported, never fatal
            why = str(exc) or f"{type(exc).__name__}, not a readable {it.kind} file"
            log.warning("%s: cannot read %s (%s)", source, it.path, why)
            row = {"valid_xtal": False, "error": f"unreadable {it.path}: {why}"}
        row.update(id=it.id, source=source, parent_id=None)
        rows.append(row)
    return check_rows(S.conform(pd.DataFrame.from_records(rows)), min_distance)


def check_rows(df: pd.DataFrame, min_distance: float = 0.6) -> pd.DataFrame:
    """``df`` with the rows that it calls valid but decoding does not (atoms closer than
    ``min_distance`` Å, ...) invalid, with decoding's reason; no value is rewritten."""
    verdict = codec.decode_frame(df, min_distance=min_distance)
    bad = df["valid_xtal"].to_numpy(bool) & ~verdict["valid_xtal"].to_numpy(bool)
    if not bad.any():
        return df
    out = df.copy()
    out.loc[bad, "valid_xtal"] = False
    out.loc[bad, "error"] = verdict.loc[bad, "error"]
    return out


def read_table(path: str, element: str = "C", min_distance: float = 0.6) -> pd.DataFrame:
    """A CSV/Parquet table in the table's own layout or the reference implementation's
    (``layouts.choose``), decoded; rows without an id get ``<file stem>-<row>``."""
    p = Path(path)
    columns = layouts.read_header(p)
    layout = layouts.choose(columns, element=element, where=str(p))
    log.info("%s: read in %s", p, layout.describe())
    df = pd.read_parquet(p) if p.suffix == ".parquet" else \
        pd.read_csv(p, **layouts.csv_options(p, columns, layout))
    df = layouts.with_ids(layouts.to_table(df, layout), p.stem, 0)
    df["source"] = p.name
    return codec.decode_frame(df, min_distance=min_distance)


# ---------------------------------------------------------------------------
# the training filter
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainingFilter:
    """METHOD.md section 2: which structures the models learn from."""

    max_atoms: int = 500
    max_sites: int = S.MAX_SITES
    max_dof: int = 24
    elements: tuple[str, ...] = ("C",)   # the elements the models learn

    def apply(self, df: pd.DataFrame) -> pd.DataFrame:
        """Add ``train`` (bool) and ``filter_reason`` (why a row is left out)."""
        reasons = pd.Series([None] * len(df), index=df.index, dtype=object)
        checks = [
            (df["n_sites"] > self.max_sites, f"more than {self.max_sites} Wyckoff sites"),
            (df["natoms"] > self.max_atoms, f"more than {self.max_atoms} atoms"),
            (df["dof"] > self.max_dof, f"more than {self.max_dof} free variables"),
            (~df["valid_xtal"].astype(bool), "invalid: " + df["error"].astype(str)),
            *self._element_check(df),
        ]
        for mask, why in checks:
            new = mask & reasons.isna()
            reasons[new] = why[new] if isinstance(why, pd.Series) else why
        out = df.copy()
        out["train"] = reasons.isna()
        out["filter_reason"] = reasons
        return out

    def _element_check(self, df: pd.DataFrame) -> list[tuple[pd.Series, pd.Series]]:
        """Rows with elements other than ``elements``, and the reason."""
        allowed = set(self.elements)
        others = [sorted(set(e for e in els if isinstance(e, str)) - allowed)
                  for els in df[S.EL].to_numpy(object)]
        mask = pd.Series([bool(o) for o in others], index=df.index)
        why = pd.Series([f"element(s) {', '.join(o)} not among the training elements "
                         f"{', '.join(self.elements)} (--train-elements)" for o in others],
                        index=df.index)
        return [(mask, why)]


# ---------------------------------------------------------------------------
# the stage
# ---------------------------------------------------------------------------

INGEST_EXTRA = {"train": "bool", "filter_reason": "object"}


def ingest(run: Run, source: str | os.PathLike, symprec: float = 1e-3,
           filt: TrainingFilter = TrainingFilter(), element: str = "C",
           items_per_task: int = 16, table: str = "ingested", min_distance: float = 0.6,
           overwrite: bool = False) -> pd.DataFrame:
    """Read ``source`` into ``RUN/<table>.parquet``; return a summary of what the
    training filter kept and dropped, per reason.  Rows get decoding's checks (atoms
    closer than ``min_distance`` Å make a row invalid)."""
    items = list_items(source)
    name = Path(source).name
    if items[0].kind == "table":
        parts = [dask.delayed(read_table)(items[0].path, element, min_distance)]
    else:
        chunks = [items[i:i + items_per_task] for i in range(0, len(items), items_per_task)]
        parts = [dask.delayed(read_items)(c, symprec, name, min_distance) for c in chunks]
    parts = [dask.delayed(filt.apply)(p) for p in parts]
    # The source's own columns are known only once read: the first part is read
    # here and gives the meta; a db's key-value columns are scanned from all rows.
    first = parts[0].compute()
    meta = first.iloc[:0].copy()
    for col, dtype in _db_columns(items).items():
        if col not in meta:
            meta[col] = pd.Series(dtype=dtype)
    parts[0] = dask.delayed(first)
    run.write(table, parts, meta, desc="ingest", source=str(source), overwrite=overwrite,
              symprec=symprec, element=element, items_per_task=items_per_task,
              min_distance=min_distance, filter=dataclasses.asdict(filt))
    from .cluster import compute

    reasons = run.read(table, columns=["filter_reason"])["filter_reason"]
    (counts,) = compute([reasons.fillna("kept").to_frame().groupby("filter_reason").size()])
    return counts.rename("rows").to_frame()


def _db_columns(items: list[Item]) -> dict[str, str]:
    """dtypes of the key-value columns of an ASE db source (empty for other kinds)."""
    if items[0].kind != "db":
        return {}
    from ase.db import connect

    cols: dict[str, str] = {}
    with connect(items[0].path) as db:
        for r in db.select(include_data=False):
            for k, v in _extra(dict(r.key_value_pairs)).items():
                kind = "float64" if isinstance(v, (int, float)) and not isinstance(v, bool) \
                    else "bool" if isinstance(v, bool) else "object"
                cols.setdefault(k, kind)
    return cols


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", nargs="?", default=None,
                   help="ASE db, CIF file or folder, extxyz, CSV or Parquet "
                        f"(default: the SACADA sp2 training set, ${SACADA_ENV} or fetched)")
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--symprec", type=float, default=1e-3, help="spglib tolerance (Å)")
    p.add_argument("--max-atoms", type=int, default=500)
    p.add_argument("--max-sites", type=int, default=S.MAX_SITES)
    p.add_argument("--max-dof", type=int, default=24)
    p.add_argument("--element", default="C", help="element of reference-layout CSV rows")
    p.add_argument("--table", default="ingested", help="output table name")
    p.add_argument("--train-elements", default="C",
                   help="comma-separated elements the models learn; rows with others "
                        "get train = false")
    p.add_argument("--min-distance", type=float, default=0.6,
                   help="atoms closer than this (Å) make a row invalid")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the table when it was made from another source")


def command(args: argparse.Namespace) -> int:
    source = args.source or sacada_db()
    elements = tuple(e.strip() for e in args.train_elements.split(",") if e.strip())
    summary = ingest(Run(args.run), source, args.symprec,
                     TrainingFilter(args.max_atoms, args.max_sites, args.max_dof, elements),
                     args.element, table=args.table, min_distance=args.min_distance,
                     overwrite=args.overwrite)
    print(summary.to_string())
    return 0
