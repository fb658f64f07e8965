"""``legodask run PIPELINE.toml``: every stage of a run, in order, on one cluster.

A pipeline file has one table per stage, whose keys are that stage's command-line
options (``max-per-structure = 50`` is ``--max-per-structure 50``)::

    [cluster]            # optional: scheduler, workers, threads, memory-limit,
                         # dashboard-address
    workers = 2
    [ingest]             # positional arguments by name: source = "my.db"
    [augment]
    preset = "v1"
    [[train]]            # a list: one entry per model
    model = "gan"
    ...

Stages run in the order of the registry (``legodask.stages.STAGES``); one that is absent from the file is not
run.  A stage whose output is already complete is skipped, and every stage
resumes from its finished partitions, so rerunning an interrupted pipeline
finishes it without redoing work.  ``--set stage.option=value`` overrides a key.
"""

from __future__ import annotations

import argparse
import logging
import time
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

from . import schema as S
from . import store
from .stages import STAGES, Stage
from .store import Run

log = logging.getLogger("legodask")


def load(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Read a pipeline file and apply ``stage.option=value`` overrides."""
    with open(path, "rb") as f:
        spec = tomllib.load(f)
    for item in overrides or []:
        key, _, value = item.partition("=")
        stage, _, option = key.partition(".")
        if not option or not value:
            raise ValueError(f"--set {item!r}: expected stage.option=value")
        try:                              # a TOML value (3, true, "x", [1, 2]) ...
            parsed = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:   # ... or a bare word
            parsed = value
        entries = spec.setdefault(stage, {})
        for entry in entries if isinstance(entries, list) else [entries]:
            entry[option] = parsed
    steps = [name for name, stage in STAGES.items() if stage.pipeline]
    unknown = set(spec) - set(steps) - {"cluster", "pipeline"}
    if unknown:
        raise ValueError(f"{path}: unknown stages {sorted(unknown)}; known: {steps}")
    return spec


def stage_argv(opts: dict[str, Any], positional: set[str] = frozenset()) -> list[str]:
    """A pipeline entry's options as command-line words: positional arguments by
    name first, then ``--key value`` (a list comma-separated, ``true`` a flag)."""
    head, tail = [], []
    for key, value in opts.items():
        if key in positional:
            head.append(str(value))
        elif value is True:
            tail.append(f"--{key}")
        elif value is not False:
            tail += [f"--{key}",
                     ",".join(map(str, value)) if isinstance(value, list) else str(value)]
    return head + tail


def stage_args(module: Any, run_dir: str, opts: dict[str, Any]) -> argparse.Namespace:
    """Parse a stage's options exactly as its command line would."""
    parser = argparse.ArgumentParser(prog=f"legodask {module.__name__}")
    module.add_arguments(parser)
    positional = {a.dest for a in parser._actions if not a.option_strings}
    args = parser.parse_args([*stage_argv(opts, positional), "--run", run_dir])
    args.verbose = False
    return args


def is_done(stage: Stage, module: ModuleType, run: Run, opts: dict[str, Any]) -> bool:
    """Whether a stage's output is complete: the stage's own ``is_done`` when it has
    one, else its output table's completeness; summaries always rerun (cheap, and
    they depend on everything)."""
    if hasattr(module, "is_done"):
        return bool(module.is_done(run, opts))
    if stage.writes and stage.writes[0] in S.TABLES:
        return run.is_complete(opts.get("output", stage.writes[0]))
    return False


def run_pipeline(spec: dict[str, Any], run_dir: str, force: tuple[str, ...] = ()) -> dict[str, float]:
    """Run the stages of ``spec`` in order; return seconds per stage."""
    run = Run(run_dir)
    seconds: dict[str, float] = {}
    for name, stage in STAGES.items():
        if not stage.pipeline or name not in spec:
            continue
        entries = spec[name] if isinstance(spec[name], list) else [spec[name]]
        module = stage.load()
        t0 = time.perf_counter()
        for opts in entries:
            if name not in force and is_done(stage, module, run, opts):
                log.info("%s: already complete, skipped", name)
                continue
            log.info("%s: %s", name, opts or "defaults")
            status = module.command(stage_args(module, run_dir, opts))
            if status:
                raise RuntimeError(f"stage {name} failed with status {status}")
        seconds[name] = round(time.perf_counter() - t0, 1)
    store.write_json(run.file(store.TIMINGS), seconds)
    return seconds
