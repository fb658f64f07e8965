"""GAN and VAE: overfitted on a handful of crystals they give valid crystals, and
regenerate training rows; training logs, keeps the best epoch and resumes exactly.

The networks are small so that this takes seconds.  The GAN's discriminator judges
rows one by one here (``pac=1``): with twelve training rows, packs of ten (the
default, against mode collapse on large data) need about five times more steps
before the rows it makes hang together.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_encode import training_table

from legodask import models
from legodask import schema as S
from legodask import store
from legodask.analysis.stats import Tolerance, match_training, training_keys
from legodask.crystal.frame import decode_frame
from legodask.models import encoding as E
from legodask.models.base import ChunkStream, TabularModel
from legodask.models.grid import Grid
from legodask.models.sampling import validity
from legodask.models.training import fit

SMALL = {"gan": {"generator_dim": (64, 64), "discriminator_dim": (64, 64), "dropout": 0.0, "pac": 1,
                 "batch_size": 200, "lr": 2e-3},
         "vae": {"compress_dims": (128, 128), "decompress_dims": (128, 128),
                 "batch_size": 40, "lr": 2e-3}}


@pytest.fixture(scope="module")
def on_grid(sacada_db: Path) -> pd.DataFrame:
    """Four small crystals with three orbit representatives each, on the "dis" grid."""
    grid = Grid()
    table = training_table(sacada_db, n_structures=4)
    return decode_frame(S.conform(grid.from_bins(grid.to_bins(table))))


def _train(kind: str, table: pd.DataFrame, epochs: int, out: Path, mode: str = "dis",
           check_rows: int = 0, **hp: object
           ) -> tuple[TabularModel, E.Encoder, list[dict[str, float]]]:
    torch.set_num_threads(1)
    enc = E.fit(table, mode)
    model = models.build(kind, enc, torch.device("cpu"), **{**SMALL[kind], **hp})
    check = (lambda m: validity(m, enc, check_rows)) if check_rows else None
    history = fit(model, enc, ChunkStream(enc.transform(table)), epochs, out, check=check)
    return model, enc, history


def _samples(model: TabularModel, enc: E.Encoder, n: int, seed: int) -> pd.DataFrame:
    df = enc.inverse_transform(model.sample(n, torch.Generator().manual_seed(seed)))
    df["id"] = [f"s-{i}" for i in range(n)]
    return decode_frame(df)


@pytest.mark.parametrize("kind,epochs", [("vae", 500), ("gan", 250)])
def test_overfitted_model_gives_valid_crystals_and_training_rows(
        kind: str, epochs: int, on_grid: pd.DataFrame, tmp_path: Path) -> None:
    model, enc, history = _train(kind, on_grid, epochs, tmp_path)
    assert len(history) == epochs
    out = _samples(model, enc, 200, seed=1)
    assert out["valid_xtal"].mean() > 0.5, out["error"].value_counts().head()
    matches = match_training(out, training_keys(on_grid), Tolerance())
    # rows that are training rows (after decoding), and most training crystals among them
    assert matches["id"].nunique() >= 20
    assert matches["train_parent"].nunique() >= 2
    # every space group the model makes is one it saw
    assert set(out.loc[out["valid_xtal"], "spg"]) <= set(on_grid["spg"])
    if kind == "gan":  # the generator follows its condition
        cats = enc.categories("spg")
        x = model.sample(200, torch.Generator().manual_seed(2), condition=[1])
        assert (enc.inverse_transform(x)["spg"] == cats[1]).mean() > 0.8


def test_training_logs_keeps_best_and_resumes_exactly(on_grid: pd.DataFrame,
                                                      tmp_path: Path) -> None:
    torch.manual_seed(0)
    _, _, straight = _train("vae", on_grid, 6, tmp_path / "straight")
    _, _, first = _train("vae", on_grid, 3, tmp_path / "resumed")
    model, enc, resumed = _train("vae", on_grid, 6, tmp_path / "resumed")
    assert [h["epoch"] for h in resumed] == list(range(6))
    assert resumed[:3] == first
    np.testing.assert_allclose([h["loss"] for h in resumed], [h["loss"] for h in straight],
                               rtol=1e-5)
    d = tmp_path / "resumed"
    assert json.loads((d / store.MODEL_LOSSES).read_text()) == resumed
    assert (d / store.MODEL_PLOT).stat().st_size > 1000
    best = torch.load(d / store.MODEL_BEST, weights_only=True)["epoch"]
    assert best == int(np.argmin([h["loss"] for h in resumed]))
    loaded, loaded_enc = models.load(d)
    assert loaded_enc.to_dict() == enc.to_dict()
    # a rerun with its epochs done trains nothing and rewrites no file
    stamps = {f.name: f.stat().st_mtime_ns for f in d.iterdir()}
    _, _, again = _train("vae", on_grid, 6, d)
    assert again == resumed
    assert {f.name: f.stat().st_mtime_ns for f in d.iterdir()} == stamps


def test_gan_keeps_the_epoch_with_most_valid_crystals(on_grid: pd.DataFrame,
                                                      tmp_path: Path) -> None:
    """A WGAN's generator loss is measured against a discriminator that changes, so
    epochs are ranked by the share of rows drawn that decode as valid crystals; the
    kept epoch draws that share again."""
    _, enc, history = _train("gan", on_grid, 12, tmp_path, check_rows=300)
    valid = [h["valid"] for h in history]
    assert all(0 <= h["valid"] <= h["valid_no_distance"] <= 1 for h in history)
    assert max(valid) > min(valid)  # the shares move as it learns
    kept = torch.load(tmp_path / store.MODEL_BEST, weights_only=True)["epoch"]
    assert kept == int(np.argmax(valid))
    loaded, _ = models.load(tmp_path, torch.device("cpu"))
    assert validity(loaded, enc, 300)["valid"] == max(valid)
    # without checks the last epoch is kept
    _train("gan", on_grid, 3, tmp_path / "unchecked")
    assert torch.load(tmp_path / "unchecked" / store.MODEL_BEST, weights_only=True)["epoch"] == 2


def test_chunk_stream_visits_every_row_once(tmp_path: Path) -> None:
    import zarr

    data = np.arange(50, dtype=np.float32).reshape(25, 2)
    arr = zarr.create_array(str(tmp_path / "x.zarr"), shape=data.shape, chunks=(7, 2),
                            dtype="float32")
    arr[:] = data
    stream = ChunkStream(arr)
    chunks = list(stream.epoch(np.random.default_rng(0)))
    assert sorted(len(c) for c in chunks) == [4, 7, 7, 7]
    np.testing.assert_array_equal(np.sort(np.concatenate(chunks)[:, 0]), data[:, 0])


def test_generator_alone_samples_as_the_whole_gan(on_grid: pd.DataFrame,
                                                  tmp_path: Path) -> None:
    """A GAN file without its discriminator (for sampling alone) draws the same rows."""
    _train("gan", on_grid, 2, tmp_path)
    whole, _ = models.load(tmp_path, torch.device("cpu"))
    state = torch.load(tmp_path / store.MODEL_BEST, weights_only=True)
    state["model"].pop("D")
    torch.save(state, tmp_path / store.MODEL_BEST)
    alone, _ = models.load(tmp_path, torch.device("cpu"))
    same = [m.sample(50, torch.Generator().manual_seed(3)) for m in (whole, alone)]
    np.testing.assert_array_equal(*same)
