"""Rows are never changed without a word, tables never mix inputs, bad input is named.

Each test is an attack or a common mistake (issue 20, items 4-10), and asserts the
safe outcome: the row comes back invalid with a reason naming the column and value,
or the command refuses in one line saying what to do.
"""

from __future__ import annotations

import math
import subprocess
import sys

import dask
import numpy as np
import pandas as pd
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.io import write

from legodask import schema as S
from legodask.crystal.decode import OVERLAP
from legodask.crystal.frame import decode_frame, decode_frame_rowwise
from legodask.crystal.wyckoff import group_info, wyckoff_ops
from legodask.sources import ingest as ingest_kernel
from legodask.sources import layouts, readers
from legodask.stages import decode
from legodask.stages import ingest as ingest_stage
from legodask.store import LOCK, Run, TableBusy


@pytest.fixture(autouse=True)
def synchronous():
    with dask.config.set(scheduler="synchronous"):
        yield


def _nacl() -> dict:
    """Rock salt as a table row: Na on 4a, Cl on 4b of Fm-3m (4 + 4 atoms)."""
    n_wp = group_info(225)[1]
    return dict(spg=225, a=5.64, b=5.64, c=5.64, alpha=90.0, beta=90.0, gamma=90.0,
                wp0=n_wp - 1, el0="Na", x0=0.0, y0=0.0, z0=0.0,
                wp1=n_wp - 2, el1="Cl", x1=0.5, y1=0.5, z1=0.5)


def _diamond(**kw) -> dict:
    return {"spg": 227, "a": 3.567, "b": 3.567, "c": 3.567, "alpha": 90.0, "beta": 90.0,
            "gamma": 90.0, "wp0": 8, "el0": "C", "x0": 0.125, "y0": 0.125, "z0": 0.125, **kw}


# -- item 4: no failed or wrapped number makes a valid row -------------------------

ATTACKS = [
    ({"wp1": math.nan}, "wp1 is empty"),
    ({"wp1": "2b"}, "wp1 = '2b'"),
    ({"wp1": 65545}, "wp1 = 65545"),
    ({"spg": 65730}, "spg = 65730"),
    ({"spg": 70000}, "spg = 70000"),
    ({"spg": 194.7}, "spg = 194.7"),
    ({"wp1": 9.6}, "wp1 = 9.6"),
]


@pytest.mark.parametrize("decoder", [decode_frame, decode_frame_rowwise])
def test_wrapped_and_failed_integers_make_the_row_invalid_with_column_and_value(decoder):
    rows = pd.DataFrame([_nacl(), *[{**_nacl(), **bad} for bad, _ in ATTACKS]])
    out = decoder(rows)
    assert out["valid_xtal"][0] and out["natoms"][0] == 8
    for i, (_, reason) in enumerate(ATTACKS, start=1):
        assert not out["valid_xtal"][i], reason
        assert reason in out["error"][i]


def test_n_sites_of_2000_sites_does_not_wrap_and_the_filter_says_why():
    row = {"spg": 1, "n_sites": 2000, "natoms": 2000, "valid_xtal": False,
           "error": "2000 Wyckoff sites, more than the table's 8"}
    df = S.conform(pd.DataFrame([row]))
    assert df["n_sites"][0] == np.iinfo("int8").max          # not -48
    assert "n_sites = 2000" in df["error"][0]
    kept = ingest_kernel.TrainingFilter().apply(df)
    assert kept["filter_reason"][0] == "more than 8 Wyckoff sites"


# -- items 5 and 10: ingest checks as decode does, and says why --------------------

def test_ingest_applies_decodes_checks_and_names_what_is_wrong(tmp_path):
    folder = tmp_path / "cifs"
    folder.mkdir()
    close = Atoms("C2", scaled_positions=[[0, 0, 0], [0.01, 0, 0]], cell=[5, 6, 7], pbc=True)
    write(folder / "close.cif", close)                         # 0.05 Å apart
    write(folder / "nacl.cif", bulk("NaCl", "rocksalt", a=5.64))
    write(folder / "diamond.cif", bulk("C", "diamond", a=3.567))
    (folder / "noise.cif").write_bytes(np.random.default_rng(0).bytes(600))
    run = Run(tmp_path / "run")
    ingest_stage.ingest(run, folder)
    df = pd.read_parquet(run.table_path("ingested")).set_index("id")
    assert not df.loc["close", "valid_xtal"] and not df.loc["close", "train"]
    assert OVERLAP in df.loc["close", "error"]
    assert df.loc["nacl", "valid_xtal"] and not df.loc["nacl", "train"]
    assert "Na" in df.loc["nacl", "filter_reason"] and "--train-elements" in df.loc["nacl", "filter_reason"]
    assert df.loc["diamond", "train"]
    assert not df.loc["noise", "valid_xtal"]
    assert len(df.loc["noise", "error"].split(":", 1)[1].strip()) > 5   # a reason, not ""


def test_a_molecule_without_cell_is_named_as_such(tmp_path):
    path = tmp_path / "water.xyz"
    write(path, molecule("H2O"), format="extxyz")
    out = ingest_kernel.read_items(readers.list_items(path), 1e-3, "water.xyz")
    assert not out["valid_xtal"][0]
    assert "no periodic cell" in out["error"][0] and "NoneType" not in out["error"][0]


def test_a_row_without_element_says_pass_element():
    row = _diamond(el0=None)
    for decoder in (decode_frame, decode_frame_rowwise):
        out = decoder(pd.DataFrame([row]))
        assert not out["valid_xtal"][0] and "--element" in out["error"][0]


# -- item 6: every decoded row has a stable id ---------------------------------------

def test_decode_gives_rows_without_id_a_stable_one(tmp_path):
    src = tmp_path / "rows.csv"
    rows = pd.DataFrame([_diamond()] * 5)
    rows.to_csv(src, index=False)
    with_ids = tmp_path / "some.csv"
    rows.assign(id=["x0", None, "x2", None, "x4"]).to_csv(with_ids, index=False)
    run = Run(tmp_path / "run")
    decode.decode(run, str(src))
    decode.decode(run, str(with_ids), output="some")
    out = pd.read_parquet(run.table_path("decoded"))
    assert list(out["id"]) == [f"rows-{i}" for i in range(5)] and out["valid_xtal"].all()
    some = pd.read_parquet(run.table_path("some"))
    assert list(some["id"]) == ["x0", "some-1", "x2", "some-3", "x4"]


# -- item 7: no table mixes inputs, one writer at a time -----------------------------

def test_a_rerun_from_other_input_is_refused_not_mixed(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    pd.DataFrame([_diamond(id=f"a{i}") for i in range(3)]).to_csv(a, index=False)
    pd.DataFrame([_diamond(id=f"b{i}") for i in range(4)]).to_csv(b, index=False)
    run = Run(tmp_path / "run")
    decode.decode(run, str(a))
    with pytest.raises(ValueError, match="--overwrite"):
        decode.decode(run, str(b))
    with pytest.raises(ValueError, match="min_distance"):
        decode.decode(run, str(a), min_distance=0.1)
    assert set(pd.read_parquet(run.table_path("decoded"))["id"]) == {"a0", "a1", "a2"}
    again = decode.decode(run, str(a))                    # the same input resumes
    assert again.written == 0 and again.skipped == 1
    decode.decode(run, str(b), overwrite=True)
    assert set(pd.read_parquet(run.table_path("decoded"))["id"]) == {f"b{i}" for i in range(4)}


def test_a_second_writer_refuses_and_a_dead_writers_lock_is_taken_over(tmp_path):
    import json
    import socket

    src = tmp_path / "a.csv"
    pd.DataFrame([_diamond(id="a0")]).to_csv(src, index=False)
    run = Run(tmp_path / "run")
    lock = run.table_path("decoded") / LOCK
    lock.parent.mkdir(parents=True)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(json.dumps({"pid": other.pid, "host": socket.gethostname()}))
        with pytest.raises(TableBusy, match=LOCK):
            decode.decode(run, str(src))
        assert not run.done_parts("decoded")
    finally:
        other.kill()
        other.wait()
    decode.decode(run, str(src))                          # its writer is gone now
    assert run.is_complete("decoded") and not lock.exists()


# -- items 8-10: bad input files ---------------------------------------------------

def test_one_string_in_a_float_column_fails_its_row_only(tmp_path):
    src = tmp_path / "rows.csv"
    rows = pd.DataFrame([_diamond(id=f"r{i}") for i in range(6)]).astype({"a": object})
    rows.loc[3, "a"] = "abc"
    rows.to_csv(src, index=False)
    run = Run(tmp_path / "run")
    decode.decode(run, str(src))
    out = pd.read_parquet(run.table_path("decoded")).set_index("id")
    assert not out.loc["r3", "valid_xtal"] and out.loc["r3", "error"] == "a = 'abc' is not a number"
    assert out.drop(index="r3")["valid_xtal"].all()


def _reference_rows() -> pd.DataFrame:
    """Diamond and graphite as LEGO-xtal writes them: angles in radians, no elements."""
    diamond = [227, 3.567, 3.567, 3.567, math.pi / 2, math.pi / 2, math.pi / 2,
               8, 0.125, 0.125, 0.125] + [-1] * 28
    letters = [wyckoff_ops(194, i).letter for i in range(group_info(194)[1])]
    graphite = [194, 2.46, 2.46, 6.7, math.pi / 2, math.pi / 2, 2 * math.pi / 3,
                letters.index("b"), 0, 0, 0.25, letters.index("c"), 1 / 3, 2 / 3, 0.25
                ] + [-1] * 24
    return pd.DataFrame([diamond, graphite], columns=S.TABULAR).assign(energy=[-9.0, -9.2],
                                                                        label=[1, 2])


def test_lego_xtal_csv_with_radians_is_recognised(tmp_path):
    src = tmp_path / "train-v1.csv"
    _reference_rows().to_csv(src, index=False)
    run = Run(tmp_path / "run")
    decode.decode(run, str(src))
    out = pd.read_parquet(run.table_path("decoded"))
    assert out["valid_xtal"].all(), out["error"].tolist()
    assert list(out["gamma"].round(6)) == [90.0, 120.0] and list(out["natoms"]) == [8, 4]
    assert "reference layout" in run.info("decoded")["layout"]
    with pytest.raises(ValueError, match="--element"):       # as the table's layout: refused
        decode.decode(run, str(src), output="as_table", layout=layouts.TABLE)
    bare = tmp_path / "samples.csv"                            # no header line at all
    _reference_rows().to_csv(bare, index=False, header=False)
    decode.decode(run, str(bare), output="bare")
    out = pd.read_parquet(run.table_path("bare"))
    assert len(out) == 2 and out["valid_xtal"].all()


def test_renamed_columns_are_not_read_by_position_unless_asked(tmp_path):
    src = tmp_path / "upper.csv"
    rows = _reference_rows()
    rows.columns = [c.upper() for c in rows.columns]
    rows.to_csv(src, index=False)
    run = Run(tmp_path / "run")
    with pytest.raises(ValueError, match="spg, a, b, c, alpha.*--layout reference"):
        decode.decode(run, str(src))
    decode.decode(run, str(src), layout=layouts.REFERENCE)
    out = pd.read_parquet(run.table_path("decoded"))
    assert out["valid_xtal"].all() and list(out["alpha"].round(6)) == [90.0, 90.0]


def test_unknown_columns_get_a_one_line_message(tmp_path):
    src = tmp_path / "other.csv"
    pd.DataFrame({"foo": [1, 2], "bar": [3, 4], "baz": [5, 6]}).to_csv(src, index=False)
    code = ("import sys; from legodask.cli import main; "
            f"sys.exit(main(['decode', '--run', {str(tmp_path / 'run')!r}, '--input', "
            f"{str(src)!r}, '--workers', '1']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert "columns spg, a, b" in last and "foo" in last and "Metadata" not in out.stderr
