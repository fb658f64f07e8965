"""Shared fixtures: the SACADA training data (read from ../shared/data, never downloaded)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def sacada_db() -> Path:
    """Path of sp2_sacada.db: $LEGODASK_SACADA_DB, else ../shared/data beside the repo.

    A test that needs the data fails when it is missing (CI always has it), so that a
    missing file is never mistaken for a passing suite.
    """
    path = Path(os.environ.get("LEGODASK_SACADA_DB", ROOT.parent / "shared/data/sp2_sacada.db"))
    if not path.exists():
        pytest.fail(
            f"training data not found at {path}: set LEGODASK_SACADA_DB=/path/to/sp2_sacada.db "
            f"or put the file at {ROOT.parent / 'shared/data/sp2_sacada.db'}",
            pytrace=False,
        )
    return path
