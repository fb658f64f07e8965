"""Rows in, rows out: pre-relax one row (``prerelax_row``) or every valid row of a
partition (``prerelax_frame``, the stage's pandas kernel), each with its relaxed
cell and coordinates and the PRERELAX columns; a failure is a recorded row."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from ..crystal.decode import DecodeError
from .. import schema as S
from ..crystal.environment import Environment, get_environment
from .options import Options
from .problem import Outcome, Problem, build_problem, relaxed_row
from .rescue import relax_rows

log = logging.getLogger("legodask")

# the columns this stage adds (named in schema.PRERELAX) and their dtypes
EXTRA_DTYPES = dict(zip(S.PRERELAX, ["float64", "bool", "object", "int32", "float64"]))


def outcome_columns(loss: Any, valid: Any, reason: Any, iterations: Any = 0,
                    seconds: Any = 0.0) -> dict[str, Any]:
    """The PRERELAX columns (values or arrays), by name."""
    return dict(zip(S.PRERELAX, (loss, valid, reason, iterations, seconds)))


def _finished_row(row: Mapping[str, Any], p: Problem, out: Outcome) -> dict[str, Any]:
    """The relaxed row with the PRERELAX columns of a checked outcome."""
    return {**row, **relaxed_row(p, out.x),
            **outcome_columns(out.loss, out.valid, out.reason, out.iterations, out.seconds)}


def _failed_row(row: Mapping[str, Any], reason: str) -> dict[str, Any]:
    """The row unrelaxed, with ``reason`` as its ``env_error``."""
    return {**row, **outcome_columns(math.nan, False, reason)}


def prerelax_row(row: Mapping[str, Any], env: Environment | str = "graphite",
                 **opts: Any) -> dict[str, Any]:
    """Pre-relax one row on the CPU (scipy): the row with its relaxed cell and
    coordinates and ``loss, valid_env, env_error, iterations, seconds``."""
    env = get_environment(env)
    options = replace(Options(), **opts)
    try:
        p = build_problem(row)
    except DecodeError as exc:
        return _failed_row(row, f"not a valid crystal: {exc}")
    [out] = relax_rows([row], [p], env, options)
    return _finished_row(row, p, out)


def _resolve_device(device: str) -> str:
    """``cpu`` (scipy), ``torch`` (batched, on the GPU when there is one) or
    ``auto`` (batched on a GPU, scipy without) -> ``scipy``, ``cpu`` or ``cuda``."""
    import torch

    gpu = torch.cuda.is_available()
    if device == "cpu":
        return "scipy"
    if device == "torch":
        return "cuda" if gpu else "cpu"
    if device == "auto":
        return "cuda" if gpu else "scipy"
    raise ValueError(f"unknown device {device!r}: cpu, torch or auto")


def prerelax_frame(df: pd.DataFrame, env: Environment | str = "graphite",
                   device: str = "auto", limit: int | None = None,
                   options: Options = Options(),
                   partition_info: dict[str, Any] | None = None,
                   limits: Sequence[int] | None = None) -> pd.DataFrame:
    """The stage kernel: pre-relax every valid row of a partition.

    Rows that are not valid crystals, that fail, or that lie beyond ``limit``
    valid rows (``limits[i]`` for partition i when mapped over a table) are kept
    with the reason in ``env_error``.  The batched path groups rows by size.
    """
    env = get_environment(env)
    if limits is not None and partition_info is not None:
        limit = limits[partition_info["number"]]
    extra = {c: str(t) for c, t in df.dtypes.items() if c not in S.COLUMNS}
    extra.update(EXTRA_DTYPES)
    frame = S.conform(df)
    valid = frame[S.VALID_XTAL].fillna(False).astype(bool).to_numpy()
    chosen = np.flatnonzero(valid)[:limit]
    # rows not relaxed pass through column-wise, never as Python dicts: a partition
    # of a million-row sample is mostly such rows
    rest = np.setdiff1d(np.arange(len(frame)), chosen)
    error = frame[S.ERROR].iloc[rest].astype("string").fillna("None").to_numpy(dtype=object)
    reason = np.where(valid[rest], "not relaxed (--limit)", "not a valid crystal: " + error)
    passed = frame.iloc[rest].assign(**outcome_columns(math.nan, False, reason))
    records = frame.iloc[chosen].to_dict("records")
    out: list[dict[str, Any] | None] = [None] * len(records)
    todo: list[tuple[int, Problem]] = []
    for k, rec in enumerate(records):
        try:
            todo.append((k, build_problem(rec)))
        except Exception as exc:  # a bad row is recorded, never fatal
            out[k] = _failed_row(rec, f"{type(exc).__name__}: {exc}")
    mode = _resolve_device(device)
    if mode != "cuda":
        import torch

        torch.set_num_threads(1)  # small tensors; dask runs one task per core
    if mode == "scipy":
        for k, p in todo:
            out[k] = _guarded(records[k], p, env, options)
    else:
        todo.sort(key=lambda kp: kp[1].natoms)
        for i in range(0, len(todo), options.batch_size):
            chunk = todo[i:i + options.batch_size]
            try:
                results = relax_rows([records[k] for k, _ in chunk], [p for _, p in chunk],
                                     env, options, mode)
            except Exception as exc:  # the batch failed: relax its rows one by one
                log.warning("batch of %d failed (%s); relaxing one by one", len(chunk), exc)
                results = [None] * len(chunk)
            for (k, p), res in zip(chunk, results):
                out[k] = _finished_row(records[k], p, res) if res is not None else \
                    _guarded(records[k], p, env, options)
    relaxed = pd.DataFrame.from_records(out, index=frame.index[chosen],
                                        columns=list(passed.columns))
    both = pd.concat([S.conform(passed, extra), S.conform(relaxed, extra)])
    both = both.iloc[np.argsort(np.concatenate([rest, chosen]), kind="stable")]
    return both[list(S.empty_frame(extra).columns)]


def _guarded(row: Mapping[str, Any], p: Problem, env: Environment, options: Options
             ) -> dict[str, Any]:
    """The row relaxed on the CPU (scipy), or with the exception as its error."""
    try:
        [res] = relax_rows([row], [p], env, options)
        return _finished_row(row, p, res)
    except Exception as exc:  # anything unforeseen is a recorded failure
        return _failed_row(row, f"{type(exc).__name__}: {exc}")
