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

Stages run in the order of ``STAGES``; one that is absent from the file is not
run.  A stage whose output is already complete is skipped, and every stage
resumes from its finished partitions, so rerunning an interrupted pipeline
finishes it without redoing work.  ``--set stage.option=value`` overrides a key.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .store import Run

log = logging.getLogger("legodask")


def _table_done(table: str) -> Callable[[Run, dict[str, Any]], bool]:
    return lambda run, opts: run.is_complete(opts.get("output", table))


def _never_done(run: Run, opts: dict[str, Any]) -> bool:
    """Summaries (metrics, report) are cheap and depend on everything: always rerun."""
    return False


def _model_done(run: Run, opts: dict[str, Any]) -> bool:
    from .models import BEST

    name = opts.get("name") or f"{opts.get('model', 'gan')}-{opts.get('mode', 'cont')}"
    return (run.path / "models" / str(name) / BEST).exists()


# stage -> (module, "is its output complete?")
STAGES: dict[str, tuple[str, Callable[[Run, dict[str, Any]], bool]]] = {
    "ingest": ("legodask.sources", _table_done("ingested")),
    "augment": ("legodask.augment", _table_done("augmented")),
    "encode": ("legodask.encode", lambda run, opts: run.file("features.zarr").exists()),
    "train": ("legodask.train", _model_done),
    "sample": ("legodask.sample", _table_done("samples")),
    "prerelax": ("legodask.stages.prerelax", _table_done("prerelaxed")),
    "rank": ("legodask.rank", _table_done("ranked")),
    "dedup": ("legodask.dedup", _table_done("fingerprints")),
    "metrics": ("legodask.metrics", _never_done),
    "report": ("legodask.report", _never_done),
}


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
    unknown = set(spec) - set(STAGES) - {"cluster", "pipeline"}
    if unknown:
        raise ValueError(f"{path}: unknown stages {sorted(unknown)}; known: {list(STAGES)}")
    return spec


def stage_args(module: Any, run_dir: str, opts: dict[str, Any]) -> argparse.Namespace:
    """Parse a stage's options exactly as its command line would."""
    parser = argparse.ArgumentParser(prog=f"legodask {module.__name__}")
    module.add_arguments(parser)
    positional = {a.dest for a in parser._actions if not a.option_strings}
    argv = ["--run", run_dir]
    tail = []
    for key, value in opts.items():
        if key in positional:
            tail.append(str(value))
        elif value is True:
            argv.append(f"--{key}")
        elif value is not False:
            argv += [f"--{key}",
                     ",".join(map(str, value)) if isinstance(value, list) else str(value)]
    args = parser.parse_args(tail + argv)
    args.verbose = False
    return args


def run_pipeline(spec: dict[str, Any], run_dir: str, force: tuple[str, ...] = ()) -> dict[str, float]:
    """Run the stages of ``spec`` in order; return seconds per stage."""
    run = Run(run_dir)
    seconds: dict[str, float] = {}
    for stage, (module_name, is_done) in STAGES.items():
        if stage not in spec:
            continue
        entries = spec[stage] if isinstance(spec[stage], list) else [spec[stage]]
        module = importlib.import_module(module_name)
        t0 = time.perf_counter()
        for opts in entries:
            if stage not in force and is_done(run, opts):
                log.info("%s: already complete, skipped", stage)
                continue
            log.info("%s: %s", stage, opts or "defaults")
            status = module.command(stage_args(module, run_dir, opts))
            if status:
                raise RuntimeError(f"stage {stage} failed with status {status}")
        seconds[stage] = round(time.perf_counter() - t0, 1)
    run.file("timings.json").write_text(json.dumps(seconds, indent=1))
    return seconds


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pipeline", help="pipeline file (TOML), e.g. pipelines/quickstart.toml")
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--set", action="append", default=[], metavar="STAGE.OPTION=VALUE",
                   help="override a pipeline option (repeatable)")
    p.add_argument("--force", default="", help="comma-separated stages to rerun even if done")
    from .cli import add_cluster_arguments

    add_cluster_arguments(p)


def command(args: argparse.Namespace) -> int:
    """Run a pipeline on the cluster of its ``[cluster]`` table, unless the command
    line names one."""
    from .cluster import connect

    spec = load(args.pipeline, args.set)
    conf = spec.get("cluster", {})
    with connect(args.scheduler or conf.get("scheduler"),
                 args.workers or conf.get("workers"),
                 conf.get("threads", args.threads),
                 conf.get("memory-limit", args.memory_limit),
                 args.gpus or conf.get("gpus", 0), slurm=conf.get("slurm"),
                 dashboard_address=conf.get("dashboard-address", args.dashboard_address)):
        seconds = run_pipeline(spec, args.run, tuple(filter(None, args.force.split(","))))
    print("stage seconds: " + ", ".join(f"{k} {v}" for k, v in seconds.items()))
    return 0
