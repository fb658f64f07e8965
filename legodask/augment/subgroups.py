"""One structure's representations: the parent's own and those of its maximal t-
and k-subgroups (pyxtal's ``subgroup_once``), each kept when it is within the
table's limits, new for the parent and still has the target environment; and the
orbit atoms that may write each site."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from ase.geometry import cellpar_to_cell

from .. import schema as S
from ..crystal.cell import metric_tensor
from ..crystal.convert import decoded_to_pyxtal, pyxtal_to_row
from ..crystal.decode import DecodeError, Decoded, Site, decode_row
from ..crystal.wyckoff import project
from .params import Params
from .timeout import AugmentTimeout


@dataclass
class Rep:
    """An accepted representation of a structure: decoded form and subgroup path."""

    dec: Decoded
    path: str
    xtal: Any = None          # the pyxtal crystal, built on demand

    def pyxtal(self) -> Any:
        if self.xtal is None:
            self.xtal = decoded_to_pyxtal(self.dec)
        return self.xtal


def limit_reason(dec: Decoded, p: Params) -> str | None:
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


def distort(dec: Decoded, eps: float, rng: np.random.Generator) -> Decoded:
    """Move each site by a random vector of at most ``eps`` Å within its Wyckoff
    position (symmetry kept exactly; special positions without freedom stay)."""
    G = metric_tensor(dec.cell)
    inv = np.linalg.inv(cellpar_to_cell(dec.cell))
    sites = []
    for s in dec.sites:
        v = rng.normal(size=3)
        v *= eps * rng.random() / max(np.linalg.norm(v), 1e-12)
        point, free, _ = project(s.wp, s.point + v @ inv, G)
        sites.append(Site(s.wp, s.element, point, free, 0.0))
    return Decoded(dec.spg, dec.cell.copy(), sites)


def same_symmetry(a: Decoded, b: Decoded) -> bool:
    """Whether two representations repeat each other: same space group, same sorted
    Wyckoff positions and the same cell within 0.05 Å and 0.5°."""
    def key(d: Decoded) -> tuple[int, list[int]]:
        return d.spg, sorted(s.wp.index for s in d.sites)
    return bool(key(a) == key(b) and np.all(np.abs(a.cell[:3] - b.cell[:3]) < 0.05)
                and np.all(np.abs(a.cell[3:] - b.cell[3:]) < 0.5))


def orbit_choices(dec: Decoded, n_max: int, rng: np.random.Generator
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


def make_checker(p: Params) -> Callable[[Decoded], str | None]:
    """The environment test of a representation: ``None`` when it keeps the target
    environment, else the reason.  ``prerelax`` pre-relaxes it (the reference
    code's test), ``env`` checks the crystal as it is, ``none`` accepts all."""
    if p.check == "none":
        return lambda dec: None
    from ..crystal import environment

    env = environment.get_environment(p.environment)
    if p.check == "env":
        def check_env(dec: Decoded) -> str | None:
            ok, reason = environment.check_atoms(dec.to_atoms(), env)
            return None if ok else reason
        return check_env
    if p.check == "prerelax":
        from .. import prerelax

        def check_prerelax(dec: Decoded) -> str | None:
            row = pyxtal_to_row(decoded_to_pyxtal(dec))
            out = prerelax.prerelax_row(row, env)
            return None if out.get(S.VALID_ENV) else str(out.get(S.ENV_ERROR) or "invalid")
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


def representations(parent: Decoded, p: Params, search: np.random.Generator,
                    noise: np.random.Generator, check: Callable[[Decoded], str | None],
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
        raise DecodeError(f"parent rejected: {reason}")
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
                dec = decode_row(pyxtal_to_row(sub), tol=1e-3,
                                       max_atoms=10 * p.max_atoms)
            except DecodeError:
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
