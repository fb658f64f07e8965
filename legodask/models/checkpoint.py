"""A model's files (``store.MODEL_*``): its configuration (hyper-parameters and
encoder), its loss history, and the checkpoints of its best and last epochs,
written atomically through the run store.  Checkpoints hold tensors and plain data only, read with
``torch.load(weights_only=True)``: a model file from someone else's run is data, and
loading it never runs code."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..store import atomic_path, write_json

if TYPE_CHECKING:
    import torch


def save(obj: Any, path: Path) -> None:
    """Write a checkpoint atomically; ``obj`` holds only tensors, numbers, strings,
    lists and dicts, all that ``load`` accepts."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load(path: Path, device: torch.device) -> dict[str, Any]:
    """A checkpoint written by ``save``, read with ``weights_only``: a file that holds
    anything but tensors and plain data (a pickled object, which could run code when
    loaded) is refused with a ``ValueError``, never executed."""
    import torch

    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(f"{path} holds more than tensors and plain data, and is not "
                         f"loaded: loading it could run code; retrain the model (legodask "
                         f"train) or take the run from a source you trust") from exc


def save_json(obj: Any, path: Path) -> None:
    """Write a model's JSON file (configuration, history) atomically."""
    write_json(path, obj)


def read_json(path: Path) -> Any:
    """A model's JSON file."""
    return json.loads(path.read_text())
