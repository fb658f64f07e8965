"""The train and sample stages through a run directory: features, model, Parquet
partitions of decoded rows, reproducible seeds, space-group conditioning."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from test_encode import training_table

from legodask import cli, models
from legodask import schema as S
from legodask.models.sampling import part_seed, sample_partition
from legodask.stages.sample import sample_stage
from legodask.stages.train import train_stage
from legodask.store import Run

HP = {"compress_dims": (32, 32), "decompress_dims": (32, 32), "embedding_dim": 16,
      "batch_size": 20, "lr": 2e-3}


@pytest.fixture(scope="module")
def trained(sacada_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """A run with an ``augmented`` table and a briefly trained VAE ``vae-cont``."""
    run = Run(tmp_path_factory.mktemp("run"))
    run.write_frame_table("augmented", training_table(sacada_db, n_structures=4),
                          meta=S.empty_frame(), rows_per_part=5)
    summary = train_stage(run, "vae", "cont", epochs=4, **HP)
    assert summary["epochs"] == 4 and summary["device"] == "cpu"
    assert run.file("features.zarr").exists()
    return run


def test_same_seed_same_rows(trained: Run) -> None:
    d = str(trained.model_dir("vae-cont"))
    a = sample_partition(d, "vae-cont", 50, seed=3, part=1)
    b = sample_partition(d, "vae-cont", 50, seed=3, part=1)
    pd.testing.assert_frame_equal(a, b)
    c = sample_partition(d, "vae-cont", 50, seed=3, part=2)
    assert not a["a"].equals(c["a"])
    assert part_seed(3, 1) != part_seed(3, 2) != part_seed(4, 1)


def test_min_distance_decides_which_overlapping_crystals_are_valid(trained: Run) -> None:
    d = str(trained.model_dir("vae-cont"))
    strict = sample_partition(d, "vae-cont", 100, seed=3, part=1)
    lax = sample_partition(d, "vae-cont", 100, seed=3, part=1, min_distance=0.0)
    assert strict["valid_xtal"].any() and (lax["valid_xtal"] >= strict["valid_xtal"]).all()
    kept = lax["valid_xtal"] & ~strict["valid_xtal"]
    assert strict.loc[kept, "error"].str.contains("on top of each other").all()
    # far apart is asked of every pair: the rows valid before are now overlapping
    apart = sample_partition(d, "vae-cont", 100, seed=3, part=1, min_distance=50.0)
    assert not apart["valid_xtal"].any()
    assert apart.loc[strict["valid_xtal"], "error"].str.contains("on top of each other").all()


def test_sample_stage_writes_decoded_partitions(trained: Run) -> None:
    result = sample_stage(trained, "vae-cont", 250, seed=1, rows_per_part=100, batch_rows=40)
    assert (result.written, result.rows) == (3, 250)
    df = trained.read("samples").compute()
    assert len(df) == 250 and df["id"].is_unique
    assert df["id"].str.match(r"vae-cont-\d-\d+$").all()
    assert (df["source"] == "vae-cont").all()
    assert df["valid_xtal"].notna().all()
    # every row decoded: valid rows carry their atoms, invalid ones the reason
    assert (df.loc[df["valid_xtal"], "natoms"] > 0).all()
    assert df.loc[~df["valid_xtal"], "error"].str.len().gt(0).all()
    assert df.loc[df["valid_xtal"], "el0"].eq("C").all()
    # rerunning does nothing: the partitions are there
    again = sample_stage(trained, "vae-cont", 250, seed=1, rows_per_part=100)
    assert (again.written, again.skipped) == (0, 3)


def test_sampling_is_conditioned_on_space_groups(trained: Run) -> None:
    spg = int(trained.read("augmented")["spg"].compute().iloc[0])
    sample_stage(trained, "vae-cont", 60, seed=2, spgs=[spg], rows_per_part=30,
                 table="conditioned")
    df = trained.read("conditioned").compute()
    assert len(df) == 60 and set(df["spg"]) == {spg}
    with pytest.raises(ValueError, match="not in"):
        sample_stage(trained, "vae-cont", 10, spgs=[2], table="never")


def test_cli_sample_on_a_local_cluster(trained: Run) -> None:
    rc = cli.main(["sample", "--run", str(trained.path), "--model", "vae-cont", "--n", "40",
                   "--rows-per-part", "20", "--table", "clustered", "--workers", "2"])
    assert rc == 0
    df = trained.read("clustered").compute()
    local = pd.concat([sample_partition(str(trained.model_dir("vae-cont")), "vae-cont", 20, 0, i)
                       for i in range(2)], ignore_index=True)
    # the same rows whichever process drew them
    pd.testing.assert_series_equal(df["a"].reset_index(drop=True), local["a"], check_names=False)
    assert models.load(trained.model_dir("vae-cont"))[0].kind == "vae"


def test_train_options_become_hyper_parameters() -> None:
    from legodask.stages.train import hparams_of

    args = cli.build_parser().parse_args(
        ["train", "--run", "r", "--model", "gan", "--hidden", "64", "64", "--pac", "1"])
    hp = hparams_of(args)
    assert hp["generator_dim"] == hp["discriminator_dim"] == (64, 64)
    assert hp["pac"] == 1 and "lr" not in hp and "dropout" not in hp
    vae = hparams_of(cli.build_parser().parse_args(
        ["train", "--run", "r", "--model", "vae", "--lr", "0.01", "--pac", "5"]))
    assert vae["lr"] == 0.01 and "pac" not in vae


def test_train_keeps_the_features_site_form_unless_told(trained: Run, tmp_path: Path) -> None:
    import shutil

    from legodask.models.encoding import open_features

    shutil.copytree(trained.path, tmp_path / "copy")
    run = Run(tmp_path / "copy")
    assert open_features(run)[1].sites == "generator"
    train_stage(run, "vae", "cont", epochs=1, name="again", **HP)
    assert open_features(run)[1].sites == "generator"
    train_stage(run, "vae", "cont", epochs=1, name="given", sites="as-given", **HP)
    assert open_features(run)[1].sites == "as-given"
    assert models.load(run.model_dir("given"))[1].sites == "as-given"
