"""The README's examples work: its Python blocks run as written, and every
``legodask <command>`` in its shell blocks is a real subcommand."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pandas as pd
from ase.db import connect

from legodask import prerelax
from legodask.crystal.convert import atoms_to_row
from legodask.crystal.frame import decode_frame
from legodask.cli import build_parser
from legodask.store import Run

README = Path(__file__).resolve().parents[1] / "README.md"


def code_blocks(language: str) -> list[str]:
    """The README's fenced code blocks in ``language``, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), re.S | re.M)


def build_quickstart(path: Path, db_path: Path, n: int = 6, relax: int = 3) -> Run:
    """A small stand-in for the quick start's run: ``n`` small training crystals as
    samples, the first ``relax`` of them pre-relaxed towards graphite."""
    db = connect(db_path)
    rows = [atoms_to_row(r.toatoms(), id=f"sacada-{r.id}", source="readme")
            for r in db.select("natoms<=12")][:n]
    run = Run(path)
    samples = decode_frame(pd.DataFrame(rows))
    run.write_frame_table("samples", samples)
    run.write_frame_table("prerelaxed",
                          prerelax.prerelax_frame(samples, "graphite", device="cpu", limit=relax))
    return run


def test_python_blocks_run_as_written(sacada_db, tmp_path, monkeypatch, capsys):
    blocks = code_blocks("python")
    assert blocks, "README.md has no python block"
    monkeypatch.chdir(tmp_path)
    build_quickstart(tmp_path / "runs/quickstart", sacada_db)
    namespace: dict = {"__name__": "readme"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)
    printed = capsys.readouterr().out
    assert "valid crystals of 6" in printed and "eV/atom" in printed


def subcommands() -> set[str]:
    """The subcommands ``legodask --help`` lists."""
    [action] = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return set(action.choices)


def test_shell_blocks_name_real_subcommands():
    named = {m for block in code_blocks("bash")
             for m in re.findall(r"^legodask ([a-z-]+)", block, re.M)}
    assert named, "README.md names no legodask command"
    assert named <= subcommands(), f"not subcommands: {sorted(named - subcommands())}"
