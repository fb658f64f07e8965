"""The SACADA sp2 training data: a given path, or a cached copy fetched once from
the LEGO-xtal repository; every copy is checked against the published SHA-256."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import urllib.request
from pathlib import Path

from ..store import atomic_path

log = logging.getLogger("legodask")

SACADA_URL = "https://raw.githubusercontent.com/MaterSim/LEGO-xtal/main/data/source/sp2_sacada.db"
SACADA_SHA256 = "8581c894316744994d4f412698a1ff6c4370ec99eb148a297c21eeab58145ce9"
SACADA_ENV = "LEGODASK_SACADA_DB"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_dir() -> Path:
    """Where fetched data live: ``$LEGODASK_CACHE`` or the user cache folder."""
    import platformdirs

    return Path(os.environ.get("LEGODASK_CACHE", platformdirs.user_cache_dir("legodask")))


def sacada_db(path: str | os.PathLike | None = None, fetch: bool = True) -> Path:
    """Path of ``sp2_sacada.db``: ``path``, else ``$LEGODASK_SACADA_DB``, else the
    cached copy, fetched from the LEGO-xtal repository on first use.  Every copy is
    checked against the published SHA-256."""
    given = path or os.environ.get(SACADA_ENV)
    if given:
        p = Path(given)
        if not p.exists():
            raise FileNotFoundError(f"{p} does not exist (given as the SACADA db)")
        _verify(p)
        return p
    p = cache_dir() / "sp2_sacada.db"
    if p.exists():
        _verify(p)
        return p
    if not fetch:
        raise FileNotFoundError(f"{p} is not cached; set {SACADA_ENV} or allow fetching")
    p.parent.mkdir(parents=True, exist_ok=True)
    log.info("fetching %s", SACADA_URL)
    with atomic_path(p) as tmp:
        try:
            with urllib.request.urlopen(SACADA_URL, timeout=60) as resp, open(tmp, "wb") as f:
                shutil.copyfileobj(resp, f)
        except OSError as exc:
            raise OSError(f"could not fetch {SACADA_URL} ({exc}); download it by hand and "
                          f"set {SACADA_ENV}=/path/to/sp2_sacada.db") from exc
        _verify(tmp)
    return p


def _verify(p: Path) -> None:
    digest = sha256(p)
    if digest != SACADA_SHA256:
        raise ValueError(f"{p}: sha256 {digest} is not the published {SACADA_SHA256}")
