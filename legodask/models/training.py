"""The training loop: epochs over a stream of feature chunks, the history, the best
epoch and a resumable checkpoint; ``train_model`` is the train stage's task body.

After each epoch an optional ``check`` (e.g. ``sampling.validity``: the share of rows
drawn that decode as valid crystals) adds its values to the epoch's losses; the loop
itself knows nothing of crystals."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import store
from . import checkpoint
from .base import SHARES, ChunkStream, TabularModel
from .encoding import Encoder
from .plot import plot_losses

log = logging.getLogger("legodask")

Check = Callable[[TabularModel], dict[str, float]]


def best_epoch(history: list[dict[str, float]], model: TabularModel) -> dict[str, float] | None:
    """The epoch of ``history`` with the best ``model.score``; the last epoch when none
    has one (a GAN trained without validity checks)."""
    scored = [h for h in history if np.isfinite(h.get(model.score, np.nan))]
    if not scored:
        return history[-1] if history else None
    return (max if model.maximise else min)(scored, key=lambda h: h[model.score])


def fit(model: TabularModel, encoder: Encoder, stream: ChunkStream, epochs: int, out: Path,
        resume: bool = True, seed: int = 0, check: Check | None = None
        ) -> list[dict[str, float]]:
    """Train ``model`` for ``epochs`` epochs in all, saving into ``out``; with ``resume``
    a checkpoint there of the same configuration (model and encoder) is continued.
    After each epoch ``check(model)``, when given, adds its values to the epoch's.
    Returns the loss history."""
    out.mkdir(parents=True, exist_ok=True)
    config = json.loads(json.dumps({**model.config(), "encoder": encoder.to_dict()}))
    config_file = out / store.MODEL_CONFIG
    same = config_file.exists() and checkpoint.read_json(config_file) == config
    if resume and (out / store.MODEL_LAST).exists() and not same:
        log.warning("%s holds a model of another configuration: training anew", out)
    checkpoint.save_json(config, config_file)
    history: list[dict[str, float]] = []
    if resume and same and (out / store.MODEL_LAST).exists():
        ckpt = checkpoint.load(out / store.MODEL_LAST, model.device)
        model.load_state_dict(ckpt["model"])
        history = ckpt["history"]
        torch.set_rng_state(ckpt["torch_rng"].cpu())  # map_location may have moved it
        rng = np.random.default_rng()
        rng.bit_generator.state = ckpt["numpy_rng"]
        log.info("resuming %s at epoch %d", out, len(history))
    else:
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        model.prepare(stream)
    start = len(history)
    for epoch in range(start, epochs):
        t = time.perf_counter()
        losses = {k: float(v) for k, v in model.train_epoch(stream, rng).items()}
        losses["seconds"] = time.perf_counter() - t  # the training alone, not the check
        if check is not None:
            losses.update(check(model))
        losses["epoch"] = epoch
        history.append(losses)
        if best_epoch(history, model) is losses:
            checkpoint.save({"model": model.state_dict(optimizer=False), "epoch": epoch},
                            out / store.MODEL_BEST)
        checkpoint.save({"model": model.state_dict(), "history": history,
                         "torch_rng": torch.get_rng_state(), "numpy_rng": rng.bit_generator.state},
                        out / store.MODEL_LAST)
        checkpoint.save_json(history, out / store.MODEL_LOSSES)
        log.debug("epoch %d: %s", epoch, losses)
    if len(history) > start or not (out / store.MODEL_PLOT).exists():
        plot_losses(history, out / store.MODEL_PLOT, model.kind)
    return history


def train_model(run_path: str, name: str, kind: str, epochs: int, resume: bool = True,
                seed: int = 0, check_rows: int = 1000, **hparams: Any) -> dict[str, Any]:
    """Train model ``name`` on the run's features (the task body); a summary.  After
    each epoch ``check_rows`` rows are drawn and decoded (``sampling.validity``; 0:
    none)."""
    from . import build
    from .encoding import open_features
    from .sampling import validity

    run = store.Run(run_path)
    array, encoder = open_features(run)
    model = build(kind, encoder, seed=seed, **hparams)
    check = (lambda m: validity(m, encoder, check_rows, seed)) if check_rows else None
    t = time.perf_counter()
    history = fit(model, encoder, ChunkStream(array), epochs, run.model_dir(name),
                  resume=resume, seed=seed, check=check)
    best = best_epoch(history, model) or {}
    return {"model": name, "kind": kind, "device": str(model.device), "epochs": len(history),
            "best_epoch": best.get("epoch"),
            **{k: best[k] for k in (model.score, *SHARES) if k in best},
            "rows": int(array.shape[0]), "features": encoder.width,
            "seconds": round(time.perf_counter() - t, 2), **model.notes()}


def describe(summary: dict[str, Any]) -> str:
    """A training summary in one line: what was trained, where, how long, which epoch
    was kept and the shares of its check's rows that decode as valid crystals."""
    shares = ", ".join(f"{k.replace('_', ' ')} {summary[k]:.1%}" for k in SHARES if k in summary)
    return (f"{summary['model']}: {summary['epochs']} epochs of {summary['rows']} rows on "
            f"{summary['device']} in {summary['seconds']:.0f} s; kept epoch "
            f"{summary['best_epoch']}" + (f" ({shares})" if shares else ""))
