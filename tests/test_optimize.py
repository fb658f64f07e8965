"""Latent-space and direct optimisation of the rows a pre-relaxation left short of the
environment: latent steps on a briefly trained two-stage model lower the loss of
every row they touch and keep its space group and Wyckoff set; rounds retry only the
missed rows, the resample control takes no latent step; the stage survives a killed
worker with every row once."""

from __future__ import annotations

import shutil
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import pytest
import torch
from test_encode import training_table
from test_faults import kill_a_worker_during

from legodask import models
from legodask import schema as S
from legodask import store
from legodask.crystal.environment import get_environment
from legodask.crystal.frame import decode_frame
from legodask.crystal.topology import topology_frame
from legodask.models import encoding as E
from legodask.models.base import ChunkStream
from legodask.models.latent import LatentOptions, optimise_latent
from legodask.models.optimize import (_best_latent, decode_rows, load_cvae, optimize_frame,
                                      row_noise)
from legodask.models.steer import LatentObjective
from legodask.models.training import fit
from legodask.prerelax.batch import batch_loss, make_batch
from legodask.prerelax.options import Options
from legodask.prerelax.problem import build_problem
from legodask.stages.optimize import optimize
from legodask.store import Run

HP = {"compress_dims": (64, 64), "decompress_dims": (64, 64), "embedding_dim": 16,
      "batch_size": 40, "lr": 2e-3}
QUICK = Options(hops=0, wide_rcut=0, density=0)       # direct optimisation without rescues


@pytest.fixture(scope="module")
def table(sacada_db: Path) -> pd.DataFrame:
    return training_table(sacada_db, n_structures=12)


@pytest.fixture(scope="module")
def model_dir(table: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-stage model trained briefly (40 epochs) on the twelve crystals."""
    torch.set_num_threads(1)
    enc = E.fit(table, "cont")
    model = models.build("cvae", enc, torch.device("cpu"), **HP)
    out = tmp_path_factory.mktemp("cvae")
    fit(model, enc, ChunkStream(enc.transform(table)), 40, out)
    return out


def missed(table: pd.DataFrame, n: int = 6, reached: int = 0) -> pd.DataFrame:
    """``n`` training rows as a pre-relaxed partition: the first ``reached`` reached
    the environment, the others missed it at loss 1."""
    df = decode_frame(table.iloc[::3].head(n).reset_index(drop=True))
    ok = np.arange(n) < reached
    return topology_frame(df.assign(**{S.LOSS: np.where(ok, 0.0, 1.0), S.VALID_ENV: ok,
                                       S.ENV_ERROR: np.where(ok, None, "missed"),
                                       S.ITERATIONS: 7, S.SECONDS: 0.5}))


def test_latent_steps_lower_every_row_and_keep_its_symmetry(model_dir: Path) -> None:
    model, enc = load_cvae(model_dir)
    env = get_environment("graphite")
    codes = model.catalogue.sample(8, torch.Generator().manual_seed(5))
    z0 = torch.randn(8, HP["embedding_dim"], dtype=torch.float64,
                     generator=torch.Generator().manual_seed(6))
    res = optimise_latent(model, enc, codes, z0, env, LatentOptions(steps=15))
    touched = np.isfinite(res.start)
    assert touched.sum() >= 6, res.reasons
    assert (res.steps[touched] > 0).all()
    assert (res.loss[touched] < res.start[touched]).all(), (res.start, res.loss)
    # the rows decoded at the end: the same group and Wyckoff set, sites on their
    # positions, and the loss reported is theirs
    rows = decode_frame(decode_rows(model, enc, codes, res.z), min_distance=0.0)
    assert (rows[S.SPG].to_numpy() == model.catalogue.spgs(codes)).all()
    assert (rows[S.WP].to_numpy() == model.catalogue.wyckoff(codes)).all()
    assert rows[S.VALID_XTAL][touched].all()
    problems = [build_problem(r) for r in rows[touched].to_dict("records")]
    b = make_batch(problems, [p.x0 for p in problems], env, env.params)
    np.testing.assert_allclose(batch_loss(b, b.x).numpy(), res.loss[touched], rtol=1e-6)


def test_each_row_keeps_its_best_latent_start(model_dir: Path) -> None:
    """With several starts a row gets the latent vector of lowest loss among them:
    never worse than from its first start alone."""
    model, enc = load_cvae(model_dir)
    env = get_environment("graphite")
    codes = model.catalogue.sample(6, torch.Generator().manual_seed(5))
    starts = torch.randn(3, 6, HP["embedding_dim"], dtype=torch.float64,
                         generator=torch.Generator().manual_seed(8))
    opts = LatentOptions(steps=8)
    z, steps = _best_latent(model, enc, codes, starts, env, opts)
    alone = optimise_latent(model, enc, codes, starts[0], env, opts)
    obj = LatentObjective(model, enc, codes, z, env, env.params)
    best = np.full(6, np.nan)
    best[obj.kept] = obj(z).detach().numpy()
    ok = np.isfinite(alone.loss)
    assert ok.sum() >= 4 and (best[ok] <= alone.loss[ok] * (1 + 1e-9)).all()
    assert (steps >= alone.steps).all() and steps.shape == (6,)


def test_rounds_retry_only_the_missed_rows(model_dir: Path, table: pd.DataFrame) -> None:
    df = missed(table, 6, reached=2)
    opts = dict(rounds=2, latent=LatentOptions(steps=10), options=QUICK, device="cpu")
    for resample in (False, True):
        out = optimize_frame(df, str(model_dir), resample=resample, **opts)
        assert out[S.ID].tolist() == df[S.ID].tolist()
        assert (out[S.SPG] == df[S.SPG]).all() and (out[S.WP] == df[S.WP]).all().all()
        pd.testing.assert_frame_equal(out.iloc[:2][list(df.columns)], df.iloc[:2],
                                      check_dtype=False)    # reached: untouched
        assert (out[S.ROUND].iloc[:2] == 0).all() and (out[S.Z_STEPS].iloc[:2] == 0).all()
        rest = out.iloc[2:]
        assert (rest[S.LOSS] <= 1.0).all() and (rest[S.ITERATIONS] > 7).all()
        assert (rest[S.SECONDS] > 0.5).all() and rest[S.ROUND].between(0, 2).all()
        changed = rest[rest[S.ROUND] > 0]
        assert len(changed) and ((changed[S.LOSS] < 1.0) | changed[S.VALID_ENV]).all()
        if resample:
            assert (rest[S.Z_STEPS] == 0).all()
        else:
            assert (rest[S.Z_STEPS] > 0).all()
    # the control's draws depend on the row and the round only
    a = row_noise(["x-0-1", "x-0-2"], 1, 0, 4)
    np.testing.assert_array_equal(a[1], row_noise(["x-0-2"], 1, 0, 4)[0])
    assert not np.allclose(a, row_noise(["x-0-1", "x-0-2"], 2, 0, 4))


def test_stage_resumes_after_a_killed_worker(model_dir: Path, table: pd.DataFrame,
                                             tmp_path: Path) -> None:
    run = Run(tmp_path / "run")
    shutil.copytree(model_dir, run.path / store.MODELS / "cvae-cont")
    df = missed(table, 8, reached=2)
    df[S.ID] = [f"r{i}" for i in range(len(df))]
    parts = [dask.delayed(df.iloc[i:i + 2]) for i in range(0, len(df), 2)]
    run.write(S.PRERELAXED, parts, df.iloc[:0])

    def stage() -> object:
        return optimize(run, "cvae-cont", rounds=1, z_steps=5, device="cpu", options=QUICK)

    out = kill_a_worker_during(run, S.OPTIMIZED, stage)
    assert len(out) == len(df) and out[S.ID].is_unique and set(out[S.ID]) == set(df[S.ID])
    assert (out.set_index(S.ID).loc[df[S.ID].iloc[2:], S.Z_STEPS] > 0).all()
    assert set(S.TOPOLOGY_DTYPES) <= set(out.columns)
    changed = out[out[S.ROUND] > 0]
    assert len(changed) and (changed[S.DIMENSION] >= 0).all()             # the new geometry's net
    with dask.config.set(scheduler="synchronous"):         # done: nothing is redone
        assert optimize(run, "cvae-cont", rounds=1, z_steps=5, device="cpu",
                        options=QUICK).written == 0
