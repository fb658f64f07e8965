"""The run directory: one partitioned Parquet table per stage, written atomically.

Layout::

    RUN/<table>.parquet/part-00000.parquet   one file per partition
    RUN/<table>.parquet/_done.json           written when every partition is there
    RUN/<table>.parquet/_made_from.json      what the table is made from (when started)
    RUN/<table>.parquet/_writing.lock        held by the process writing it (pid, host)
    RUN/models/<name>/                       trained models
    RUN/logs/legodask.log                    the run's log

A partition is written to a hidden temporary name and renamed into place, so a
file that exists is complete.  A stage that is rerun skips the partitions whose
files exist: a crash or a killed worker loses nothing and duplicates nothing.
A table records, when it is started, what it is made from (the source table's
``_done.json`` or the input file's fingerprint, and the options that change
results); a rerun from other input or with other options is refused, never mixed
in, and ``overwrite`` starts the table again.  One process writes a table at a
time: a second one refuses while the first's lock is there (a lock left by a dead
process on this host is taken over).
Nothing but this module knows the file names in a run directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import dask.dataframe as dd
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from dask.delayed import Delayed

from . import schema as S

log = logging.getLogger("legodask")

# Every file name of a run directory (``RUN/<name>``) and of its table folders.
FEATURES = "features.zarr"            # encode: the encoded training rows
MODELS = "models"                     # train: one folder per model
METRICS = "metrics.json"              # metrics: the paper's counts
REPORT = "report.html"                # report
TIMINGS = "timings.json"              # run: seconds per stage
RANK_REFERENCES = "rank_references.json"  # rank: each model's reference energy
LOGS = "logs"
LOG = "legodask.log"
DONE = "_done.json"                   # in a table folder: every partition is there
MADE_FROM = "_made_from.json"         # in a table folder: what it was made from
LOCK = "_writing.lock"                # in a table folder: the one writer
# In a model folder: hyper-parameters and encoder, checkpoints, training history.
MODEL_CONFIG, MODEL_BEST, MODEL_LAST = "config.json", "best.pt", "last.pt"
MODEL_LOSSES, MODEL_PLOT = "losses.json", "losses.png"
RUN_FILES = [FEATURES, METRICS, REPORT, TIMINGS, RANK_REFERENCES, LOG, DONE, MADE_FROM,
             LOCK, MODEL_CONFIG, MODEL_BEST, MODEL_LAST, MODEL_LOSSES, MODEL_PLOT]
_HELD: set[Path] = set()   # the locks this process holds


def stats_file(table: str, ext: str) -> str:
    """The stats stage's summary (``json``) or plot (``png``) of a table."""
    return f"stats-{table}.{ext}"


_ARROW_OF = {
    "int8": pa.int8(), "int16": pa.int16(), "int32": pa.int32(), "int64": pa.int64(),
    "float32": pa.float32(), "float64": pa.float64(), "bool": pa.bool_(),
}


def arrow_schema(meta: pd.DataFrame) -> pa.Schema:
    """Arrow schema of a stage's ``meta``: structure columns keep the table's types,
    other object columns are strings."""
    known = {f.name: f.type for f in S.STRUCTURE_SCHEMA}
    fields = []
    for col, dtype in meta.dtypes.items():
        if col in known:
            fields.append(pa.field(col, known[col]))
        else:
            fields.append(pa.field(col, _ARROW_OF.get(str(dtype), pa.string())))
    return pa.schema(fields)


def write_frame(df: pd.DataFrame, path: Path, schema: pa.Schema) -> int:
    """Write one partition atomically (temporary name, then rename); return its rows."""
    df = df.reset_index(drop=True)
    for col in schema.names:
        if col not in df.columns:  # a column this partition never saw
            df[col] = None
    table = pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False)
    table = table.replace_schema_metadata(None)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return len(df)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary name beside ``path`` to write into; renamed to ``path`` when the
    block ends without an error, so a file (or folder) that exists is complete."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        if tmp.is_dir() and path.is_dir():   # a folder (a Zarr array) is replaced whole
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def write_json(path: Path, obj: Any, **dump: Any) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically; a file that already holds that
    text is left as it is (so a rerun that finds its work done rewrites nothing)."""
    text = json.dumps(obj, indent=1, **dump)
    if path.is_file() and path.read_text() == text:
        return path
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


@dataclass
class StageResult:
    """What a stage wrote: partitions done now, skipped as already done, and rows."""

    table: str
    written: int
    skipped: int
    rows: int

    def __str__(self) -> str:
        return (f"{self.table}: {self.written} partitions written, "
                f"{self.skipped} already done, {self.rows} rows written now")


class Run:
    """A run directory: the stage tables of one run and what of them is done."""

    def __init__(self, path: str | os.PathLike, create: bool = True):
        """Open the run at ``path``, making the directory when ``create``; commands
        that only read pass ``create=False``, so that a mistyped path is an error
        (``FileNotFoundError``), not a new empty run."""
        self.path = Path(path)
        if create:
            self.path.mkdir(parents=True, exist_ok=True)
        elif not self.path.is_dir():
            raise FileNotFoundError(f"no such run: {self.path} (check the path; a run "
                                    f"is made by the stage that writes it, e.g. ingest)")

    # -- names -------------------------------------------------------------
    def table_path(self, table: str) -> Path:
        return self.path / f"{table}.parquet"

    def part_path(self, table: str, i: int) -> Path:
        return self.table_path(table) / f"part-{i:05d}.parquet"

    def part_files(self, table: str) -> list[Path]:
        """The partition files of a table that are there, in order."""
        return [self.part_path(table, i) for i in sorted(self.done_parts(table))]

    def model_dir(self, name: str) -> Path:
        d = self.path / MODELS / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def file(self, name: str) -> Path:
        """A run-level file (``metrics.json``, ``report.html``, ``features.zarr``)."""
        return self.path / name

    @property
    def log_file(self) -> Path:
        d = self.path / LOGS
        d.mkdir(exist_ok=True)
        return d / LOG

    # -- state -------------------------------------------------------------
    def tables(self) -> list[str]:
        return sorted(p.name[: -len(".parquet")] for p in self.path.glob("*.parquet"))

    def done_parts(self, table: str) -> set[int]:
        d = self.table_path(table)
        if not d.is_dir():
            return set()
        return {int(p.stem.split("-")[1]) for p in d.glob("part-*.parquet")}

    def is_complete(self, table: str) -> bool:
        return (self.table_path(table) / DONE).exists()

    def info(self, table: str) -> dict[str, Any]:
        f = self.table_path(table) / DONE
        return json.loads(f.read_text()) if f.exists() else {}

    def mark_complete(self, table: str, n_parts: int, **info: Any) -> None:
        write_json(self.table_path(table) / DONE, {"partitions": n_parts, **info})

    def status(self) -> pd.DataFrame:
        """One line per table: partitions present, expected, complete, rows."""
        rows = []
        for t in self.tables():
            info = self.info(t)
            n_rows = sum(pq.ParquetFile(p).metadata.num_rows
                         for p in self.table_path(t).glob("part-*.parquet"))
            rows.append({"table": t, "partitions": len(self.done_parts(t)),
                         "expected": info.get("partitions"),
                         "complete": self.is_complete(t), "rows": n_rows})
        return pd.DataFrame(rows)

    # -- reading -----------------------------------------------------------
    def read(self, table: str, columns: list[str] | None = None) -> dd.DataFrame:
        """A stage's table as a dask DataFrame, one partition per file."""
        d = self.table_path(table)
        if not any(d.glob("part-*.parquet")):
            raise FileNotFoundError(f"table {table!r} has no partitions in {self.path}")
        _check_readable(d)
        return dd.read_parquet(str(d), columns=columns, split_row_groups=False,
                               aggregate_files=False)

    # -- writing -----------------------------------------------------------
    def made_from(self, source: str | None, **options: Any) -> dict[str, Any]:
        """What a table made from ``source`` (a table of this run, or a file or folder)
        with ``options`` is made from, as JSON values."""
        src: dict[str, Any] | None = None
        if source is not None:
            p = Path(source)
            if not p.exists() and self.table_path(source).is_dir():
                src = {"table": source, "done": self.info(source)}
            else:
                src = fingerprint(p) if p.exists() else {"name": source}
        return json.loads(json.dumps({"source": src, "options": options}, default=str))

    @contextlib.contextmanager
    def writing(self, table: str, source: str | None = None, overwrite: bool = False,
                **options: Any) -> Iterator[Path]:
        """Hold table ``table``'s lock while it is written from ``source`` with
        ``options``: refuse when it was started from other input or options (or
        remove it first when ``overwrite``), else record what it is made from."""
        made = self.made_from(source, **options)
        d = self.table_path(table)
        with _lock(d / LOCK):
            if overwrite:
                for p in d.iterdir():
                    if p.name != LOCK:
                        shutil.rmtree(p) if p.is_dir() else p.unlink()
            f = d / MADE_FROM
            old = json.loads(f.read_text()) if f.exists() else None
            if old is not None and old != made:
                raise ValueError(f"{d} was made from other input or with other parameters "
                                 f"({_differences(old, made)}); pass --overwrite to replace "
                                 f"it, or give a new --output table")
            if old is None:
                write_json(f, made)
            yield d

    def write(self, table: str, parts: Sequence[Delayed], meta: pd.DataFrame,
              desc: str | None = None, source: str | None = None, overwrite: bool = False,
              **info: Any) -> StageResult:
        """Compute and write partitions ``parts[i]`` that are not done yet, then
        mark the table complete.  ``parts[i]`` produces a pandas frame like ``meta``;
        ``source`` and ``info`` (the options that change results) are what the table
        is made from (``writing``)."""
        with self.writing(table, source, overwrite, **info):
            return self._write(table, parts, meta, desc,
                               **({"source": source} if source is not None else {}), **info)

    def write_part(self, table: str, i: int, df: pd.DataFrame, meta: pd.DataFrame) -> int:
        """Write partition ``i`` of ``table`` now (inside ``writing``; then
        ``mark_complete``), for a stage whose partitions are made one after another
        because each depends on those before; return its rows."""
        return write_frame(df, self.part_path(table, i), arrow_schema(meta))

    def _write(self, table: str, parts: Sequence[Delayed], meta: pd.DataFrame,
               desc: str | None, **info: Any) -> StageResult:
        schema = arrow_schema(meta)
        done = self.done_parts(table)
        todo = [i for i in range(len(parts)) if i not in done]
        tasks = [dask.delayed(write_frame)(parts[i], self.part_path(table, i), schema,
                                           dask_key_name=f"write-{table}-{i}-{uuid.uuid4().hex[:8]}")
                 for i in todo]
        from .cluster import compute

        rows = compute(tasks, desc=desc or table)
        self.mark_complete(table, len(parts), **info)
        result = StageResult(table, len(todo), len(done), int(sum(rows)))
        log.debug("%s", result)
        return result

    def map_table(self, src: str, dst: str, kernel: Callable[..., pd.DataFrame],
                  meta: pd.DataFrame, desc: str | None = None,
                  annotations: dict[str, Any] | None = None,
                  options: dict[str, Any] | None = None, overwrite: bool = False,
                  **kwargs: Any) -> StageResult:
        """Apply a per-partition ``kernel`` to table ``src`` and write table ``dst``;
        ``options``: the stage's options that change results."""
        ddf = self.read(src)
        with dask.annotate(**(annotations or {})):
            mapped = ddf.map_partitions(kernel, meta=meta, **kwargs)
        return self.write(dst, mapped.to_delayed(), meta, desc=desc or dst, source=src,
                          overwrite=overwrite, **(options or {}))

    def write_frame_table(self, table: str, df: pd.DataFrame, meta: pd.DataFrame | None = None,
                          rows_per_part: int = 50_000) -> StageResult:
        """Write a small in-memory frame (ingested structures) as a table."""
        meta = df.iloc[:0] if meta is None else meta
        n = max(1, -(-len(df) // rows_per_part))
        parts = [dask.delayed(df.iloc[i * rows_per_part:(i + 1) * rows_per_part])
                 for i in range(n)]
        return self.write(table, parts, meta)


def table_files(path: str | os.PathLike, table: str, hint: str) -> list[Path]:
    """The part files of ``table`` given as a run directory holding it or as the
    table's own folder (``RUN/<table>.parquet``); none there is an error ending in
    ``hint`` (what makes the table)."""
    p = Path(path)
    if p.suffix == ".parquet":
        p, table = p.parent, p.stem
    files = Run(p, create=False).part_files(table) if p.is_dir() else []
    if not files:
        raise FileNotFoundError(f"no {table} table at {path} ({hint})")
    return files


WHOLE_HASH = 256 << 20   # bytes: files up to this size are hashed whole


def fingerprint(path: Path) -> dict[str, Any]:
    """What tells one input from another: a file's name, size and SHA-256 (a copy of
    the same file is the same input); a file over ``WHOLE_HASH`` bytes by its
    modification time and the SHA-256 of its first MiB instead, so as not to read it
    all; a folder's name and the SHA-256 of its files' paths and fingerprints."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        listing = json.dumps([[str(p.relative_to(path)), _file_fingerprint(p)] for p in files],
                             sort_keys=True)
        return {"folder": path.name, "files": len(files),
                "sha256": hashlib.sha256(listing.encode()).hexdigest()}
    return {"file": path.name, **_file_fingerprint(path)}


def _file_fingerprint(path: Path) -> dict[str, Any]:
    """A file's size and SHA-256 (of its first MiB, and its modification time, when
    it is over ``WHOLE_HASH`` bytes)."""
    st = path.stat()
    if st.st_size <= WHOLE_HASH:
        return {"size": st.st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    with open(path, "rb") as f:
        head = f.read(1 << 20)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "sha256_first_mib": hashlib.sha256(head).hexdigest()}


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    """What differs between two ``made_from`` records, in a few words."""
    def name(src: Any) -> Any:
        return next((src[k] for k in ("table", "file", "folder", "name") if k in src), src) \
            if isinstance(src, dict) else src

    out = []
    if old.get("source") != new.get("source"):
        was, now = name(old.get("source")), name(new.get("source"))
        out.append(f"source {was} -> {now}" if was != now else f"source {now} has changed")
    o, n = old.get("options", {}), new.get("options", {})
    out += [f"{k} {o.get(k)!r} -> {n.get(k)!r}" for k in sorted(set(o) | set(n))
            if o.get(k) != n.get(k)]
    return "; ".join(out)


class TableBusy(OSError):
    """Another process is writing the table."""


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """Hold the lock file ``path`` (created with ``O_EXCL``, holding pid and host); a
    lock of a process that is gone from this host is taken over."""
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(path)
            if holder is None or not _stale(path, holder, me):
                who = "another process" if holder is None else \
                    f"process {holder.get('pid')} on {holder.get('host')}"
                raise TableBusy(f"{path.parent} is being written by {who} (lock file "
                                f"{path}); wait for it to finish, or delete the lock file "
                                f"if that process is gone") from None
            log.warning("taking over %s, left by process %s that is gone", path,
                        holder.get("pid"))
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    else:
        raise TableBusy(f"could not take the lock file {path}")
    _HELD.add(path)
    try:
        yield
    finally:
        _HELD.discard(path)
        path.unlink(missing_ok=True)


def _holder(path: Path) -> dict[str, Any] | None:
    """The pid and host in a lock file; ``{}`` when it is unreadable and old (a writer
    that died between creating and filling it), None while it may be being filled."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        try:
            return {} if time.time() - path.stat().st_mtime > 10 else None
        except FileNotFoundError:
            return {}


def _stale(path: Path, holder: dict[str, Any], me: dict[str, Any]) -> bool:
    """Whether a lock's holder is gone: a dead pid on this host (or this process's own
    pid on a lock it does not hold, a pid reused)."""
    if not holder:
        return True
    if holder.get("host") != me["host"]:
        return False
    pid = int(holder.get("pid", 0))
    if pid == me["pid"]:
        return path not in _HELD
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _check_readable(d: Path) -> None:
    """Fail with the file's name when a partition file is truncated or corrupt."""
    for p in sorted(d.glob("part-*.parquet")):
        try:
            pq.read_metadata(p)
        except Exception as exc:  # pyarrow raises several types for broken files
            raise OSError(f"partition file {p} is unreadable ({exc}); delete it and "
                          f"rerun the stage to rewrite it") from exc
