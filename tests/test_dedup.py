"""Incremental dedup: the training set is 140 crystals, repeats add nothing, and a
later run (or a rerun) only adds what is new."""

from __future__ import annotations

import pandas as pd
import pytest
from ase.db import connect

from legodask import schema as S
from legodask.analysis import dedup as D
from legodask.cli import main
from legodask.crystal.convert import atoms_to_row, pyxtal_to_row, row_to_pyxtal
from legodask.store import Run

# Rows of sp2_sacada.db outside the training filter (METHOD.md section 2).
EXCLUDED = {1, 32, 47, 48, 49, 50, 51, 52, 130, 144}


@pytest.fixture(scope="module")
def training_rows(sacada_db) -> pd.DataFrame:
    """The 140 training structures as canonical table rows."""
    db = connect(sacada_db)
    rows = [atoms_to_row(r.toatoms(), id=f"sacada-{r.id}", source="sacada")
            for r in db.select() if r.id not in EXCLUDED]
    return S.conform(pd.DataFrame(rows))


def swapped(df: pd.DataFrame, prefix: str) -> pd.DataFrame:
    """The same crystals in other rows: the last atom of each orbit represents it."""
    rows = []
    for rec in df.to_dict("records"):
        xtal = row_to_pyxtal(rec)
        ids = [len(site.coords) - 1 for site in xtal.atom_sites]
        rows.append(pyxtal_to_row(xtal, ids=ids, id=f"{prefix}-{rec['id']}"))
    return S.conform(pd.DataFrame(rows))


def test_the_140_training_structures_are_140_crystals(training_rows, tmp_path):
    assert len(training_rows) == 140 and training_rows.valid_xtal.all()
    run = Run(tmp_path / "train")
    run.write_frame_table("ingested", training_rows, rows_per_part=50)
    D.dedup(run, "ingested", require=["valid_xtal"])
    fp = run.read(S.FINGERPRINTS).compute()
    assert len(fp) == 140 and fp[S.FP_ERROR].isna().all()
    # The coarse key alone lumps some together (e.g. ids 4 and 14, both P6_222 6-fold);
    # the fine comparison separates all of them.  No true duplicates: pymatgen's
    # StructureMatcher over every pair of equal primitive size (709 pairs) finds none.
    assert fp[S.FINGERPRINT].nunique() < 140
    assert fp[S.IS_NEW].all() and fp[S.FIRST_ID].tolist() == fp["id"].tolist()
    assert fp[S.FP_DATA].notna().all()
    strict = D.assign(fp.drop(columns=[S.IS_NEW, S.FIRST_ID]), fp.iloc[:0].assign(own=[]),
                      matcher="pymatgen")
    assert strict[S.IS_NEW].all()


def test_a_batch_fed_twice_adds_nothing(training_rows, tmp_path):
    batch = training_rows.iloc[:24].reset_index(drop=True)
    again = swapped(batch, "again")                  # same crystals, other rows and ids
    first = Run(tmp_path / "first")
    first.write_frame_table("prerelaxed", pd.concat([batch, again], ignore_index=True),
                            rows_per_part=24)
    result = D.dedup(first, "prerelaxed")
    assert result.written == 2
    fp = first.read(S.FINGERPRINTS).compute()
    one, two = fp.iloc[:24], fp.iloc[24:]
    assert one[S.IS_NEW].all() and not two[S.IS_NEW].any()
    assert two[S.FIRST_ID].tolist() == batch["id"].tolist()
    assert two[S.FP_DATA].isna().all()              # only the first row keeps the data

    # a rerun finds everything done and writes nothing, not even the table's marks
    table = first.table_path(S.FINGERPRINTS)
    stamps = {f: f.stat().st_mtime_ns for f in table.iterdir()}
    assert D.dedup(first, "prerelaxed").written == 0
    assert {f: f.stat().st_mtime_ns for f in table.iterdir()} == stamps

    # a later run: the same batch plus 10 other crystals, against the first run
    later = Run(tmp_path / "later")
    more = pd.concat([batch, training_rows.iloc[100:110]], ignore_index=True)
    later.write_frame_table("prerelaxed", more)
    D.dedup(later, "prerelaxed", against=[first.path])
    fp2 = later.read(S.FINGERPRINTS).compute()
    assert fp2[S.IS_NEW].tolist() == [False] * 24 + [True] * 10
    assert fp2[S.FIRST_ID].iloc[:24].tolist() == batch["id"].tolist()
    assert fp2[S.FP_DATA].notna().all()             # each is the first of its crystal here


def test_invalid_rows_are_kept_and_not_counted(training_rows, tmp_path):
    df = training_rows.iloc[:6].copy()
    df["valid_env"] = [True, False, True, True, False, True]
    df.loc[3, "spg"] = 0                             # an undecodable row
    run = Run(tmp_path / "bad")
    run.write_frame_table("prerelaxed", df)
    D.dedup(run, "prerelaxed")
    fp = run.read(S.FINGERPRINTS).compute()
    assert len(fp) == 6
    assert fp[S.IS_NEW].tolist() == [True, False, True, False, False, True]
    assert fp[S.FP_ERROR].notna().tolist() == [False, True, False, True, True, False]


def test_cli_dedup_against_a_table(training_rows, tmp_path):
    base = Run(tmp_path / "base")
    base.write_frame_table("prerelaxed", training_rows.iloc[:5])
    D.dedup(base, "prerelaxed")
    run = Run(tmp_path / "run")
    run.write_frame_table("ranked", training_rows.iloc[3:8])
    assert main(["dedup", "--run", str(run.path), "--against",
                 str(base.table_path(S.FINGERPRINTS)), "--workers", "1"]) == 0
    fp = run.read(S.FINGERPRINTS).compute()
    assert fp[S.IS_NEW].tolist() == [False, False, True, True, True]
    assert run.info(S.FINGERPRINTS)["source"] == "ranked"
