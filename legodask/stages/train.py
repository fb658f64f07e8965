"""``legodask train``: one task fits a GAN, VAE or two-stage CVAE on the run's
features (the task body is ``legodask.models.training.train_model``).

The task runs on a worker with the ``GPU`` resource when the cluster has one (torch
then finds CUDA there), on any worker otherwise.  It streams the features chunk by
chunk and saves into ``RUN/models/<name>/``; rerunning continues from the checkpoint.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from .. import schema as S
from .. import store
from ..models import KINDS
from ..models.encoding import MODES, SITES, open_features, write_features
from ..store import Run

log = logging.getLogger("legodask")


def model_name(kind: str, mode: str, name: str | None = None) -> str:
    """A model's name: ``name``, else ``<kind>-<mode>``."""
    return name or f"{kind}-{mode}"


def is_done(run: Run, opts: dict[str, Any]) -> bool:
    """Whether the model a pipeline's train entry names has its best epoch saved."""
    name = model_name(opts.get("model", "gan"), opts.get("mode", "cont"), opts.get("name"))
    return (run.file(store.MODELS) / str(name) / store.MODEL_BEST).exists()


def train_stage(run: Run, kind: str, mode: str = "cont", epochs: int = 250,
                name: str | None = None, input: str = S.AUGMENTED, resume: bool = True,
                seed: int = 0, sites: str | None = None, check_rows: int = 1000,
                **hparams: Any) -> dict[str, Any]:
    """Encode (when the run's features are missing or of another mode, sites form or
    table; ``sites=None`` keeps the existing features' form) and train."""
    import dask

    from .. import cluster
    from ..models.training import train_model

    if not run.file(store.FEATURES).exists():
        write_features(run, mode, input, sites=sites or "generator")
    else:
        array, encoder = open_features(run)
        wanted = sites or encoder.sites
        if encoder.mode != mode or array.attrs.get("source") != input or encoder.sites != wanted:
            write_features(run, mode, input, sites=wanted)
    name = model_name(kind, mode, name)
    annotations = {"resources": cluster.GPU_RESOURCE} if cluster.has_gpu_worker() else {}
    with dask.annotate(**annotations):
        task = dask.delayed(train_model, pure=False)(str(run.path), name, kind, epochs,
                                                     resume, seed, check_rows, **hparams)
    [summary] = cluster.compute([task], desc=f"train {name}")
    log.debug("trained %s", summary)
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="run directory")
    parser.add_argument("--model", choices=KINDS, required=True)
    parser.add_argument("--mode", choices=MODES, default="cont")
    parser.add_argument("--sites", choices=SITES, default=None,
                        help="how sites are encoded (legodask encode --sites; default: "
                        "as the run's features are, generator when there are none)")
    parser.add_argument("--epochs", type=int, default=250, help="epochs in all (paper: 250-1000)")
    parser.add_argument("--name", help="model name (default <model>-<mode>)")
    parser.add_argument("--input", default=S.AUGMENTED, help="training table")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--lr", type=float, default=None,
                        help="Adam learning rate (default: GAN 2e-4, VAE 1e-3 as TVAE)")
    parser.add_argument("--hidden", type=int, nargs=2, default=None, metavar=("H1", "H2"),
                        help="hidden layer widths of every network (default 512 512; "
                        "the GAN's discriminator 256 256)")
    parser.add_argument("--embedding-dim", type=int, default=128, help="noise / latent size")
    parser.add_argument("--pac", type=int, default=None,
                        help="GAN: rows the discriminator judges together (default 10)")
    parser.add_argument("--dropout", type=float, default=None,
                        help="GAN: discriminator dropout (default 0.5)")
    parser.add_argument("--temperature", type=float, default=None,
                        help="cvae: its discrete combinations drawn with probability "
                        "count ** (1 / temperature) (default 1: as in the training table)")
    parser.add_argument("--stage1-share", type=float, default=None,
                        help="cvae: share of rows whose discrete part comes from the valid "
                        "proposals of its learned stage 1 (default 0: the training "
                        "combinations only)")
    parser.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check-rows", type=int, default=1000,
                        help="rows drawn and decoded after each epoch to log the share of "
                        "valid crystals, which picks the GAN's best epoch (0: none; the "
                        "GAN keeps its last)")


def hparams_of(args: argparse.Namespace) -> dict[str, Any]:
    """Model hyper-parameters from the command line."""
    hp: dict[str, Any] = {"batch_size": args.batch_size, "embedding_dim": args.embedding_dim}
    optional = {"lr": args.lr}
    if args.model == "gan":
        optional.update(pac=args.pac, dropout=args.dropout)
    if args.model == "cvae":
        optional.update(temperature=args.temperature, stage1_share=args.stage1_share)
    hp.update({k: v for k, v in optional.items() if v is not None})
    if args.hidden:
        keys = (("generator_dim", "discriminator_dim") if args.model == "gan"
                else ("compress_dims", "decompress_dims"))
        hp.update({k: tuple(args.hidden) for k in keys})
    return hp


def command(args: argparse.Namespace) -> int:
    summary = train_stage(Run(args.run), args.model, args.mode, args.epochs, args.name,
                          args.input, not args.fresh, args.seed, args.sites, args.check_rows,
                          **hparams_of(args))
    from ..models.training import describe

    print(describe(summary))
    return 0

