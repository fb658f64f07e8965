"""Stage ``rank``: relax the pre-relaxed structures with a chain of energy models.

Models run in the order given, as in the paper (ReaxFF first, then MACE): each
relaxes from the geometry the previous one left (the row's own geometry when no
earlier model succeeded).  Per model the stage writes ``energy_<m>`` (eV/atom),
``e_above_<m>`` (above graphite relaxed with the same model in the same run),
``relax_steps_<m>``, ``relaxed_<m>`` (extended-XYZ text), ``error_<m>`` and
``converged_<m>`` (the forces reached ``fmax``; false where the step budget ended
a relaxation that still has an energy).
Rows that are not valid crystals (or, with ``--only-valid-env``, not valid
environments) are kept unrelaxed with the reason in ``error_<m>``.  With
``--unique`` the input is deduplicated first (``RUN/rank_unique.parquet``, the
``dedup`` stage's join) and only the first row of each crystal is relaxed: the
others are the same crystal, so force-field time goes to distinct structures.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, fields
from typing import Any

import dask
import pandas as pd
from ase import Atoms

from . import cluster, codec
from . import dedup as D
from . import fingerprint as F
from . import schema as S
from .energy import ModelUnavailable, get_model
from .energy.relax import RelaxResult, RelaxSettings, graphite, text_to_atoms
from .energy.runner import relax_many
from .store import Run, StageResult

log = logging.getLogger("legodask")

_ENERGY_DTYPES = ("float64", "float64", "int32", "object", "object", "bool")
REFERENCES_FILE = "rank_references.json"
UNIQUE_TABLE = "rank_unique"


def energy_dtypes(models: Sequence[str]) -> dict[str, str]:
    """Dtypes of the columns the stage adds for ``models``."""
    return {c: t for m in models for c, t in zip(S.energy_columns(m), _ENERGY_DTYPES)}


def reference_energy(model: str, options: Mapping[str, Any],
                     settings: RelaxSettings) -> dict[str, Any]:
    """Graphite relaxed with ``model``: the zero of ``e_above_<model>``."""
    res = relax_many(get_model(model, **options), [graphite()], settings)[0]
    return {"model": model, "energy": res.energy, "steps": res.steps, "error": res.error}


def _skip_reason(rec: Mapping[str, Any], only_valid_env: bool) -> str | None:
    if rec.get("valid_xtal") is not None and not bool(rec.get("valid_xtal")):
        return "not ranked: not a valid crystal (valid_xtal is false)"
    if only_valid_env and not bool(rec.get("valid_env")):
        return "not ranked: not a valid environment (valid_env is false)"
    return None


def _repeats(df: pd.DataFrame, unique: pd.DataFrame | None) -> list[str | None]:
    """Per row, the id of the earlier row of the same crystal, from ``unique`` (the
    partition's rows in the ``rank_unique`` fingerprints table), else ``None``."""
    if unique is None:
        return [None] * len(df)
    ids = df["id"].to_numpy(object) if "id" in df.columns else None
    if len(unique) != len(df) or (ids is not None and not all(
            a is None or pd.isna(a) or a == b for a, b in zip(ids, unique["id"]))):
        raise ValueError("rank --unique: the fingerprints partition does not match the "
                         f"input partition ({len(unique)} rows for {len(df)})")
    repeat = unique[S.FINGERPRINT].notna() & unique[F.FP_DATA].isna()
    return [f if r else None for f, r in zip(unique[D.FIRST_ID], repeat)]


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
                atoms = codec.row_to_atoms(rec)
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
        energy, e_above, steps, relaxed, error, converged = S.energy_columns(m)
        out[energy] = pd.Series([r.energy for r in results], index=df.index, dtype="float64")
        out[e_above] = out[energy] - ref
        out[steps] = pd.Series([r.steps for r in results], index=df.index, dtype="int32")
        out[relaxed] = pd.Series([r.relaxed for r in results], index=df.index, dtype=object)
        out[error] = pd.Series([r.error for r in results], index=df.index, dtype=object)
        out[converged] = pd.Series([r.converged for r in results], index=df.index, dtype=bool)
    return out


def _rank_unique(df: pd.DataFrame, unique: pd.DataFrame, **kwargs: Any) -> pd.DataFrame:
    """``rank_frame`` with the partition's fingerprints as the second partition."""
    return rank_frame(df, unique=unique, **kwargs)


def rank(run: Run, models: Sequence[str], input: str = "prerelaxed", output: str = "ranked",
         options: Mapping[str, Mapping[str, Any]] | None = None,
         settings: RelaxSettings = RelaxSettings(),
         only_valid_env: bool = False, unique: bool = False) -> StageResult:
    """Map ``rank_frame`` over table ``input`` into table ``output``; graphite is
    relaxed with each model first (one task per model) as the energy zero.  With
    ``unique`` the input is deduplicated first and repeats are not relaxed."""
    options = {m: dict((options or {}).get(m, {})) for m in models}
    gpu = any(get_model(m, **options[m]).gpu for m in models) and cluster.has_gpu_worker()
    annotations = {"resources": cluster.GPU_RESOURCE} if gpu else None
    with dask.annotate(**(annotations or {})):
        tasks = [dask.delayed(reference_energy)(m, options[m], settings) for m in models]
    refs = cluster.compute(tasks, desc="graphite references")
    run.file(REFERENCES_FILE).write_text(json.dumps(refs, indent=1))
    for r in refs:
        if r["error"]:
            log.warning("rank: graphite with %s failed (%s); e_above_%s is NaN",
                        r["model"], r["error"], r["model"])
    references = {r["model"]: r["energy"] for r in refs}
    dtypes = run.read(input).dtypes
    meta = pd.DataFrame({c: pd.Series(dtype=t) for c, t in
                         {**dtypes.to_dict(), **energy_dtypes(models)}.items()})
    kwargs = dict(models=list(models), options=options, settings=settings,
                  references=references, only_valid_env=only_valid_env)
    made_with = {"models": list(models), "options": options, "settings": asdict(settings),
                 "only_valid_env": only_valid_env, "unique": unique}
    if not unique:
        return run.map_table(input, output, rank_frame, meta, desc=f"rank {','.join(models)}",
                             annotations=annotations, options=made_with, **kwargs)
    if not run.is_complete(UNIQUE_TABLE):
        D.dedup(run, input, UNIQUE_TABLE,
                require=["valid_xtal", *(["valid_env"] if only_valid_env else [])])
    fps = run.read(UNIQUE_TABLE, columns=["id", S.FINGERPRINT, F.FP_DATA, D.FIRST_ID])
    with dask.annotate(**(annotations or {})):
        mapped = run.read(input).map_partitions(_rank_unique, fps, align_dataframes=False,
                                                meta=meta, **kwargs)
    return run.write(output, mapped.to_delayed(), meta, desc=f"rank {','.join(models)}",
                     source=input, **made_with)


# ---------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------

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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="run directory")
    parser.add_argument("--models", default="reaxff",
                        help="comma-separated energy models, relaxed in this order "
                             "(reaxff, mace, chgnet, gulp, tersoff, rebo, airebo)")
    parser.add_argument("--input", default="prerelaxed", help="table to rank")
    parser.add_argument("--output", default="ranked", help="table to write")
    parser.add_argument("--only-valid-env", action="store_true",
                        help="rank only rows whose valid_env is true")
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
    g.add_argument("--maxstep", type=float, default=defaults.maxstep, help="FIRE maxstep, Å")
    g.add_argument("--batch-size", type=int, default=defaults.batch_size,
                   help="structures per batch for batched models (MACE)")
    g.add_argument("--retries", type=int, default=defaults.retries,
                   help="retries of a structure whose child process died")


def command(args: argparse.Namespace) -> int:
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
    log.info("rank: models %s, settings %s", models, asdict(settings))
    result = rank(Run(args.run), models, args.input, args.output, options, settings,
                  args.only_valid_env, args.unique)
    print(result)
    return 0
