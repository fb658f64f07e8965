"""The two-stage model: stage 1 draws only valid discrete combinations, and only
those of the classes asked; the differentiable inverse is the encoder's inverse;
gradients from the environment loss back to the latent vector are exact; the
train and sample stages run it through a run directory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_encode import training_table

from legodask import models
from legodask import schema as S
from legodask import store
from legodask.crystal.environment import get_environment
from legodask.crystal.frame import decode_frame
from legodask.models import catalogue as C
from legodask.models import encoding as E
from legodask.models.base import ChunkStream
from legodask.models.classes import Classes, conventional_atoms, crystal_system
from legodask.models.cvae import CVAE
from legodask.models.sampling import draw
from legodask.models.steer import LatentObjective
from legodask.models.torch_transform import TorchInverse
from legodask.models.training import fit
from legodask.prerelax.batch import batch_loss
from legodask.stages.sample import sample_stage
from legodask.stages.train import train_stage
from legodask.store import Run

HP = {"compress_dims": (64, 64), "decompress_dims": (64, 64), "embedding_dim": 16,
      "batch_size": 40, "lr": 2e-3}


@pytest.fixture(scope="module")
def table(sacada_db: Path) -> pd.DataFrame:
    """Twelve small crystals (two of them cubic), three orbit representatives each."""
    return training_table(sacada_db, n_structures=12)


@pytest.fixture(scope="module")
def trained(table: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory
            ) -> tuple[CVAE, E.Encoder, Path]:
    torch.set_num_threads(1)
    enc = E.fit(table, "cont")
    model = models.build("cvae", enc, torch.device("cpu"), **HP)
    out = tmp_path_factory.mktemp("cvae")
    fit(model, enc, ChunkStream(enc.transform(table)), 40, out)
    return model, enc, out


def test_torch_inverse_is_the_encoders_inverse(table: pd.DataFrame) -> None:
    enc = E.fit(table, "cont")
    x = enc.transform(table)
    ref = enc.inverse_transform(x)
    rows = TorchInverse(enc).rows(torch.as_tensor(x), ref[S.SPG], ref[S.WP])
    np.testing.assert_allclose(rows.cell.numpy(), ref[S.CELL].to_numpy(float), atol=1e-6)
    xyz = ref[S.XYZ_FLAT].to_numpy(float).reshape(len(ref), S.MAX_SITES, 3)
    np.testing.assert_allclose(rows.xyz.numpy(), xyz, atol=1e-6)  # NaN where unused, too
    # and the rows are the training rows: the encoding loses nothing but float32's digits
    np.testing.assert_allclose(rows.cell.numpy(), table[S.CELL].to_numpy(float), atol=1e-5)
    # soft modes read from one-hot blocks are the hard ones
    soft = TorchInverse(enc).rows(torch.as_tensor(x), ref[S.SPG], ref[S.WP], soft=True)
    np.testing.assert_allclose(soft.cell.numpy(), rows.cell.numpy(), atol=1e-12)


def test_catalogue_checks_every_combination(table: pd.DataFrame) -> None:
    a, b = 8, 7                                                  # 8a and 8b of Fd-3m
    assert C.check(227, [a, -1], None, 2000) is None                 # diamond
    assert C.check(227, [-1, -1], None, 2000) == C.NO_SITE
    assert C.check(227, [99], None, 2000) == C.NO_POSITION.format(wp=99, spg=227)
    assert C.check(227, [a, a], None, 2000) == C.FIXED_TWICE.format(label="8a", n=2)
    assert C.check(227, [a, b], None, 8) == C.TOO_MANY.format(natoms=16, limit=8)
    assert C.check(227, [a], [None], 2000) == C.NO_ELEMENT.format(k=0)
    cats = {S.SPG: [194, 227], **{c: [-1, 7, 8, 11] for c in S.WP}}
    cat = C.Catalogue(cats, S.SPG, S.WP, [], max_atoms=8)
    pad = [0] * (S.MAX_SITES - 2)
    # 227: 8a twice (rejected), 8a (twice), 8a + 8b (16 atoms: rejected); 194: 2a
    cat.add(np.array([[1, 2, 2, *pad], [1, 2, 0, *pad], [1, 2, 0, *pad], [1, 2, 1, *pad],
                      [0, 3, 0, *pad]]))
    assert cat.counts.tolist() == [1.0, 2.0] and cat.spgs().tolist() == [194, 227]
    assert sorted(cat.rejected) == sorted([C.FIXED_TWICE.format(label="8a", n=2),
                                           C.TOO_MANY.format(natoms=16, limit=8)])
    draws = cat.sample(1000, torch.Generator().manual_seed(0))
    assert {tuple(r) for r in draws} <= {tuple(r) for r in cat.codes}


def test_tempered_stage_one_is_more_diverse(trained: tuple[CVAE, E.Encoder, Path]) -> None:
    """Temperature 1 is the training table's distribution (the baseline); higher
    temperatures draw the rare combinations more often, all of them valid."""
    model = trained[0]
    cat = C.Catalogue(model.discrete, S.SPG, S.WP, [])
    cat.add(model.catalogue.codes, np.arange(1, len(model.catalogue.codes) + 1) ** 2)
    entropy = [-(p * np.log(p)).sum() for p in (cat.probabilities(temperature=t) for t in (1, 4))]
    assert entropy[1] > entropy[0]
    np.testing.assert_allclose(cat.probabilities(temperature=1), cat.counts / cat.counts.sum())


def test_learned_stage_one_proposes_new_valid_combinations(
        trained: tuple[CVAE, E.Encoder, Path]) -> None:
    """The learned stage 1 proposes combinations the training table lacks; every row
    drawn from it is a valid combination, within the classes asked, and every
    proposal it made is either in its catalogue or counted by reason."""
    model, enc, _ = trained
    stage1 = model.stage1
    report = stage1.report()
    assert report["new_combinations"] > 0
    assert report["valid"] + sum(report["rejected"].values()) == report["proposals"]
    share = stage1.share
    try:
        stage1.share = 1.0
        codes = stage1.sample(400, torch.Generator().manual_seed(1))
        cat = model.catalogue
        spg, wps = cat.spgs(codes), cat.wyckoff(codes)
        assert all(C.check(int(g), w.tolist(), None, cat.max_atoms) is None
                   for g, w in zip(spg, wps))
        seen = {tuple(r) for r in cat.codes.tolist()}
        assert sum(tuple(r) not in seen for r in codes.tolist()) > 0
        cubic = enc.inverse_transform(model.sample_in(100, torch.Generator().manual_seed(2),
                                                      Classes.of(systems=["cubic"])))
        assert set(crystal_system(cubic[S.SPG])) == {"cubic"}
    finally:
        stage1.share = share


def test_sampling_within_classes_needs_no_rejection(trained: tuple[CVAE, E.Encoder, Path],
                                                    table: pd.DataFrame) -> None:
    model, enc, _ = trained
    g = torch.Generator().manual_seed(0)
    anyone = decode_frame(draw(model, enc, 300, g))
    assert anyone["valid_xtal"].mean() > 0.3
    assert set(anyone[S.SPG]) <= set(table[S.SPG])
    for classes in (Classes.of(systems=["cubic"]), Classes.of(spgs=[166, 224]),
                    Classes.of(max_atoms=8), Classes.of(systems=["hexagonal"], max_atoms=12)):
        x = model.sample_in(200, g, classes)
        assert len(x) == 200                                 # one draw, nothing thrown away
        df = enc.inverse_transform(x)
        assert classes.allows_rows(df).all(), classes
    cubic = enc.inverse_transform(model.sample_in(200, g, Classes.of(systems=["cubic"])))
    assert set(crystal_system(cubic[S.SPG])) == {"cubic"}
    assert set(cubic[S.SPG]) == {214, 224}                   # both cubic groups it saw
    assert (conventional_atoms(cubic[S.SPG], cubic[S.WP]) > 0).all()
    with pytest.raises(ValueError, match="no training combination"):
        model.sample_in(5, g, Classes.of(systems=["triclinic"]))


def test_saved_model_loads_as_data_and_draws_the_same(
        trained: tuple[CVAE, E.Encoder, Path]) -> None:
    model, _, out = trained
    loaded, _ = models.load(out, torch.device("cpu"))
    assert loaded.kind == "cvae" and len(loaded.catalogue.codes) == len(model.catalogue.codes)
    best = torch.load(out / store.MODEL_BEST, weights_only=True)
    model.load_state_dict(best["model"])
    same = [m.sample(50, torch.Generator().manual_seed(3)) for m in (model, loaded)]
    np.testing.assert_array_equal(*same)


def test_environment_loss_gradients_reach_the_latent_vector(
        trained: tuple[CVAE, E.Encoder, Path]) -> None:
    """z -> decoder -> differentiable inverse -> free variables -> power-spectrum loss:
    autograd against central differences, hard and soft modes."""
    model, enc, _ = trained
    model.dec.double()
    try:
        codes = model.catalogue.sample(8, torch.Generator().manual_seed(5))
        z0 = torch.randn(8, model.hparams["embedding_dim"], dtype=torch.float64,
                         generator=torch.Generator().manual_seed(6))
        for soft in (False, True):
            obj = LatentObjective(model, enc, codes, z0, get_environment("graphite"), soft=soft)
            assert len(obj.kept) >= 3, obj.reasons
            if not soft:  # the variables decoded at z0 are the problems' own start
                start = batch_loss(obj.batch, obj.batch.x)
                np.testing.assert_allclose(obj(z0).detach(), start.detach(), rtol=1e-9)
            z = z0.clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(obj(z).sum(), z)
            assert grad.abs().max() > 0
            h = 1e-5
            for row in obj.kept[:3]:
                for j in (0, 7):
                    e = torch.zeros_like(z0)
                    e[row, j] = h
                    fd = (obj(z0 + e).sum() - obj(z0 - e).sum()) / (2 * h)
                    np.testing.assert_allclose(float(grad[row, j]), float(fd.detach()),
                                               rtol=1e-4, atol=1e-8)
    finally:
        model.dec.float()


def test_train_and_sample_stages(table: pd.DataFrame, tmp_path: Path) -> None:
    run = Run(tmp_path / "run")
    run.write_frame_table(S.AUGMENTED, table, meta=S.empty_frame(), rows_per_part=12)
    summary = train_stage(run, "cvae", "cont", epochs=3, **HP)
    assert summary["model"] == "cvae-cont"
    sample_stage(run, "cvae-cont", 60, seed=1, systems=["cubic"], rows_per_part=30,
                 table="cubic")
    df = run.read("cubic").compute()
    assert len(df) == 60 and set(crystal_system(df[S.SPG])) == {"cubic"}
    with pytest.raises(ValueError, match="crystal systems must be among"):
        sample_stage(run, "cvae-cont", 10, systems=["cubical"], table="never")
    sample_stage(run, "cvae-cont", 40, seed=1, rows_per_part=20, table="learned",
                 stage1_share=1.0, min_distance=0.0)   # all from the learned proposals
    learned = run.read("learned").compute()
    assert len(learned) == 40 and learned[S.VALID_XTAL].all()
    combo = [S.SPG, *S.WP]
    seen = set(table[combo].itertuples(index=False, name=None))
    assert any(c not in seen for c in learned[combo].itertuples(index=False, name=None))
    with pytest.raises(ValueError, match="from 0 to 1"):
        sample_stage(run, "cvae-cont", 10, table="never", stage1_share=2.0)
