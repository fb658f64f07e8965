"""An interrupted ``legodask run`` resumes: rerunning it finishes the run, and the
result is the same as an uninterrupted run's, every row exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
from ase.io import write

PIPELINE = """
[cluster]
workers = 1
[ingest]
source = "{src}"
[augment]
max-per-subgroup = 3
max-per-structure = 12
check = "env"
per-task = 1
"""


def _structures(folder: Path) -> None:
    folder.mkdir()
    for i, a in enumerate((2.40, 2.44, 2.46, 2.48, 2.50, 2.52)):
        write(folder / f"graphite{i}.cif", _graphite(a))


def _graphite(a: float):
    from ase import Atoms

    return Atoms("C4", cell=[[a, 0, 0], [-a / 2, a * 3 ** 0.5 / 2, 0], [0, 0, 6.7]], pbc=True,
                 scaled_positions=[[0, 0, 0.25], [0, 0, 0.75], [1 / 3, 2 / 3, 0.25],
                                   [2 / 3, 1 / 3, 0.75]])


def _legodask(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "legodask.cli", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def test_interrupted_run_resumes_to_the_same_result(tmp_path):
    _structures(tmp_path / "cifs")
    toml = tmp_path / "tiny.toml"
    toml.write_text(PIPELINE.format(src=tmp_path / "cifs"))
    clean, broken = tmp_path / "clean", tmp_path / "broken"
    assert _legodask("run", str(toml), "--run", str(clean)).wait(timeout=600) == 0

    proc = _legodask("run", str(toml), "--run", str(broken))
    parts = broken / "augmented.parquet"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(parts.glob("part-*.parquet"))) < 2:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)             # the whole run, workers included
    proc.wait()
    assert not (parts / "_done.json").exists()
    assert _legodask("run", str(toml), "--run", str(broken)).wait(timeout=600) == 0

    a = pd.read_parquet(clean / "augmented.parquet").sort_values("id").reset_index(drop=True)
    b = pd.read_parquet(broken / "augmented.parquet").sort_values("id").reset_index(drop=True)
    assert b["id"].is_unique and len(b) > 6
    pd.testing.assert_frame_equal(a, b)


def test_a_copy_of_the_same_input_is_the_same_input(tmp_path):
    """A copied source (new modification time, same bytes) lets a stage's finished
    table stand; other bytes of the same size make it another input."""
    import shutil

    from legodask.store import fingerprint

    src = tmp_path / "a.db"
    src.write_bytes(b"carbon" * 100)
    before = fingerprint(src)
    time.sleep(0.01)
    shutil.copy(src, tmp_path / "b.db")
    os.replace(tmp_path / "b.db", src)
    assert fingerprint(src) == before
    src.write_bytes(b"Carbon" * 100)
    assert fingerprint(src) != before


def test_a_copied_folder_is_the_same_input(tmp_path):
    """A folder source (CIF files, say) copied elsewhere under the same name, with new
    modification times, is the same input; one file's bytes changed make it another."""
    import shutil

    from legodask.store import fingerprint

    src = tmp_path / "a" / "cifs"
    (src / "sub").mkdir(parents=True)
    (src / "x.cif").write_text("data_x\n")
    (src / "sub" / "y.cif").write_text("data_y\n")
    before = fingerprint(src)
    time.sleep(0.01)
    copy = shutil.copytree(src, tmp_path / "b" / "cifs", copy_function=shutil.copy)
    assert fingerprint(copy) == before
    (copy / "sub" / "y.cif").write_text("data_Y\n")
    assert fingerprint(copy) != before
