"""The rank kernel: relax the pre-relaxed structures with a chain of energy models.

Models run in the order given, as in the paper (ReaxFF first, then MACE): each
relaxes from the geometry the previous one left (the row's own geometry when no
earlier model succeeded).  Per model the stage writes ``energy_<m>`` (eV/atom),
``e_above_<m>`` (above graphite relaxed with the same model in the same run),
``relax_steps_<m>``, ``relaxed_<m>`` (extended-XYZ text), ``error_<m>`` and
``converged_<m>`` (the forces reached ``fmax``; false where the step budget or the
time-out ended a relaxation, which keeps its last energy), ``relaxer_<m>`` (which
relaxer ran: ``lammps``, LAMMPS's own minimiser; ``batched``, the batched BFGS of
machine-learned potentials; ``ase``, ASE's FIRE) and ``spg_relaxed_<m>`` (the space
group of the relaxed structure; 0 where there is none).
Rows that are not valid crystals (or, with ``--only-valid-env``, not valid
environments) are kept unrelaxed with the reason in ``error_<m>``.  With
``--unique`` the input is deduplicated first (the run's rank_unique table, the
``dedup`` stage's join) and only the first row of each crystal is relaxed: the
others are the same crystal, so force-field time goes to distinct structures.
The stage (``stages/rank.py``) maps ``rank_frame`` over the table.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
from ase import Atoms

from .. import schema as S
from ..crystal.convert import row_to_atoms
from .model import ModelUnavailable, get_model
from .relax import RelaxResult, RelaxSettings, graphite, text_to_atoms
from .runner import relax_many

_ENERGY_DTYPES = ("float64", "float64", "int32", "object", "object", "bool", "object",
                  "int16")


def energy_dtypes(models: Sequence[str]) -> dict[str, str]:
    """Dtypes of the columns the stage adds for ``models``."""
    return {c: t for m in models for c, t in zip(S.energy_columns(m), _ENERGY_DTYPES)}


@dataclass(frozen=True)
class Reference:
    """Graphite relaxed with one model: the zero of its ``e_above_<model>`` column."""

    model: str
    energy: float | None     # eV/atom
    steps: int
    error: str | None


def reference_energy(model: str, options: Mapping[str, Any],
                     settings: RelaxSettings) -> Reference:
    """Graphite relaxed with ``model``: the zero of ``e_above_<model>``."""
    res = relax_many(get_model(model, **options), [graphite()], settings)[0]
    return Reference(model, res.energy, res.steps, res.error)


def _skip_reason(rec: Mapping[str, Any], only_valid_env: bool) -> str | None:
    if rec.get(S.VALID_XTAL) is not None and not bool(rec.get(S.VALID_XTAL)):
        return f"not ranked: not a valid crystal ({S.VALID_XTAL} is false)"
    if only_valid_env and not bool(rec.get(S.VALID_ENV)):
        return f"not ranked: not a valid environment ({S.VALID_ENV} is false)"
    return None


def _repeats(df: pd.DataFrame, unique: pd.DataFrame | None) -> list[str | None]:
    """Per row, the id of the earlier row of the same crystal, from ``unique`` (the
    partition's rows in the ``rank_unique`` fingerprints table), else ``None``."""
    if unique is None:
        return [None] * len(df)
    ids = df[S.ID].to_numpy(object) if S.ID in df.columns else None
    if len(unique) != len(df) or (ids is not None and not all(
            a is None or pd.isna(a) or a == b for a, b in zip(ids, unique[S.ID]))):
        raise ValueError("rank --unique: the fingerprints partition does not match the "
                         f"input partition ({len(unique)} rows for {len(df)})")
    repeat = unique[S.FINGERPRINT].notna() & unique[S.FP_DATA].isna()
    return [f if r else None for f, r in zip(unique[S.FIRST_ID], repeat)]


def _start_structures(records: Sequence[Mapping[str, Any]], only_valid_env: bool,
                      repeats: Sequence[str | None]) -> tuple[list[Atoms | None],
                                                              list[str | None]]:
    """Each row's structure, or ``None`` and why it is not ranked."""
    structures: list[Atoms | None] = []
    reasons: list[str | None] = []
    for rec, first in zip(records, repeats):
        why = _skip_reason(rec, only_valid_env)
        if why is None and first is not None:
            why = f"not ranked: the same crystal as {first} (rank --unique)"
        atoms = None
        if why is None:
            try:
                atoms = row_to_atoms(rec)
            except Exception as exc:  # a bad row is a recorded failure
                why = f"not ranked: {type(exc).__name__}: {exc}"
        structures.append(atoms)
        reasons.append(why)
    return structures, reasons


def rank_frame(df: pd.DataFrame, models: Sequence[str],
               options: Mapping[str, Mapping[str, Any]] | None = None,
               settings: RelaxSettings = RelaxSettings(),
               references: Mapping[str, float] | None = None,
               only_valid_env: bool = False,
               unique: pd.DataFrame | None = None) -> pd.DataFrame:
    """The rank kernel: relax every valid row of a partition with each model in turn
    and add its energy columns; with ``unique`` (its fingerprints, row for row) only
    the first row of each crystal.  No row is dropped; failures are recorded."""
    options = options or {}
    references = references or {}
    out = df.copy()
    current, reasons = _start_structures(df.to_dict("records"), only_valid_env,
                                         _repeats(df, unique))
    todo = [i for i, a in enumerate(current) if a is not None]
    for m in models:
        results: list[RelaxResult] = [RelaxResult(error=reasons[i]) for i in range(len(df))]
        try:
            model = get_model(m, **options.get(m, {}))
        except (ModelUnavailable, KeyError) as exc:
            for i in todo:
                results[i] = RelaxResult(error=f"model unavailable: {exc}"[:500])
        else:
            for i, res in zip(todo, relax_many(model, [current[i] for i in todo], settings)):
                results[i] = res
                if res.ok:
                    current[i] = text_to_atoms(res.relaxed)
        ref = references.get(m, float("nan"))
        energy, e_above, steps, relaxed, error, converged, relaxer, spg = S.energy_columns(m)
        out[energy] = pd.Series([r.energy for r in results], index=df.index, dtype="float64")
        out[e_above] = out[energy] - ref
        out[steps] = pd.Series([r.steps for r in results], index=df.index, dtype="int32")
        out[relaxed] = pd.Series([r.relaxed for r in results], index=df.index, dtype=object)
        out[error] = pd.Series([r.error for r in results], index=df.index, dtype=object)
        out[converged] = pd.Series([r.converged for r in results], index=df.index, dtype=bool)
        out[relaxer] = pd.Series([r.relaxer for r in results], index=df.index, dtype=object)
        out[spg] = pd.Series([r.spg for r in results], index=df.index, dtype="int16")
    return out


def rank_unique(df: pd.DataFrame, unique: pd.DataFrame, **kwargs: Any) -> pd.DataFrame:
    """``rank_frame`` with the partition's fingerprints as the second partition."""
    return rank_frame(df, unique=unique, **kwargs)


def _value(text: str) -> Any:
    """A command-line option value: JSON when it parses (numbers, true, lists), else text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_options(pairs: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["reaxff.ffield=ffield.reax.cho", "mace.model=small"]`` -> per-model options."""
    out: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        model, dot, name = key.partition(".")
        if not (sep and dot and model and name):
            raise ValueError(f"--option {pair!r}: expected MODEL.NAME=VALUE")
        out.setdefault(model, {})[name] = _value(value)
    return out
