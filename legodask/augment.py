"""Symmetry augmentation: each training crystal as many tabular rows.

Two sources of rows (paper section III-A, Supplement S4-B/C; METHOD.md section 2):

* **subgroup representations** -- the same crystal written in a maximal t- or
  k-subgroup of its space group (pyxtal's ``subgroup_once``): diamond (227, 8a)
  is also (216, 4a 4d), (166, 6c), (141, 4a), ...  A representation is kept when it
  is within the table's limits, new for its parent and still has the target
  environment;
* **orbit-representative swaps** -- each Wyckoff site may be written by any atom
  of its orbit, so one representation gives several rows.

The stage runs one task per training structure.  Every random choice of a task
(pyxtal's subgroup choices, the swaps, the tiny distortion) comes from numpy
generators seeded by ``(run seed, hash of the structure id, stream)``, so that a
table does not depend on how many workers or partitions computed it.  pyxtal's own
perturbation draws from numpy's global generator, so it is switched off
(``eps=0``) and the distortion is applied here, within each Wyckoff position.
A subgroup try that raises is a failed try, counted in ``augment_errors``; a
structure that fails as a whole or runs past its time-out gives one row with
``valid_xtal`` false and the reason in ``error``; the stage goes on.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import hashlib
import itertools
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import dask
import numpy as np
import pandas as pd
from ase.geometry import cellpar_to_cell

from . import codec
from . import schema as S
from .store import Run, StageResult

log = logging.getLogger("legodask")

PATH = "subgroup_path"
ERRORS = "augment_errors"   # subgroup tries of the structure that raised, and why
EXTRA = {PATH: "object", ERRORS: "object"}
SOURCE_TABLE = "ingested"
TABLE = "augmented"


@dataclass(frozen=True)
class Params:
    """What one augmentation run does (the presets below fix these).

    ``max_per_structure`` stops trying new subgroups once a structure has that many
    rows (checked before each try, as the reference code does, so a structure may
    end up to one subgroup's rows above it); ``max_per_subgroup`` caps the swaps of
    one subgroup representation and ``max_per_parent`` those of the parent's own
    representation.  ``depth`` > 1 also takes subgroups of accepted subgroups.
    """

    seed: int = 0
    max_per_structure: int = 500
    max_per_subgroup: int = 100
    max_per_parent: int = 300
    tries: int = 20               # subgroup_once calls per group type ('t', 'k')
    depth: int = 1
    eps: float = 0.001            # Å, random distortion of each representation
    timeout: float = 60.0         # s per structure
    max_atoms: int = 500
    max_sites: int = S.MAX_SITES
    max_dof: int = 24
    max_length: float = 50.0      # Å
    min_angle: float = 30.0       # degrees
    max_angle: float = 150.0
    check: str = "env"            # "prerelax", "env" or "none"
    environment: str = "graphite"


# The paper's datasets (Table I) rebuilt from the 140 training structures.  The
# reference script takes up to 0.6 x and 0.2 x its per-structure cap for the
# parent's and each subgroup's swaps (300 and 100 for a cap of 500).
PRESETS: dict[str, dict[str, Any]] = {
    "v1": dict(max_per_structure=500, max_per_subgroup=100, max_per_parent=300),
    "v2": dict(max_per_structure=1000, max_per_subgroup=200, max_per_parent=600),
    "v3": dict(max_per_structure=2000, max_per_subgroup=400, max_per_parent=1200),
    "2m": dict(max_per_structure=24000, max_per_subgroup=2400, max_per_parent=7200,
               tries=60, depth=2),
}


def preset(name: str, **overrides: Any) -> Params:
    """``Params`` of a preset, with ``overrides`` (``None`` values ignored).  A new
    ``max_per_subgroup`` without ``max_per_parent`` sets the latter to 3 x it, the
    reference's ratio."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: one of {sorted(PRESETS)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    if "max_per_subgroup" in given and "max_per_parent" not in given:
        given["max_per_parent"] = 3 * given["max_per_subgroup"]
    return Params(**{**PRESETS[name], **given})


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def stable_hash(text: str) -> int:
    """A 64-bit hash of ``text`` that is the same in every process (unlike ``hash``)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


# Independent random streams of a task, so that e.g. the subgroups found for a
# structure do not depend on how many swaps a preset samples.
SEARCH, SWAPS, DISTORT = range(3)


def task_rng(seed: int, structure_id: str, stream: int) -> np.random.Generator:
    """A random stream of one structure's task, from the run seed and the id only."""
    return np.random.default_rng([seed, stable_hash(structure_id), stream])


def symmetry_key(df: pd.DataFrame) -> pd.Series:
    """Each row's symmetry as in the paper's Table I: space group and the sorted
    Wyckoff labels of its sites, e.g. ``"227 8a"`` or ``"216 4a 4d"``."""
    wp = np.sort(df.reindex(columns=S.WP, fill_value=-1).to_numpy(dtype=float), axis=1)
    wp = np.where(np.isnan(wp), -1, wp).astype(int)
    spg = df["spg"].to_numpy(dtype=int)
    combos, inverse = np.unique(np.column_stack([spg, wp]), axis=0, return_inverse=True)
    names = []
    for spg_k, *sites in combos:
        labels = sorted(f"{codec.wyckoff_ops(int(spg_k), int(w)).multiplicity}"
                        f"{codec.wyckoff_ops(int(spg_k), int(w)).letter}"
                        for w in sites if w >= 0)
        names.append(" ".join([str(spg_k), *labels]))
    return pd.Series(np.array(names, dtype=object)[inverse.ravel()], index=df.index,
                     name="symmetry")


class AugmentTimeout(Exception):
    """A structure's augmentation ran past its time-out."""


T = TypeVar("T")


def call_with_timeout(fn: Callable[[], T], seconds: float) -> T:
    """Run ``fn()`` in this thread; raise ``AugmentTimeout`` in it after ``seconds``.

    A watchdog thread raises the exception asynchronously inside the running
    Python code (pyxtal's subgroup search is Python), and again every 0.2 s, as
    code under a bare ``except`` may swallow it.  Works in dask worker threads,
    where signals cannot be used; a single long call into C is not interrupted
    (the exception arrives when it returns).
    """
    tid = threading.get_ident()
    done = threading.Event()
    lock = threading.Lock()

    def watchdog() -> None:
        if done.wait(seconds):
            return
        while True:
            with lock:
                if done.is_set():
                    return
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(tid), ctypes.py_object(AugmentTimeout))
            if done.wait(0.2):
                return

    guard = threading.Thread(target=watchdog, daemon=True)
    guard.start()
    try:
        try:
            return fn()
        finally:
            with lock:
                done.set()
                # clear an exception raised but not yet delivered
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(tid), None)
    except AugmentTimeout:
        raise AugmentTimeout(f"augmentation ran past its time-out of {seconds:g} s") from None


# ---------------------------------------------------------------------------
# one structure
# ---------------------------------------------------------------------------

@dataclass
class Rep:
    """An accepted representation of a structure: decoded form and subgroup path."""

    dec: codec.Decoded
    path: str
    xtal: Any = None          # the pyxtal crystal, built on demand

    def pyxtal(self) -> Any:
        if self.xtal is None:
            self.xtal = codec.decoded_to_pyxtal(self.dec)
        return self.xtal


def limit_reason(dec: codec.Decoded, p: Params) -> str | None:
    """Why a representation is outside the table's limits, or ``None``."""
    lengths, angles = dec.cell[:3], dec.cell[3:]
    if dec.natoms > p.max_atoms:
        return f"{dec.natoms} atoms > {p.max_atoms}"
    if len(dec.sites) > p.max_sites:
        return f"{len(dec.sites)} Wyckoff sites > {p.max_sites}"
    if dec.dof > p.max_dof:
        return f"{dec.dof} free variables > {p.max_dof}"
    if lengths.max() >= p.max_length:
        return f"cell length {lengths.max():.1f} Å >= {p.max_length}"
    if angles.min() <= p.min_angle or angles.max() >= p.max_angle:
        return f"cell angles outside {p.min_angle}-{p.max_angle}°"
    return None


def distort(dec: codec.Decoded, eps: float, rng: np.random.Generator) -> codec.Decoded:
    """Move each site by a random vector of at most ``eps`` Å within its Wyckoff
    position (symmetry kept exactly; special positions without freedom stay)."""
    G = codec.metric_tensor(dec.cell)
    inv = np.linalg.inv(cellpar_to_cell(dec.cell))
    sites = []
    for s in dec.sites:
        v = rng.normal(size=3)
        v *= eps * rng.random() / max(np.linalg.norm(v), 1e-12)
        point, free, _ = codec.project(s.wp, s.point + v @ inv, G)
        sites.append(codec.Site(s.wp, s.element, point, free, 0.0))
    return codec.Decoded(dec.spg, dec.cell.copy(), sites)


def same_symmetry(a: codec.Decoded, b: codec.Decoded) -> bool:
    """Whether two representations repeat each other: same space group, same sorted
    Wyckoff positions and the same cell within 0.05 Å and 0.5°."""
    def key(d: codec.Decoded) -> tuple[int, list[int]]:
        return d.spg, sorted(s.wp.index for s in d.sites)
    return bool(key(a) == key(b) and np.all(np.abs(a.cell[:3] - b.cell[:3]) < 0.05)
                and np.all(np.abs(a.cell[3:] - b.cell[3:]) < 0.5))


def orbit_choices(dec: codec.Decoded, n_max: int, rng: np.random.Generator
                  ) -> Iterator[tuple[int, ...]]:
    """Which orbit atom writes each site, for up to ``n_max`` distinct rows.

    As the reference code, each site offers at most 192, 100, 20 or
    ``100000 ** (1 / n_sites)`` of its atoms (1, 2, <= 4 or more sites), so that
    the combinations cannot explode; more combinations than ``n_max`` are sampled
    without repetition.  The first row is always the generators' (all zeros).
    """
    n = len(dec.sites)
    per_site = 192 if n <= 1 else 100 if n <= 2 else 20 if n <= 4 else int(100000 ** (1 / n))
    sizes = [min(per_site, s.wp.multiplicity) for s in dec.sites]
    total = math.prod(sizes)
    if total <= n_max:
        yield from itertools.product(*map(range, sizes))
        return
    yield (0,) * n
    if n_max > 1:
        for flat in np.sort(rng.choice(total - 1, size=n_max - 1, replace=False) + 1):
            yield tuple(int(i) for i in np.unravel_index(int(flat), sizes))


def make_checker(p: Params) -> Callable[[codec.Decoded], str | None]:
    """The environment test of a representation: ``None`` when it keeps the target
    environment, else the reason.  ``prerelax`` pre-relaxes it (the reference
    code's test), ``env`` checks the crystal as it is, ``none`` accepts all."""
    if p.check == "none":
        return lambda dec: None
    from . import environment

    env = environment.get_environment(p.environment)
    if p.check == "env":
        def check_env(dec: codec.Decoded) -> str | None:
            ok, reason = environment.check_atoms(dec.to_atoms(), env)
            return None if ok else reason
        return check_env
    if p.check == "prerelax":
        from . import prerelax

        def check_prerelax(dec: codec.Decoded) -> str | None:
            row = codec.pyxtal_to_row(codec.decoded_to_pyxtal(dec))
            out = prerelax.prerelax_row(row, env)
            return None if out.get("valid_env") else str(out.get("env_error") or "invalid")
        return check_prerelax
    raise ValueError(f"unknown check {p.check!r}: prerelax, env or none")


def _subgroup(base: Rep, gtype: str, p: Params, rng: np.random.Generator
              ) -> tuple[Any, str] | None:
    """One ``subgroup_once`` try from ``base`` (then, as the reference code, a
    t-subgroup of a t-subgroup when none is found): the crystal and its path."""
    xtal = base.pyxtal()
    xtal.random_state = rng
    max_cell = max(p.max_atoms / base.dec.natoms, 1.0)
    sub = xtal.subgroup_once(eps=0.0, group_type=gtype, max_cell=max_cell, mut_lat=False)
    if sub is not None:
        return sub, f"{base.path}>{sub.group.number}"
    mid = xtal.subgroup_once(eps=0.0, group_type="t", mut_lat=False)
    if mid is None:
        return None
    mid.random_state = rng
    sub = mid.subgroup_once(eps=0.0, group_type="t", max_cell=max_cell, mut_lat=False)
    if sub is None:
        return None
    return sub, f"{base.path}>{mid.group.number}>{sub.group.number}"


def representations(parent: codec.Decoded, p: Params, search: np.random.Generator,
                    noise: np.random.Generator, check: Callable[[codec.Decoded], str | None],
                    emit: Callable[[Rep, int], int]) -> list[str]:
    """Emit the parent's representation (up to ``max_per_parent`` rows), then each
    accepted subgroup representation (up to ``max_per_subgroup``), until the
    structure has ``max_per_structure`` rows; ``emit(rep, n_max)`` writes a
    representation's rows and returns how many.  Returns the errors of the
    subgroup tries that raised."""
    errors: list[str] = []
    first = Rep(distort(parent, p.eps, noise), str(parent.spg))
    reason = limit_reason(parent, p) or check(first.dec)
    if reason:
        raise codec.DecodeError(f"parent rejected: {reason}")
    kept = [first]
    n_rows = emit(first, min(p.max_per_parent, p.max_per_structure))
    for gtype in ("t", "k"):
        for _ in range(p.tries):
            if n_rows >= p.max_per_structure:
                return errors
            bases = [r for r in kept if r.path.count(">") < p.depth]
            base = bases[int(search.integers(len(bases)))] if len(bases) > 1 else bases[0]
            try:
                found = _subgroup(base, gtype, p, search)
            except AugmentTimeout:
                raise
            except Exception as exc:  # pyxtal raises on some splits: a failed try
                errors.append(f"{gtype} from {base.path}: {type(exc).__name__}: {exc}")
                continue
            if found is None:
                continue
            sub, path = found
            try:
                dec = codec.decode_row(codec.pyxtal_to_row(sub), tol=1e-3,
                                       max_atoms=10 * p.max_atoms)
            except codec.DecodeError:
                continue   # pyxtal handed over a site it misplaced
            if limit_reason(dec, p):
                continue
            if any(same_symmetry(r.dec, dec) for r in kept):
                continue
            rep = Rep(distort(dec, p.eps, noise), path)
            if check(rep.dec):
                continue
            kept.append(rep)
            n_rows += emit(rep, p.max_per_subgroup)
    return errors


def orbit(site: codec.Site) -> np.ndarray:
    """Fractional coordinates of every atom of a site's orbit, in [0, 1), in the
    order of its Wyckoff operations.  Written out element by element (the
    operations' matrices hold 0 and +-1) so that the values do not depend on how
    BLAS sums a product, which may differ between processes by one unit in the
    last place and would break byte-identical tables."""
    A, t, f = site.wp.A, site.wp.t, site.free
    v = A[:, :, 0] * f[0] + A[:, :, 1] * f[1] + A[:, :, 2] * f[2] + t
    v = v - np.floor(v)
    return np.where(v >= 1.0 - 1e-12, 0.0, v)


def augment_structure(row: Mapping[str, Any], p: Params,
                      check: Callable[[codec.Decoded], str | None]) -> pd.DataFrame:
    """All augmented rows of one training structure (raises on failure).  Rows are
    gathered as one frame per representation, which keeps a task's memory small."""
    pid = str(row["id"])
    swaps = task_rng(p.seed, pid, SWAPS)
    chunks: list[pd.DataFrame] = []
    n_out = 0

    def emit(rep: Rep, n_max: int) -> int:
        nonlocal n_out
        choices = np.array(list(orbit_choices(rep.dec, n_max, swaps)), dtype=int)
        n = len(choices)
        base = codec.pyxtal_to_row(rep.pyxtal(), parent_id=pid, source=row.get("source"),
                                   **{PATH: rep.path})
        cols: dict[str, Any] = {k: [v] * n for k, v in base.items()}
        cols["id"] = [f"{pid}-{n_out + i:05d}" for i in range(n)]
        for k, site in enumerate(rep.dec.sites):   # the decoded order, for every column
            cols[f"wp{k}"], cols[f"el{k}"] = [site.wp.index] * n, [site.element] * n
            xyz = orbit(site)[choices[:, k]]
            for j, col in enumerate(S.XYZ[k]):
                cols[col] = xyz[:, j]
        chunks.append(S.conform(pd.DataFrame(cols), EXTRA))
        n_out += n
        return n

    errors = representations(codec.decode_row(row), p, task_rng(p.seed, pid, SEARCH),
                             task_rng(p.seed, pid, DISTORT), check, emit)
    out = pd.concat(chunks, ignore_index=True)
    if errors:
        out[ERRORS] = f"{len(errors)} subgroup tries raised; first: {errors[0]}"
    return out


def failure_row(row: Mapping[str, Any], reason: str) -> dict[str, Any]:
    """The one row of a structure that could not be augmented: the parent as it
    came, with ``valid_xtal`` false and the reason."""
    rec = {c: row.get(c) for c in S.COLUMNS if c in row}
    pid = str(row["id"])
    rec.update(id=f"{pid}-failed", parent_id=pid, valid_xtal=False,
               error=f"augment: {reason}", **{PATH: None, ERRORS: None})
    return rec


# ---------------------------------------------------------------------------
# the kernel and the stage
# ---------------------------------------------------------------------------

def meta() -> pd.DataFrame:
    """The augmented table's columns: the structure table, ``subgroup_path`` (e.g.
    ``"227>166"``) and ``augment_errors``."""
    return S.empty_frame(EXTRA)


def training_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows to augment: valid crystals of the training set (when marked)."""
    keep = np.ones(len(df), bool)
    for col in ("valid_xtal", "train"):
        if col in df.columns:
            keep &= df[col].fillna(False).astype(bool).to_numpy()
    return df[keep]


def augment_frame(df: pd.DataFrame, p: Params) -> pd.DataFrame:
    """The kernel: augmented rows of every training structure of a partition, in
    the partition's order.  Failures and time-outs give one recorded row each."""
    check = make_checker(p)
    frames = [meta()]
    for row in training_rows(df).to_dict("records"):
        start = time.perf_counter()
        try:
            rows = call_with_timeout(lambda: augment_structure(row, p, check), p.timeout)
        except Exception as exc:  # any failure is recorded, never raised
            rows = S.conform(pd.DataFrame([failure_row(row, f"{type(exc).__name__}: {exc}")]),
                             EXTRA)
        log.debug("augmented %s: %d rows in %.2f s", row.get("id"), len(rows),
                  time.perf_counter() - start)
        frames.append(rows[list(frames[0].columns)])
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def _slice_frame(df: pd.DataFrame, start: int, stop: int, p: Params) -> pd.DataFrame:
    return augment_frame(df.iloc[start:stop], p)


def augment(run: Run, p: Params, per_task: int = 1, overwrite: bool = False) -> StageResult:
    """Augment ``RUN/ingested`` into ``RUN/augmented``: one task (and partition) per
    ``per_task`` structures of each input partition, so that no process holds more
    than a few structures' rows and the table is the same for any worker count.  A
    table made with other parameters is refused (``overwrite``: replaced)."""
    from .cluster import compute

    params = json.loads(json.dumps(dataclasses.asdict(p)))
    parts = run.read(SOURCE_TABLE).to_delayed()
    sizes = compute([dask.delayed(len)(part) for part in parts], desc="sizes")
    tasks = [dask.delayed(_slice_frame)(part, i, i + per_task, p)
             for part, n in zip(parts, sizes) for i in range(0, n, per_task)]
    return run.write(TABLE, tasks, meta(), desc="augment", source=SOURCE_TABLE,
                     overwrite=overwrite, params=params, per_task=per_task)


# ---------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="run directory")
    parser.add_argument("--preset", default="v1", choices=sorted(PRESETS),
                        help="dataset size: v1 ~60k, v2 ~120k, v3 ~240k, 2m ~2M rows")
    parser.add_argument("--seed", type=int, default=None, help="run seed (default 0)")
    parser.add_argument("--max-per-subgroup", type=int, default=None,
                        help="rows (orbit swaps) per subgroup representation")
    parser.add_argument("--max-per-parent", type=int, default=None,
                        help="rows (orbit swaps) of the structure's own representation "
                             "(default 3 x --max-per-subgroup)")
    parser.add_argument("--max-per-structure", type=int, default=None,
                        help="stop trying subgroups of a structure at this many rows")
    parser.add_argument("--tries", type=int, default=None,
                        help="subgroup_once tries per group type, t and k (default 20)")
    parser.add_argument("--eps", type=float, default=None,
                        help="random distortion in Å (default 0.001)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds per structure (default 60; raise it with "
                             "--check prerelax, which pre-relaxes every subgroup)")
    parser.add_argument("--check", choices=["prerelax", "env", "none"], default=None,
                        help="environment test of each representation (default env)")
    parser.add_argument("--env", dest="environment", default=None,
                        help="target environment: prototype name or structure file "
                             "(default graphite)")
    parser.add_argument("--per-task", type=int, default=1,
                        help="structures per task and output partition")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the table when it was made with other parameters")


def command(args: argparse.Namespace) -> int:
    p = preset(args.preset, seed=args.seed, max_per_subgroup=args.max_per_subgroup,
               max_per_parent=args.max_per_parent,
               max_per_structure=args.max_per_structure, tries=args.tries, eps=args.eps,
               timeout=args.timeout, check=args.check, environment=args.environment)
    result = augment(Run(args.run), p, per_task=args.per_task, overwrite=args.overwrite)
    print(result)
    return 0
