"""The one registry of legodask's commands, read by the command line and by pipelines.

Each stage lives in ``legodask/stages/<name>.py`` with ``add_arguments(parser)``
and ``command(args) -> int``: its options, and the calls that map kernels (which
live elsewhere) over the run's tables.  The registry says what each reads and
writes, whether it needs a Dask cluster, whether it can use a GPU worker, and
whether ``legodask run`` runs it (in registry order).  A stage module is imported
only when its command runs, so a light command stays light, and no stage imports
another.
"""

from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass
from types import ModuleType

from .. import schema as S
from .. import store


@dataclass(frozen=True)
class Stage:
    """One command: its name, one-line help, inputs and outputs, and where it runs."""

    name: str
    help: str
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    cluster: bool = False       # runs inside a Dask cluster (LocalCluster by default)
    gpu: bool = False           # goes to a GPU worker when the cluster has one
    pipeline: bool = False      # a step of ``legodask run``
    # "write": logs into the run, making it when the stage reads nothing from it;
    # "report": reads a run that must exist and logs into it; "read": reads a run that
    # must exist and writes nothing there (works on a run that is not the user's to write).
    access: str = "write"

    @property
    def module(self) -> str:
        return f"legodask.stages.{self.name}"

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)


STAGES: dict[str, Stage] = {s.name: s for s in [
    Stage("ingest", "read known structures into a run's ingested table",
          writes=(S.INGESTED,), cluster=True, pipeline=True),
    Stage("decode", "decode raw rows: valid_xtal, natoms, n_sites, dof",
          writes=(S.DECODED,), cluster=True),
    Stage("augment", "subgroup and orbit-representative augmentation",
          reads=(S.INGESTED,), writes=(S.AUGMENTED,), cluster=True, pipeline=True),
    Stage("encode", "fit the encoder and write the run's features",
          reads=(S.AUGMENTED,), writes=(store.FEATURES,), pipeline=True),
    Stage("train", "train a GAN, VAE or two-stage CVAE on the augmented table",
          reads=(store.FEATURES,), writes=(store.MODELS,), cluster=True, gpu=True,
          pipeline=True),
    Stage("sample", "sample rows from a trained model and decode them",
          reads=(store.MODELS,), writes=(S.SAMPLES,), cluster=True, gpu=True, pipeline=True),
    Stage("prerelax", "pre-relax towards the reference environment",
          reads=(S.SAMPLES,), writes=(S.PRERELAXED,), cluster=True, gpu=True, pipeline=True),
    Stage("optimize", "optimise the rows that missed the environment again, in latent "
          "space and directly", reads=(S.PRERELAXED,), writes=(S.OPTIMIZED,), cluster=True,
          gpu=True, pipeline=True),
    Stage("rank", "relax and rank energies with force fields",
          reads=(S.PRERELAXED,), writes=(S.RANKED,), cluster=True, pipeline=True),
    Stage("known", "add known structures (default: SACADA sp2) to a known table",
          writes=(S.KNOWN,), cluster=True, pipeline=True),
    Stage("dedup", "fingerprint and deduplicate incrementally",
          reads=(S.RANKED,), writes=(S.FINGERPRINTS,), cluster=True, pipeline=True),
    Stage("metrics", "the paper's counts for a run",
          reads=(S.SAMPLES, S.PRERELAXED, S.RANKED, S.FINGERPRINTS),
          writes=(store.METRICS,), pipeline=True, access="report"),
    Stage("report", "write the run's HTML report",
          reads=(store.METRICS,), writes=(store.REPORT,), pipeline=True, access="report"),
    Stage("run", "run a TOML pipeline end to end"),
    Stage("query", "run SQL (DuckDB) over a run's tables", access="read"),
    Stage("export", "write structures as CIF / extxyz / ASE db", access="read"),
    Stage("stats", "summaries of a table against the paper's", access="report"),
    Stage("status", "which stages and partitions of a run are done", access="read"),
]}


def add_overwrite(parser: argparse.ArgumentParser) -> None:
    """``--overwrite``: a stage's table made from other input or options is refused
    unless the user asks to replace it."""
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the output table when it was made from other input "
                             "or with other options (else such a rerun is refused)")


def add_environment(parser: argparse.ArgumentParser) -> None:
    """``--env``: the reference environment that pre-relaxation steers towards."""
    parser.add_argument("--env", default="graphite",
                        help="reference environment: graphite, cristobalite or a structure file")
