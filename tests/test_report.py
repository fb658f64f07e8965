"""The report page, SQL over a run, and export of structures, on the tiny run."""

from __future__ import annotations

import base64
import re

import pandas as pd
import pytest
from ase.db import connect
from ase.io import read

from legodask.analysis import metrics as M
from legodask.analysis import report, tables
from legodask.analysis.export import export
from legodask.analysis.query import query
from legodask.cli import main
from legodask.crystal.convert import row_to_atoms
from legodask.energy.relax import atoms_to_text
from legodask.store import Run
from test_metrics import build_tiny_run


@pytest.fixture(scope="module")
def run(sacada_db, tmp_path_factory) -> Run:
    """The tiny run of test_metrics, with a relaxed geometry on row s5 (crystal C,
    cell stretched by 3 %)."""
    r = build_tiny_run(tmp_path_factory.mktemp("rep") / "run", sacada_db)
    ranked = r.read("ranked").compute()
    relaxed = row_to_atoms(ranked.set_index("id").loc["s5"].to_dict())
    relaxed.set_cell(relaxed.cell * 1.03, scale_atoms=True)
    ranked["relaxed_reaxff"] = [atoms_to_text(relaxed) if i == "s5" else None
                                for i in ranked["id"]]
    r.table_path("ranked").rename(r.path / "old")      # rewrite the table in place
    r.write_frame_table("ranked", ranked)
    return r


def test_report_is_self_contained_with_its_plots(run, capsys):
    assert main(["report", "--run", str(run.path)]) == 0
    page = run.file("report.html").read_text()
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([^"]+)"', page)
    # the new candidates (B and D; A and C are known) by mace energy, then the plots
    assert [t for t, _ in images] == ["s6", "s3", "Counts", "Energy distribution",
                                      "Complexity"]
    for _, b64 in images:
        png = base64.b64decode(b64)
        assert png.startswith(b"\x89PNG") and len(png) > 5000
    assert "<td>10</td><td>8</td><td>7</td><td>4</td><td>2</td>" in page
    assert "0.100 eV/atom above graphite (mace)" in page and "3D" in page
    assert "prerelaxed: 8 of 8 rows pre-relaxed; 7 reached the environment" in page
    assert "fingerprints: 7 of 7 rows fingerprinted" in page
    assert "<td>srs</td><td>1</td>" in page                    # the most frequent nets
    assert "src=\"http" not in page and "<script" not in page     # nothing fetched
    assert "wrote" in capsys.readouterr().out


def test_training_energies_are_above_the_ground_state(run):
    """The training crystals' energies in the report: the source's VASP energies
    above VASP graphite, unless the training table was ranked with the model."""
    M.train_fingerprints(run)
    con, tables_ = report.connect(run), set(run.tables())
    train, label = report.training(con, tables_, "reaxff")
    assert label.startswith("VASP")
    assert sorted(train["e_above"].round(3)) == [0.455, 0.655, 0.755]
    ingested = run.read("ingested").compute().assign(e_above_reaxff=[0.1, 0.2, 0.3])
    other = Run(run.path.parent / "ranked-training")
    for name in run.tables():
        if name != "ingested":
            other.write_frame_table(name, run.read(name).compute())
    other.write_frame_table("ingested", ingested)
    train, label = report.training(report.connect(other), set(other.tables()), "reaxff")
    assert label == "reaxff, this run" and sorted(train["e_above"]) == [0.1, 0.2, 0.3]


def test_query_views_and_output(run, tmp_path, capsys):
    df = query(run, "SELECT valid_xtal, count(*) AS n FROM samples GROUP BY 1 ORDER BY 1")
    assert df.to_dict("list") == {"valid_xtal": [False, True], "n": [2, 8]}
    out = tmp_path / "low.csv"
    assert main(["query", str(run.path), "SELECT r.id, r.e_above_reaxff FROM ranked r JOIN "
                 "fingerprints f USING (id) WHERE f.is_new ORDER BY r.id", "--out", str(out)]) == 0
    csv = pd.read_csv(out)
    assert csv["id"].tolist() == ["s0", "s3", "s5", "s6"]            # first row of A B C D
    assert "s0" in capsys.readouterr().out


def test_export_formats_use_the_relaxed_geometry(run, tmp_path):
    where = "e_above_reaxff < 0.5"               # s0 s1 s2 (A), s4 (B), s5 (C)
    n, bad = export(run, "ranked", tmp_path / "cif", "cif", where)
    assert (n, bad) == (5, 0)
    assert sorted(p.stem for p in (tmp_path / "cif").glob("*.cif")) == ["s0", "s1", "s2", "s4", "s5"]
    ranked = run.read("ranked").compute().set_index("id")
    c_row = row_to_atoms(ranked.loc["s5"].to_dict())
    c_cif = read(tmp_path / "cif" / "s5.cif")
    assert c_cif.cell.cellpar()[:3] == pytest.approx(c_row.cell.cellpar()[:3] * 1.03, rel=1e-4)
    a_cif = read(tmp_path / "cif" / "s0.cif")
    assert len(a_cif) == ranked.loc["s0", "natoms"]

    assert export(run, "ranked", tmp_path / "x", "extxyz", where, unique=True) == (2, 0)
    frames = read(tmp_path / "x" / "structures.extxyz", index=":")
    assert [f.info["sid"] for f in frames] == ["s0", "s5"]          # first of A and C
    assert frames[0].info["e_above_reaxff"] == pytest.approx(0.10)

    assert main(["export", "--run", str(run.path), "--where", where, "--format", "ase-db",
                 "--out", str(tmp_path / "db")]) == 0
    db = connect(tmp_path / "db" / "structures.db")
    assert db.count() == 5 and {r.sid for r in db.select("spg=214")} == {"s0", "s1"}


def test_export_filters_on_net_dimension_and_novelty(run, tmp_path):
    """known_id, dimension and topology come from the fingerprints when the table
    lacks them: A (srs, known) is s0 s1 s2, the new crystals B and D are s3 s4 s6."""
    def ids(where: str) -> list[str]:
        out = tmp_path / str(abs(hash(where)))
        export(run, "ranked", out, "cif", where)
        return sorted(p.stem for p in out.glob("*.cif"))

    assert ids("topology = 'srs'") == ["s0", "s1", "s2"]
    assert ids("known_id IS NULL AND dimension = 3") == ["s3", "s4", "s6"]
    assert ids("known_id IS NOT NULL AND topology <> 'srs'") == ["s5"]
    assert main(["export", "--run", str(run.path), "--where", "known_id IS NULL",
                 "--unique", "--format", "extxyz", "--out", str(tmp_path / "new")]) == 0
    frames = read(tmp_path / "new" / "structures.extxyz", index=":")
    assert [f.info["sid"] for f in frames] == ["s3", "s6"]
    assert all(f.info["dimension"] == 3 for f in frames)


def test_tables_api(run):
    assert {"samples", "prerelaxed", "ranked", "fingerprints"} <= set(tables.names(run.path))
    assert tables.load(run.path, "samples").shape[0].compute() == 10
    uniq = tables.unique(run.path).compute()
    assert sorted(uniq["id"]) == ["s0", "s3", "s5", "s6"]
