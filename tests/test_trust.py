"""A run directory is data: opening one, querying it or pointing a command at a wrong
path never runs code, reads or writes other files, or listens beyond this machine.

Each test is the attack or the mistake: a model file that is a pickle whose loading
would create a marker file, SQL and ``--where`` conditions that read or write files
outside the run, the LocalCluster's listening sockets, a mistyped run and a run whose
log cannot be written (a ``logs`` file where the folder should be: that stops root
too, where ``chmod`` does not).
"""

from __future__ import annotations

import json
import pathlib
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pyarrow.parquet as pq
import pytest
import torch
from test_encode import training_table
from test_models import SMALL

from legodask import cluster, models
from legodask import schema as S
from legodask import store
from legodask.cli import main, message
from legodask.crystal.frame import decode_frame
from legodask.models import encoding as E
from legodask.models.base import ChunkStream
from legodask.models.grid import Grid
from legodask.models.training import fit
from legodask.store import Run, arrow_schema, write_frame

MODEL = "vae-dis"


class Touch:
    """A pickled object whose loading creates ``marker``: what an attacker's model
    file would do with ``os.system``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def trained(sacada_db: Path, tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    """A run with a small VAE trained for two epochs, and its training table."""
    torch.set_num_threads(1)
    grid = Grid()
    table = decode_frame(S.conform(grid.from_bins(grid.to_bins(
        training_table(sacada_db, n_structures=4)))))
    enc = E.fit(table, "dis")
    model = models.build("vae", enc, torch.device("cpu"), **SMALL["vae"])
    run = Run(tmp_path_factory.mktemp("trust") / "run")
    fit(model, enc, ChunkStream(enc.transform(table)), 2, run.model_dir(MODEL))
    return run.path, table


def _copy_model(run_path: Path, dest: Path) -> Path:
    """A copy of the trained run's model folder, to be tampered with."""
    src = run_path / "models" / MODEL
    dest.mkdir(parents=True)
    for f in src.iterdir():
        (dest / f.name).write_bytes(f.read_bytes())
    return dest


# -- 1. a model file never runs code -----------------------------------------------

@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_a_model_file_that_is_a_pickle_is_refused_not_run(trained, tmp_path, writer):
    d = _copy_model(trained[0], tmp_path / "model")
    marker = tmp_path / "marker"
    evil = {"model": Touch(marker), "epoch": 0}
    if writer == "torch.save":
        torch.save(evil, d / store.MODEL_BEST)
    else:
        with open(d / store.MODEL_BEST, "wb") as f:
            pickle.dump(evil, f)
    with pytest.raises(ValueError, match="could run code"):
        models.load(d, torch.device("cpu"))
    assert not marker.exists()


def test_a_model_file_is_refused_after_mace_allows_pickles(trained, tmp_path, monkeypatch):
    """mace-torch sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD when imported (in a worker that
    ranks with MACE): our loads name weights_only themselves, so it changes nothing."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    d = _copy_model(trained[0], tmp_path / "model")
    marker = tmp_path / "marker"
    torch.save({"model": Touch(marker), "epoch": 0}, d / store.MODEL_BEST)
    with pytest.raises(ValueError, match="could run code"):
        models.load(d, torch.device("cpu"))
    assert not marker.exists()


def test_a_resume_checkpoint_that_is_a_pickle_is_refused_not_run(trained, tmp_path):
    run_path, table = trained
    d = _copy_model(run_path, tmp_path / "model")
    marker = tmp_path / "marker"
    torch.save({"model": Touch(marker)}, d / store.MODEL_LAST)
    enc = E.Encoder.from_dict(json.loads((d / store.MODEL_CONFIG).read_text())["encoder"])
    model = models.build("vae", enc, torch.device("cpu"), **SMALL["vae"])
    with pytest.raises(ValueError, match="could run code"):
        fit(model, enc, ChunkStream(enc.transform(table)), 3, d)
    assert not marker.exists()


def test_sample_of_a_run_with_a_malicious_model_fails_in_one_line(trained, tmp_path, capsys):
    run = Run(tmp_path / "run")
    d = _copy_model(trained[0], run.path / "models" / MODEL)
    marker = tmp_path / "marker"
    torch.save({"model": Touch(marker), "epoch": 0}, d / store.MODEL_BEST)
    rc = main(["sample", "--run", str(run.path), "--model", MODEL, "--n", "10",
               "--workers", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and not marker.exists()
    assert err[-1].startswith("legodask sample: error: ") and "could run code" in err[-1]
    assert not any("Traceback" in line for line in err)


def test_a_model_saved_by_the_previous_version_still_loads_and_resumes(trained, tmp_path):
    """The files as the previous version wrote them (``torch.save`` of these dicts,
    read then with ``weights_only=False``) load under ``weights_only=True``."""
    run_path, table = trained
    d = _copy_model(run_path, tmp_path / "model")
    cfg = json.loads((d / store.MODEL_CONFIG).read_text())
    enc = E.Encoder.from_dict(cfg["encoder"])
    old = models.build("vae", enc, torch.device("cpu"), seed=7, **cfg["hparams"])
    rng = np.random.default_rng(3)
    history = [{"loss": 1.5, "recon": 1.0, "kld": 0.5, "seconds": 0.1, "epoch": 0}]
    torch.save({"model": old.state_dict(optimizer=False), "epoch": 0}, d / store.MODEL_BEST)
    torch.save({"model": old.state_dict(), "history": history,
                "torch_rng": torch.get_rng_state(), "numpy_rng": rng.bit_generator.state},
               d / store.MODEL_LAST)
    loaded, _ = models.load(d, torch.device("cpu"))
    draws = [m.sample(20, torch.Generator().manual_seed(1)) for m in (old, loaded)]
    np.testing.assert_array_equal(*draws)
    resumed = models.build("vae", enc, torch.device("cpu"), **cfg["hparams"])
    out = fit(resumed, enc, ChunkStream(enc.transform(table)), 2, d)
    assert out[0] == history[0] and [h["epoch"] for h in out] == [0, 1]


def test_features_zarr_with_a_pickle_codec_is_not_unpickled(tmp_path):
    """The encoder of ``features.zarr`` is JSON; an array whose chunks claim a pickle
    codec is refused by zarr (3) before any chunk is read."""
    run = Run(tmp_path / "run")
    arr = run.file(store.FEATURES)
    arr.mkdir()
    marker = tmp_path / "marker"
    (arr / ".zarray").write_text(json.dumps({
        "zarr_format": 2, "shape": [1, 1], "chunks": [1, 1], "dtype": "|O",
        "compressor": None, "fill_value": 0, "order": "C", "filters": [{"id": "pickle"}]}))
    (arr / ".zattrs").write_text(json.dumps({"encoder": {}}))
    (arr / "0.0").write_bytes(pickle.dumps(np.array([Touch(marker)], dtype=object)))
    with pytest.raises(Exception):
        features, _ = E.open_features(run)
        np.asarray(features[:])
    assert not marker.exists()


# -- 2. SQL reaches the run's tables and nothing else -------------------------------

@pytest.fixture
def small_run(tmp_path) -> Run:
    """A run with one table, ``samples``, of three rows."""
    run = Run(tmp_path / "run")
    df = pd.DataFrame({"id": ["a", "b", "c"], "spg": [191, 194, 227],
                       "valid_xtal": [True, False, True]})
    run.table_path("samples").mkdir()
    write_frame(df, run.part_path("samples", 0), arrow_schema(df))
    return run


def _one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"legodask {command}: error: ") and "\n" not in err, err
    assert "LINE 1" not in err and "Traceback" not in err
    return err


@pytest.mark.parametrize("sql", [
    "select * from read_csv('{secret}', header=false, sep=':')",
    "select content from read_text('{secret}')",
    "select * from glob('{dir}/*')",
    "select * from samples union all select * from read_csv('{secret}', header=false)",
])
def test_query_cannot_read_a_file_outside_the_run(small_run, tmp_path, capsys, sql):
    secret = tmp_path / "secret.txt"
    secret.write_text("root:TOPSECRET:0\n")
    rc = main(["query", str(small_run.path), sql.format(secret=secret, dir=tmp_path)])
    out = capsys.readouterr()
    assert rc == 1
    assert "TOPSECRET" not in out.out + out.err and "secret.txt" not in out.out


@pytest.mark.parametrize("sql", [
    "select 1 as x); copy (select 'X' as a) to '../outside.csv'; select * from (select 2 as y",
    "copy (select 'X' as a) to '../outside.csv'",
    "select 1; copy (select 'X' as a) to '../outside.csv'",
    "with q as (select 1) select * from query('copy (select 1) to ''../outside.csv''')",
    "attach '../outside.csv' as o",
])
def test_query_cannot_write_outside_the_run(small_run, tmp_path, capsys, monkeypatch, sql):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["query", str(small_run.path), sql]) == 1
    _one_line_error(capsys, "query")
    assert not (tmp_path / "outside.csv").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "work"]


def test_export_where_cannot_write_outside_the_run(small_run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(small_run.path)
    where = "1=1); copy (select 'X' as a) to '../outside.csv'; select * from samples where (1=1"
    rc = main(["export", "--run", str(small_run.path), "--table", "samples", "--where", where,
               "--out", str(tmp_path / "exported")])
    assert rc == 1
    assert "--where" in _one_line_error(capsys, "export")
    assert not (tmp_path / "outside.csv").exists() and not (tmp_path / "exported").exists()


def test_export_of_a_table_the_run_lacks_says_which_it_has(small_run, tmp_path, capsys):
    rc = main(["export", "--run", str(small_run.path), "--table", 'samples" --',
               "--out", str(tmp_path / "x")])
    assert rc == 1 and "it has: samples" in _one_line_error(capsys, "export")


def test_query_still_answers_and_writes_its_result(small_run, tmp_path, capsys):
    for name in ("n.csv", "n.parquet"):
        out = tmp_path / name
        rc = main(["query", str(small_run.path),
                   "SELECT spg, valid_xtal FROM samples ORDER BY spg", "--out", str(out)])
        assert rc == 0
        got = pd.read_csv(out) if name.endswith(".csv") else pq.read_table(out).to_pandas()
        assert got["spg"].tolist() == [191, 194, 227]
        assert got["valid_xtal"].tolist() == [True, False, True]
    assert "227" in capsys.readouterr().out


def test_bad_sql_and_where_say_what_is_wrong_in_one_line(small_run, tmp_path, capsys):
    assert main(["query", str(small_run.path), "SELEC spg FROM samples"]) == 1
    assert "does not parse" in _one_line_error(capsys, "query")
    assert main(["query", str(small_run.path), "SELECT nope FROM samples"]) == 1
    assert "nope" in _one_line_error(capsys, "query")
    assert main(["export", "--run", str(small_run.path), "--table", "samples",
                 "--where", "nope > 1", "--out", str(tmp_path / "x")]) == 1
    assert "DESCRIBE samples" in _one_line_error(capsys, "export")


# -- 3. the dashboard and the scheduler listen on this machine only -----------------

def test_local_cluster_listens_on_localhost_only():
    me = psutil.Process()

    def listening() -> set[tuple[str, int]]:
        """The addresses this process and its children listen on."""
        procs = [me, *me.children(recursive=True)]
        return {(c.laddr.ip, c.laddr.port) for p in procs for c in p.net_connections("tcp")
                if c.status == psutil.CONN_LISTEN}

    before = listening()   # e.g. an MPI library loaded by an earlier test
    with cluster.connect(n_workers=1, quiet=True) as client:
        opened = listening() - before
        assert opened and {ip for ip, _ in opened} == {"127.0.0.1"}
        assert client.dashboard_link.startswith("http://127.0.0.1:")
        assert client.scheduler.address.startswith("tcp://127.0.0.1:")


# -- 10. any failure is one line ----------------------------------------------------

def test_an_unexpected_failure_is_one_line_and_a_traceback_with_v(small_run, capsys,
                                                                  monkeypatch):
    from legodask.stages import status

    def boom(args):
        raise RuntimeError("it broke\nin two lines")

    monkeypatch.setattr(status, "command", boom)
    assert main(["status", "--run", str(small_run.path)]) == 1
    assert _one_line_error(capsys, "status").endswith("it broke; in two lines")
    with pytest.raises(RuntimeError):
        main(["-v", "status", "--run", str(small_run.path)])


def test_a_missing_input_file_is_named_with_what_to_check(tmp_path):
    import dask.dataframe as dd

    with pytest.raises(FileNotFoundError) as caught:
        dd.read_parquet(str(tmp_path / "nope.parquet"))
    assert message(caught.value) == f"no such file or directory: {tmp_path / 'nope.parquet'} " \
                                    "(check the path)"


def test_a_worker_that_keeps_dying_is_one_line_that_says_what_to_do():
    """distributed's KilledWorker (a task whose worker died at every try, as when it
    runs out of memory) becomes a line naming the likely cause and the remedy."""
    from types import SimpleNamespace

    from distributed import KilledWorker

    worker = SimpleNamespace(address="tcp://127.0.0.1:1")    # the scheduler's WorkerState
    text = message(KilledWorker("prerelax-3", worker, allowed_failures=3))
    assert "\n" not in text and "memory" in text and "--memory-limit" in text


# -- 11. commands that read a run do not make a run of a typo -----------------------

@pytest.mark.parametrize("argv", [
    ["augment", "--run", "{run}"],
    ["encode", "--run", "{run}"],
    ["train", "--run", "{run}", "--model", "vae"],
    ["sample", "--run", "{run}", "--model", "vae-cont"],
    ["prerelax", "--run", "{run}"],
    ["optimize", "--run", "{run}"],
    ["rank", "--run", "{run}"],
    ["dedup", "--run", "{run}"],
    ["status", "--run", "{run}"],
    ["query", "{run}", "select 1"],
    ["export", "--run", "{run}", "--table", "samples", "--out", "{out}"],
    ["stats", "--run", "{run}"],
    ["metrics", "--run", "{run}"],
    ["report", "--run", "{run}"],
])
def test_a_mistyped_run_is_an_error_not_a_new_run(tmp_path, capsys, argv):
    typo = tmp_path / "ruun"
    assert main([a.format(run=typo, out=tmp_path / "out") for a in argv]) == 1
    assert "no such run" in _one_line_error(capsys, argv[0])
    assert not typo.exists() and not (tmp_path / "out").exists()


# -- 12. a run that cannot be written is still read ---------------------------------

def test_a_run_that_cannot_be_written_is_read_and_refuses_writes(small_run, tmp_path,
                                                                capsys):
    logs = small_run.path / "logs"
    logs.write_text("")  # the log cannot be opened, as on a read-only run (root too)
    small_run.path.chmod(0o555)
    try:
        assert main(["status", "--run", str(small_run.path)]) == 0
        assert "samples" in capsys.readouterr().out
        assert main(["query", str(small_run.path), "select count(*) AS n from samples"]) == 0
        assert main(["export", "--run", str(small_run.path), "--table", "samples",
                     "--format", "extxyz", "--out", str(tmp_path / "x")]) == 0
        capsys.readouterr()
        assert main(["metrics", "--run", str(small_run.path)]) == 1
        assert "cannot write to the run" in _one_line_error(capsys, "metrics")
    finally:
        small_run.path.chmod(0o755)
