"""Reference environments: what a pre-relaxed crystal's atoms should look like.

An ``Environment`` names the target coordination of each element (graphite: every
carbon with 3 carbon neighbours), the bond cutoff of each element pair (by default
1.2 x the sum of the covalent radii, 1.872 Å for C-C), optional forbidden pairs
(no O-O bonds in SiO2) and, beyond what the reference code checks, windows on bond
lengths and bond angles and a planarity test, so that three neighbours at 60° (a
triangle of atoms) is not taken for sp2 carbon.  It also carries the reference
crystal, whose per-site SO(3) power spectra are the pre-relaxation's targets, and
the descriptor cutoff used against it.

``check_atoms`` is the environment test (``valid_env`` and the reason when false);
``get_environment`` builds an environment from a prototype name, a structure file,
a table row or ASE Atoms.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from .. import schema as S
from .descriptor import SO3Params

# Covalent radii (Å) of pyxtal's element table (C 0.78, as the reference code);
# ASE's table is the fallback for elements missing here.
_COVALENT = {"C": 0.78, "Si": 1.11, "O": 0.70, "N": 0.71, "B": 0.84, "H": 0.31}
BOND_FACTOR = 1.2


def covalent_radius(element: str) -> float:
    """Covalent radius (Å) used for default bond cutoffs."""
    if element in _COVALENT:
        return _COVALENT[element]
    from ase.data import atomic_numbers, covalent_radii

    return float(covalent_radii[atomic_numbers[element]])


def _pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)


@dataclass
class Environment:
    """A target local environment for every element of a chemical system."""

    name: str
    cn: dict[str, int]
    reference: Atoms
    cutoffs: dict[tuple[str, str], float] = field(default_factory=dict)
    forbidden: tuple[tuple[str, str], ...] = ()
    bond_length: tuple[float, float] | None = None   # Å window for every bond
    bond_angle: tuple[float, float] | None = None    # degrees, every angle at an atom
    planar: float | None = None   # sp2: max |360° - sum of the 3 bond angles|
    rcut: float = 2.1             # SO(3) descriptor cutoff used against the reference
    rdf_bins: int = 0             # > 0: the descriptor includes the smoothed RDF

    @property
    def params(self) -> SO3Params:
        """The descriptor compared against the reference."""
        return SO3Params(rcut=self.rcut, rdf_bins=self.rdf_bins)

    def cutoff(self, a: str, b: str) -> float:
        """Bond cutoff (Å) of the element pair ``a``-``b``."""
        key = _pair(a, b)
        if key in self.cutoffs:
            return self.cutoffs[key]
        return BOND_FACTOR * (covalent_radius(a) + covalent_radius(b))

    @property
    def elements(self) -> list[str]:
        return sorted(self.cn)

    def is_forbidden(self, a: str, b: str) -> bool:
        return _pair(a, b) in {_pair(*p) for p in self.forbidden}


def bonds(atoms: Atoms, env: Environment) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bonded pairs ``(i, j, D)`` (both directions; ``D`` the i->j vectors, Å) under
    the environment's per-pair cutoffs."""
    from ase.neighborlist import neighbor_list

    symbols = atoms.get_chemical_symbols()
    elements = sorted(set(symbols))
    max_cut = max(env.cutoff(a, b) for a in elements for b in elements)
    i, j, d, D = neighbor_list("ijdD", atoms, max_cut, self_interaction=False)
    cut = np.array([env.cutoff(symbols[a], symbols[b]) for a, b in zip(i, j)])
    keep = d < cut if len(d) else np.zeros(0, bool)
    return i[keep], j[keep], D[keep]


def check_atoms(atoms: Atoms, env: Environment) -> tuple[bool, str | None]:
    """Whether every atom has its environment; ``(False, reason)`` for the first failure.

    Checks in order: elements known, forbidden pairs, coordination number per
    element, bond-length window, bond-angle window, planarity (3-coordinated atoms).
    """
    symbols = atoms.get_chemical_symbols()
    unknown = sorted(set(symbols) - set(env.cn))
    if unknown:
        return False, f"element(s) {unknown} not in environment {env.name!r}"
    i, j, D = bonds(atoms, env)
    for a, b in zip(i, j):
        if env.is_forbidden(symbols[a], symbols[b]):
            return False, f"forbidden {symbols[a]}-{symbols[b]} bond between atoms {a} and {b}"
    counts = np.bincount(i, minlength=len(atoms))
    for a, sym in enumerate(symbols):
        if counts[a] != env.cn[sym]:
            return False, f"atom {a} ({sym}) has CN {counts[a]}, expected {env.cn[sym]}"
    d = np.linalg.norm(D, axis=1)
    if env.bond_length is not None and len(d):
        lo, hi = env.bond_length
        k = int(np.argmax((d < lo) | (d > hi)))
        if not lo <= d[k] <= hi:
            return False, f"bond {i[k]}-{j[k]} is {d[k]:.3f} Å, outside {lo}-{hi} Å"
    if env.bond_angle is None and env.planar is None:
        return True, None
    for a in range(len(atoms)):
        vec = D[i == a]
        if len(vec) < 2:
            continue
        u = vec / np.linalg.norm(vec, axis=1)[:, None]
        p, q = np.triu_indices(len(u), 1)
        ang = np.degrees(np.arccos(np.clip(np.einsum("kx,kx->k", u[p], u[q]), -1.0, 1.0)))
        if env.bond_angle is not None:
            lo, hi = env.bond_angle
            bad = (ang < lo) | (ang > hi)
            if bad.any():
                return False, (f"bond angle {ang[np.argmax(bad)]:.1f}° at atom {a} "
                               f"({symbols[a]}) outside {lo}-{hi}°")
        if env.planar is not None and len(u) == 3:
            dev = abs(360.0 - float(ang.sum()))
            if dev > env.planar:
                return False, (f"atom {a} ({symbols[a]}) is not planar: bond angles sum "
                               f"to {ang.sum():.1f}°")
    return True, None


def coordination(atoms: Atoms, env: Environment) -> np.ndarray:
    """Coordination number of every atom under the environment's cutoffs."""
    i, _, _ = bonds(atoms, env)
    return np.bincount(i, minlength=len(atoms))


# ---------------------------------------------------------------------------
# construction
# ---------------------------------------------------------------------------

def _prototype(name: str) -> Atoms:
    from pyxtal import pyxtal

    xtal = pyxtal()
    xtal.from_prototype(name)
    return xtal.to_ase(resort=False)


def graphite_environment() -> Environment:
    """sp2 carbon: graphite (P6_3/mmc, 2c + 2b, a = 2.46, c = 6.70 Å), every carbon
    with 3 neighbours at 1.42 Å.  Windows: bonds 1.25-1.75 Å, angles >= 55° (the
    training set has 3-rings at 60°) and the three angles summing to 360 +- 30°,
    so that three neighbours bunched on one side (60° apart) fail."""
    from pyxtal import pyxtal

    xtal = pyxtal()
    xtal.from_spg_wps_rep(194, ["2c", "2b"], [2.46, 6.70], ["C", "C"])
    return Environment("graphite", {"C": 3}, xtal.to_ase(resort=False),
                       bond_length=(1.25, 1.75), bond_angle=(55.0, 180.0), planar=30.0,
                       rcut=2.1)


def cristobalite_environment() -> Environment:
    """SiO2 with alpha-cristobalite's environment: Si with 4 O, O with 2 Si, no O-O
    and no Si-Si bonds (paper Supplement S3-E; descriptor cutoff 2.4 Å)."""
    return Environment("cristobalite", {"Si": 4, "O": 2}, _prototype("a-cristobalite"),
                       forbidden=(("O", "O"), ("Si", "Si")), rcut=2.4)


PROTOTYPES = {"graphite": graphite_environment, "sp2": graphite_environment,
              "cristobalite": cristobalite_environment,
              "a-cristobalite": cristobalite_environment}


def from_atoms(atoms: Atoms, name: str = "custom", rcut: float = 2.1,
               forbidden: tuple[tuple[str, str], ...] = ()) -> Environment:
    """An environment taken from a reference crystal: each element's CN is that of
    its first atom under the default cutoffs."""
    env = Environment(name, {}, atoms, forbidden=forbidden, rcut=rcut)
    cn = coordination(atoms, Environment(name, {s: 0 for s in set(atoms.symbols)}, atoms))
    for a, sym in enumerate(atoms.get_chemical_symbols()):
        env.cn.setdefault(sym, int(cn[a]))
    return env


def get_environment(spec: str | os.PathLike | Mapping[str, Any] | Atoms | Environment
                    ) -> Environment:
    """An environment from a prototype name (``graphite``, ``cristobalite``), a
    structure file (any format ASE reads), a table row or ASE Atoms."""
    if isinstance(spec, Environment):
        return spec
    if isinstance(spec, Atoms):
        return from_atoms(spec)
    if isinstance(spec, Mapping):
        from .convert import row_to_atoms

        return from_atoms(row_to_atoms(spec), name=str(spec.get(S.ID) or "row"))
    key = str(spec).lower()
    if key in PROTOTYPES:
        return PROTOTYPES[key]()
    path = Path(spec)
    if not path.exists():
        raise ValueError(f"unknown environment {spec!r}: not one of "
                         f"{sorted(PROTOTYPES)} and not a file")
    from ase.io import read

    return from_atoms(read(path), name=path.stem)
