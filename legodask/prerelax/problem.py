"""``legodask prerelax``: move crystals towards a reference environment, keeping symmetry.

The objective of a crystal is ``sum_sites multiplicity * min_k |P_site - P_ref,k|^2
/ N_atoms``: ``P_site`` the SO(3) power spectrum of one atom of the Wyckoff site
(all atoms of an orbit have the same one) and ``P_ref,k`` the distinct spectra of
the site's element in the reference crystal.  It is a function of the FREE
variables only -- the free cell parameters of the lattice type and the free
coordinates of each Wyckoff site (the pivot components of the site's parameters,
e.g. x and z of ``(x, 2x, z)``) -- so the space group is kept exactly.

Two optimisers over one model (``Batch`` + ``batch_loss``, exact gradients by
torch autograd):

* ``relax_scipy``: one crystal, scipy L-BFGS-B (optionally after a short
  Nelder-Mead start);
* ``relax_batch``: many crystals at once, L-BFGS with per-structure memory,
  trust radius (step-length control), convergence and early exit (TorchSim
  style: the state is a dataclass, the optimiser a function over it), on CPU or
  GPU.

``relax_rows`` runs either, checks each environment and rescues the crystals
that miss it (a wider-cutoff continuation, then basin hopping).

Bounds: cell lengths 1.5-50 Å, angles 30-150°.  Fractional coordinates are left
unbounded (the objective is periodic in them; the written row wraps them into
[0, 1)), where the reference code's [0, 1] box would leave walls at 0 and 1.
Each structure has a time budget; one that exceeds it or blows up is recorded in
``env_error``, not fatal.  Variables are scaled to about 1 Å per unit (lengths in
Å, angles / 10°, coordinates x cell length) so that one step size fits all.
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from . import codec
from . import schema as S
from .descriptor import SO3Params, SO3Torch, pair_weights, power_spectrum
from .environment import Environment, check_atoms, get_environment

log = logging.getLogger("legodask")

LENGTHS = (1.5, 50.0)
ANGLES = (30.0, 150.0)
ANGLE_UNIT = 10.0          # degrees per scaled unit
SKIN = 0.5                 # Å of neighbour-list skin

# For each lattice type, which free cell variable sets each of (a, b, c, al, be, ga);
# -1: fixed by the lattice type (the constant is codec.symmetrize_cell's).
_CELL_VARS = {
    "cubic": (0, 0, 0, -1, -1, -1),
    "tetragonal": (0, 0, 1, -1, -1, -1),
    "hexagonal": (0, 0, 1, -1, -1, -1),
    "trigonal": (0, 0, 1, -1, -1, -1),
    "orthorhombic": (0, 1, 2, -1, -1, -1),
    "monoclinic": (0, 1, 2, -1, 3, -1),
    "triclinic": (0, 1, 2, 3, 4, 5),
}

# the columns this stage adds (named in schema.PRERELAX) and their dtypes
EXTRA_DTYPES = dict(zip(S.PRERELAX, ["float64", "bool", "object", "int32", "float64"]))


@dataclass(frozen=True)
class Options:
    """How to pre-relax: optimiser limits, tolerances and the per-structure budget."""

    maxiter: int = 600          # L-BFGS-B iterations (the reference: 400 + 200)
    nelder_mead: int = 0        # derivative-free iterations before L-BFGS-B
    density: float = 1.5        # rescue: restart at the reference's volume per atom when
    #                             the start's is off by more than this factor (0: never)
    wide_rcut: float = 3.0      # rescue: relax first with this descriptor cutoff (Å),
    #                             then with the reference's (0: no such rescue)
    hops: int = 4               # rescue: basin-hopping restarts (from the start, see hop_step)
    steps: int = 600            # batched L-BFGS steps
    fmax: float = 1e-4          # converged: largest scaled gradient component
    loss_tol: float = 1e-8      # converged: loss below this
    ftol: float = 1e-8          # converged when a step gains less than this (absolute)
    patience: int = 30          # batched: converged when the loss gains less than
    #                             max(1e-4 loss, patience x ftol) in so many steps
    hop_step: float = 0.5       # basin hop i moves each atom's free coordinates by about
    #                             (i + 1) x this (Å) from the start ...
    hop_strain: float = 0.05    # ... and strains its cell parameters by (i + 1) x this
    max_step: float = 0.2       # batched: largest step per structure (scaled, ~Å)
    budget: float = 60.0        # seconds per structure (batched: its share of each step)
    batch_size: int = 256
    scipy_unit: float = 0.1     # Å per scaled variable in L-BFGS-B (its first step is 1 unit)
    box: float = 0.5            # when L-BFGS-B runs off to an empty cell (a length at
    #                             its bound), it starts again moving each variable at
    #                             most this far (about Å) per round (0: never)
    seed: int = 0


class BudgetExceeded(RuntimeError):
    """A structure ran past its time budget."""


# ---------------------------------------------------------------------------
# one crystal as a function of its free variables
# ---------------------------------------------------------------------------

@dataclass
class Problem:
    """A decoded crystal and the map from its free variables to its atoms."""

    dec: codec.Decoded
    x0: np.ndarray            # free variables: cell ones, then site coordinates
    kind: np.ndarray          # 0 length (Å), 1 angle (°), 2 fractional coordinate
    unit: np.ndarray          # the variable's size of about 1 Å
    cell_var: np.ndarray      # (6,) index into x, -1 for a constant
    cell_const: np.ndarray    # (6,)
    site_var: np.ndarray      # (n_sites, 3) index into x, -1: the site's constant
    site_const: np.ndarray    # (n_sites, 3) free parameters that are not variables
    atom_A: np.ndarray        # (N, 3, 3): atom a = A[a] @ f[site(a)] + t[a]
    atom_t: np.ndarray        # (N, 3)
    atom_site: np.ndarray     # (N,)
    rep_atom: np.ndarray      # (n_sites,) an atom of each site (orbit member 0)
    row_member: np.ndarray    # (n_sites,) the orbit member the row gave
    numbers: np.ndarray       # (N,) atomic numbers

    @property
    def natoms(self) -> int:
        return len(self.numbers)

    def cell(self, x: np.ndarray) -> np.ndarray:
        par = self.cell_const.copy()
        used = self.cell_var >= 0
        par[used] = x[self.cell_var[used]]
        return par

    def free(self, x: np.ndarray) -> np.ndarray:
        f = self.site_const.copy()
        used = self.site_var >= 0
        f[used] = x[self.site_var[used]]
        return f


def _pivots(A0: np.ndarray, dof: int) -> list[int]:
    """Columns of ``A0`` that span its column space: the site's free coordinates."""
    piv: list[int] = []
    for col in range(3):
        if len(piv) == dof:
            break
        if np.linalg.matrix_rank(A0[:, piv + [col]], tol=1e-8) > len(piv):
            piv.append(col)
    return piv


def build_problem(row: Mapping[str, Any] | codec.Decoded) -> Problem:
    """The free-variable model of a row (raises ``DecodeError`` for an invalid row)."""
    dec = row if isinstance(row, codec.Decoded) else codec.decode_row(row, check_distances=False)
    lattice_type, _ = codec.group_info(dec.spg)
    cvar = np.array(_CELL_VARS[lattice_type])
    n_cell = cvar.max() + 1
    x0, kind, unit = [], [], []
    for v in range(n_cell):
        k = int(np.flatnonzero(cvar == v)[0])
        x0.append(dec.cell[k])
        kind.append(0 if k < 3 else 1)
        unit.append(1.0 if k < 3 else ANGLE_UNIT)
    const = dec.cell.copy()
    const[cvar >= 0] = 0.0
    site_var = -np.ones((len(dec.sites), 3), int)
    site_const = np.zeros((len(dec.sites), 3))
    A, t, owner, rep, member, numbers = [], [], [], [], [], []
    from ase.data import atomic_numbers

    for s, site in enumerate(dec.sites):
        rep.append(len(owner))
        ops = site.wp
        site_const[s] = site.free
        for col in _pivots(ops.A[0], ops.dof):
            site_var[s, col] = len(x0)
            site_const[s, col] = 0.0
            x0.append(site.free[col])
            kind.append(2)
            unit.append(1.0 / dec.cell[col])
        A.append(ops.A)
        t.append(ops.t)
        owner += [s] * ops.multiplicity
        numbers += [atomic_numbers[site.element]] * ops.multiplicity
        d = site.orbit() - site.point
        d -= np.round(d)
        member.append(int(np.argmin(np.abs(d).sum(1))))
    return Problem(dec, np.array(x0, float), np.array(kind), np.array(unit), cvar, const,
                   site_var, site_const, np.concatenate(A), np.concatenate(t),
                   np.array(owner), np.array(rep), np.array(member), np.array(numbers))


def bounds(p: Problem) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds of the free variables (coordinates unbounded)."""
    lo = np.select([p.kind == 0, p.kind == 1], [LENGTHS[0], ANGLES[0]], -np.inf)
    hi = np.select([p.kind == 0, p.kind == 1], [LENGTHS[1], ANGLES[1]], np.inf)
    return lo, hi


def relaxed_row(p: Problem, x: np.ndarray) -> dict[str, Any]:
    """The row's cell and site coordinates at free variables ``x`` (each site
    keeps the orbit member that the row gave)."""
    cell = p.cell(x)
    out: dict[str, Any] = dict(zip(S.CELL, map(float, cell)))
    f = p.free(x)
    for s, site in enumerate(p.dec.sites):
        j = p.row_member[s]
        xyz = site.wp.A[j] @ f[s] + site.wp.t[j]
        xyz = xyz - np.floor(xyz)
        xyz[np.isclose(xyz, 1.0, atol=1e-12)] = 0.0
        out.update(zip(S.XYZ[s], map(float, xyz)))
    return out


# ---------------------------------------------------------------------------
# reference targets
# ---------------------------------------------------------------------------

_TARGETS: dict[tuple[int, SO3Params], tuple[Environment, dict[str, np.ndarray]]] = {}


def targets(env: Environment, params: SO3Params) -> dict[str, np.ndarray]:
    """Distinct reference spectra of each element, (K, size), cached per environment
    and descriptor."""
    key = (id(env), params)
    if key in _TARGETS and _TARGETS[key][0] is env:
        return _TARGETS[key][1]
    ref = env.reference
    spectra = power_spectrum(ref, params)
    out = {}
    for el in set(ref.get_chemical_symbols()):
        rows = spectra[np.array(ref.get_chemical_symbols()) == el]
        keep: list[np.ndarray] = []
        for r in rows:
            if not any(np.allclose(r, k, rtol=1e-6, atol=1e-8) for k in keep):
                keep.append(r)
        out[el] = np.array(keep)
    _TARGETS[key] = (env, out)
    return out


# ---------------------------------------------------------------------------
# the batched model (torch)
# ---------------------------------------------------------------------------

def cellpar_to_cell(par: Any) -> Any:
    """(B, 6) cell parameters (Å, degrees) -> (B, 3, 3) cell vectors (ASE's
    orientation: a along x, b in the xy plane), differentiable."""
    import torch

    a, b, c = par[:, 0], par[:, 1], par[:, 2]
    ca, cb, cg = (torch.cos(torch.deg2rad(par[:, k])) for k in (3, 4, 5))
    sg = torch.sin(torch.deg2rad(par[:, 5]))
    cy = (ca - cb * cg) / sg
    cz = torch.sqrt(torch.clamp(1 - cb * cb - cy * cy, min=1e-12))
    zero = torch.zeros_like(a)
    return torch.stack([torch.stack([a, zero, zero], -1),
                        torch.stack([b * cg, b * sg, zero], -1),
                        torch.stack([c * cb, c * cy, c * cz], -1)], 1)


@dataclass
class Batch:
    """Many crystals as flat tensors: the state that the optimisers work on.

    Variable ``v`` belongs to structure ``owner[v]``; cell parameter k of structure
    b is ``x[cell_var[b, k]]`` (the index ``n_var`` reads a zero) plus
    ``cell_const[b, k]``; likewise the site parameters.  The neighbour list
    (pairs from each site's representative atom, with a skin) is rebuilt for the
    structures that moved too far since it was built.
    """

    problems: list[Problem]
    x: Any                  # (n_var,) free variables, natural units
    owner: Any              # (n_var,)
    unit: Any
    lower: Any
    upper: Any
    cell_var: Any           # (B, 6)
    cell_const: Any
    site_var: Any           # (S, 3)
    site_const: Any
    atom_A: Any             # (N, 3, 3)
    atom_t: Any
    atom_site: Any          # (N,)
    atom_struct: Any        # (N,)
    site_struct: Any        # (S,)
    mult: Any               # (S,)
    natoms: Any             # (B,)
    targets: Any            # (S, K, size)
    so3: SO3Torch
    atom_offset: np.ndarray  # (B,) first atom of each structure
    site_offset: np.ndarray  # (B,) first site of each structure
    pairs: list[Any]         # per structure: (center site, i, j, shift, w, structure)
    pair_tensors: tuple[Any, ...] = ()   # the stacked pairs, on the device
    built_cart: Any = None   # (N, 3) positions when the lists were built
    built_cell: Any = None   # (B, 3, 3)

    @property
    def n(self) -> int:
        return len(self.problems)


def make_batch(problems: Sequence[Problem], xs: Sequence[np.ndarray], env: Environment,
               params: SO3Params, device: Any = "cpu") -> Batch:
    """Stack problems (at free variables ``xs``) into one batch on ``device``."""
    import torch

    tg = targets(env, params)
    k_max = max(len(v) for v in tg.values())
    f64 = dict(dtype=torch.float64, device=device)
    cat = np.concatenate
    n_var = sum(len(x) for x in xs)
    x_off = np.cumsum([0] + [len(x) for x in xs])[:-1]
    s_off = np.cumsum([0] + [len(p.dec.sites) for p in problems])[:-1]
    a_off = np.cumsum([0] + [p.natoms for p in problems])[:-1]

    def shift_index(idx: np.ndarray, off: int) -> np.ndarray:
        return np.where(idx >= 0, idx + off, n_var)

    site_tg = []
    for p in problems:
        for site in p.dec.sites:
            if site.element not in tg:
                raise ValueError(f"element {site.element} has no reference environment "
                                 f"in {env.name!r}")
            t = tg[site.element]
            site_tg.append(np.concatenate([t, np.repeat(t[:1], k_max - len(t), 0)]))
    lo, hi = zip(*(bounds(p) for p in problems))
    b = Batch(
        problems=list(problems),
        x=torch.as_tensor(cat(xs), **f64),
        owner=torch.as_tensor(np.repeat(np.arange(len(xs)), [len(x) for x in xs]), device=device),
        unit=torch.as_tensor(cat([p.unit for p in problems]), **f64),
        lower=torch.as_tensor(cat(lo), **f64), upper=torch.as_tensor(cat(hi), **f64),
        cell_var=torch.as_tensor(np.stack([shift_index(p.cell_var, o)
                                           for p, o in zip(problems, x_off)]), device=device),
        cell_const=torch.as_tensor(np.stack([p.cell_const for p in problems]), **f64),
        site_var=torch.as_tensor(cat([shift_index(p.site_var, o)
                                      for p, o in zip(problems, x_off)]), device=device),
        site_const=torch.as_tensor(cat([p.site_const for p in problems]), **f64),
        atom_A=torch.as_tensor(cat([p.atom_A for p in problems]), **f64),
        atom_t=torch.as_tensor(cat([p.atom_t for p in problems]), **f64),
        atom_site=torch.as_tensor(cat([p.atom_site + o for p, o in zip(problems, s_off)]),
                                  device=device),
        atom_struct=torch.as_tensor(np.repeat(np.arange(len(problems)),
                                              [p.natoms for p in problems]), device=device),
        site_struct=torch.as_tensor(np.repeat(np.arange(len(problems)),
                                              [len(p.dec.sites) for p in problems]),
                                    device=device),
        mult=torch.as_tensor(cat([[s.wp.multiplicity for s in p.dec.sites] for p in problems]),
                             **f64),
        natoms=torch.as_tensor([p.natoms for p in problems], **f64),
        targets=torch.as_tensor(np.array(site_tg), **f64),
        so3=SO3Torch(params, device),
        atom_offset=a_off, site_offset=s_off,
        pairs=[None] * len(problems),
    )
    return b


def geometry(b: Batch, x: Any) -> tuple[Any, Any]:
    """Cartesian positions (N, 3) and cells (B, 3, 3) at free variables ``x``."""
    import torch

    xe = torch.cat([x, x.new_zeros(1)])
    cell = cellpar_to_cell(xe[b.cell_var] + b.cell_const)
    f = xe[b.site_var] + b.site_const
    frac = torch.einsum("aij,aj->ai", b.atom_A, f[b.atom_site]) + b.atom_t
    cart = torch.einsum("ai,aij->aj", frac, cell[b.atom_struct])
    return cart, cell


def _structure_pairs(b: Batch, k: int, cart: np.ndarray, cell: np.ndarray
                     ) -> tuple[np.ndarray, ...]:
    """Neighbour pairs of structure ``k`` within rcut + skin, from each site's
    representative atom (global indices)."""
    p = b.problems[k]
    a0, s0 = b.atom_offset[k], b.site_offset[k]
    site, i, j, shift = neighbours(cart[a0:a0 + p.natoms], cell, p.rep_atom,
                                   b.so3.params.rcut + SKIN)
    w = pair_weights(p.numbers[i], p.numbers[j], b.so3.params.weight_on)
    return site + s0, i + a0, j + a0, shift, w, np.full(len(i), k)


def neighbours(pos: np.ndarray, cell: np.ndarray, centers: np.ndarray, cutoff: float
               ) -> tuple[np.ndarray, ...]:
    """Every neighbour within ``cutoff`` of the atoms ``centers`` of a periodic
    crystal: (center's row in ``centers``, i, j, shift) with ``pos[j] + shift @ cell
    - pos[i]`` the pair's vector; a brute force over the periodic images that can
    hold one (far cheaper than a binned search for the few centres and small cells
    of a symmetry-reduced crystal)."""
    inv = np.linalg.inv(cell)
    frac = pos @ inv
    whole = np.floor(frac)
    wrapped = frac - whole
    # a neighbour in image n has |df_k + n_k| <= cutoff / (spacing of the planes k),
    # and |df_k| < 1 for wrapped positions
    reach = np.floor(1 + cutoff * np.linalg.norm(inv, axis=0)).astype(int)
    grid = np.stack(np.meshgrid(*[np.arange(-m, m + 1) for m in reach], indexing="ij"), -1)
    images = grid.reshape(-1, 3).astype(float)
    df = wrapped[None, :, None, :] - wrapped[centers][:, None, None, :] + images[None, None]
    d2 = np.einsum("cjsk,cjsk->cjs", vec := df @ cell, vec)
    c, j, n = np.nonzero(d2 < cutoff * cutoff)
    i = centers[c]
    shift = images[n] - (whole[j] - whole[i])
    keep = (i != j) | np.any(images[n] != 0, axis=1)  # not the centre itself
    return c[keep], i[keep], j[keep], shift[keep]


def update_pairs(b: Batch, cart: Any, cell: Any) -> None:
    """Rebuild the neighbour lists of the structures that moved more than half
    the skin since their list was built."""
    import torch

    with torch.no_grad():
        if b.built_cart is None:
            todo = np.arange(b.n)
        else:
            move = (cart - b.built_cart).norm(dim=1)
            per = torch.zeros(b.n, dtype=move.dtype, device=move.device)
            per = per.scatter_reduce(0, b.atom_struct, move, "amax")
            strain = (cell - b.built_cell).norm(dim=2).amax(1) * 3
            todo = torch.nonzero(2 * per + strain > SKIN / 2).flatten().cpu().numpy()
            if not len(todo):
                return
        cart_np, cell_np = cart.detach().cpu().numpy(), cell.detach().cpu().numpy()
        for k in todo:
            b.pairs[k] = _structure_pairs(b, int(k), cart_np, cell_np[k])
        if b.built_cart is None:
            b.built_cart, b.built_cell = cart.detach().clone(), cell.detach().clone()
        else:  # only the rebuilt structures get a new reference geometry
            redo = torch.zeros(b.n, dtype=torch.bool, device=cart.device)
            redo[torch.as_tensor(todo, device=cart.device)] = True
            b.built_cart = torch.where(redo[b.atom_struct][:, None], cart.detach(), b.built_cart)
            b.built_cell = torch.where(redo[:, None, None], cell.detach(), b.built_cell)
        dev = b.x.device
        cols = [np.concatenate(c) for c in zip(*b.pairs)]
        b.pair_tensors = (
            torch.as_tensor(cols[0], device=dev), torch.as_tensor(cols[1], device=dev),
            torch.as_tensor(cols[2], device=dev),
            torch.as_tensor(cols[3], dtype=torch.float64, device=dev),
            torch.as_tensor(cols[4], dtype=torch.float64, device=dev),
            torch.as_tensor(cols[5], device=dev))


def batch_loss(b: Batch, x: Any) -> Any:
    """The objective of every structure of the batch, (B,), at free variables ``x``."""
    import torch

    cart, cell = geometry(b, x)
    update_pairs(b, cart, cell)
    center, i, j, shift, w, struct = b.pair_tensors
    vec = cart[j] - cart[i] + torch.einsum("pi,pij->pj", shift, cell[struct])
    spectra = b.so3(vec, center, w, len(b.site_struct))
    d2 = ((spectra[:, None, :] - b.targets) ** 2).sum(-1).amin(1)
    per = torch.zeros(b.n, dtype=x.dtype, device=x.device).index_add(0, b.site_struct,
                                                                     b.mult * d2)
    return per / b.natoms


def loss_and_grad(b: Batch, x: Any) -> tuple[Any, Any]:
    """Per-structure losses and the gradient with respect to ``x`` (each variable
    belongs to one structure, so the gradient of the sum is each one's own)."""
    import torch

    x = x.detach().requires_grad_(True)
    loss = batch_loss(b, x)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), grad


# ---------------------------------------------------------------------------
# optimisers
# ---------------------------------------------------------------------------

@dataclass
class Outcome:
    """What an optimiser did to one structure."""

    x: np.ndarray
    loss: float
    iterations: int
    seconds: float
    error: str | None = None      # the relaxation was cut (budget) or blew up
    valid: bool = False           # the relaxed crystal has the environment
    reason: str | None = None     # why not, when it has not


def relax_scipy(p: Problem, env: Environment, opts: Options = Options(),
                params: SO3Params | None = None, x0: np.ndarray | None = None) -> Outcome:
    """One structure with scipy from ``x0`` (default: the row's): [Nelder-Mead], then
    L-BFGS-B with exact gradients; the best point found is kept when the budget runs
    out."""
    import torch
    from scipy.optimize import minimize

    params = params or env.params
    t0 = time.perf_counter()
    start = p.x0 if x0 is None else np.asarray(x0, float)
    batch = make_batch([p], [start], env, params)
    unit = p.unit * opts.scipy_unit
    lo, hi = bounds(p)
    best = {"loss": math.inf, "x": start.copy()}

    def fun(y: np.ndarray) -> tuple[float, np.ndarray]:
        if time.perf_counter() - t0 > opts.budget:
            raise BudgetExceeded(f"time budget of {opts.budget:g} s exceeded")
        x = y * unit
        loss, grad = loss_and_grad(batch, torch.as_tensor(x, dtype=torch.float64))
        value = float(loss[0])
        if not math.isfinite(value):
            return 1e10, np.zeros_like(y)
        if value < best["loss"]:
            best.update(loss=value, x=x.copy())
        return value, grad.numpy() * unit

    lo_s, hi_s = lo / unit, hi / unit
    scaled_bounds = [(None if not np.isfinite(a) else a, None if not np.isfinite(b) else b)
                     for a, b in zip(lo_s, hi_s)]

    def lbfgs(y: np.ndarray, box: float = 0.0) -> int:
        """L-BFGS-B from ``y``; with ``box`` > 0 (Å) inside a box of that half-width,
        recentred while the optimum lies on one of its faces."""
        nit, half = 0, box / opts.scipy_unit
        while nit < opts.maxiter:
            bounds_now = scaled_bounds if not box else [
                (max(a, v - half) if a is not None else v - half,
                 min(b, v + half) if b is not None else v + half)
                for (a, b), v in zip(scaled_bounds, y)]
            res = minimize(fun, y, jac=True, method="L-BFGS-B", bounds=bounds_now,
                           options={"maxiter": opts.maxiter - nit, "ftol": opts.ftol,
                                    "gtol": opts.fmax * opts.scipy_unit})  # fmax is per Å
            nit += max(int(res.nit), 1)
            y = res.x
            if not box:
                break
            box_lo, box_hi = np.array(bounds_now, float).T
            on_face = (((y <= box_lo + 1e-9) & (box_lo > lo_s + 1e-9))
                       | ((y >= box_hi - 1e-9) & (box_hi < hi_s - 1e-9)))
            if not on_face.any():
                break
        return nit

    def escaped() -> bool:
        """The best point has a cell length at its upper bound: the line search ran
        off to an empty cell (every spectrum zero), whose loss can be below that of a
        compressed start."""
        lengths = p.kind == 0
        return bool(np.any(best["x"][lengths] >= hi[lengths] * (1 - 1e-9)))

    nit = 0
    error = None
    try:
        y = start / unit
        if opts.nelder_mead:
            res = minimize(lambda v: fun(v)[0], y, method="Nelder-Mead", bounds=scaled_bounds,
                           options={"maxiter": opts.nelder_mead})
            y, nit = res.x, nit + res.nit
        nit += lbfgs(y)
        if opts.box and escaped():  # again from the start, in small steps
            best.update(loss=math.inf)
            nit += lbfgs(start / unit, opts.box)
    except BudgetExceeded as exc:
        error = str(exc)
    if not math.isfinite(best["loss"]):
        error = error or "the objective is not finite"
    return Outcome(best["x"], best["loss"], nit, time.perf_counter() - t0, error)


def _segment_sum(values: Any, owner: Any, n: int) -> Any:
    import torch

    return torch.zeros(n, dtype=values.dtype, device=values.device).index_add(0, owner, values)


@dataclass
class LbfgsState:
    """The batched optimiser's state: per-variable vectors, per-structure scalars,
    and a ring of the last ``memory`` steps (a slot with ``rho = 0`` is empty)."""

    x: Any                  # (n_var,) scaled variables
    loss: Any               # (B,)
    grad: Any               # (n_var,) gradient in scaled variables
    trust: Any              # (B,) largest step (scaled units, about Å)
    gamma: Any              # (B,) initial inverse-Hessian scale, 0: none yet
    s: Any                  # (m, n_var)
    y: Any                  # (m, n_var)
    rho: Any                # (m, B)
    slot: int = 0


def _lbfgs_direction(st: LbfgsState, owner: Any, n: int) -> Any:
    """The two-loop recursion, per structure (segment sums over its variables)."""
    import torch

    q = st.grad.clone()
    m = st.s.shape[0]
    order = [(st.slot - 1 - k) % m for k in range(m)]       # newest first
    alphas = {}
    for i in order:
        a = st.rho[i] * _segment_sum(st.s[i] * q, owner, n)
        alphas[i] = a
        q = q - a[owner] * st.y[i]
    r = torch.where(st.gamma[owner] > 0, st.gamma[owner] * q, q)
    for i in reversed(order):
        beta = st.rho[i] * _segment_sum(st.y[i] * r, owner, n)
        r = r + (alphas[i] - beta)[owner] * st.s[i]
    return -r


def relax_batch(problems: Sequence[Problem], env: Environment, opts: Options = Options(),
                device: Any = "cpu", params: SO3Params | None = None,
                memory: int = 10, xs: Sequence[np.ndarray] | None = None,
                spent: Sequence[float] | None = None) -> list[Outcome]:
    """L-BFGS on many structures at once, in scaled variables (about 1 Å per unit).

    Per structure: its own curvature memory, a trust radius on the step (grown
    after a step that lowers the loss, cut and the memory cleared after one that
    does not -- no line search, so every structure takes one step per
    evaluation), convergence (loss below ``loss_tol``, largest gradient
    component below ``fmax``, or no gain over ``patience`` steps) and early exit.
    When fewer than half the structures remain active the batch is rebuilt from
    the active ones.  A structure whose loss turns non-finite is frozen at its
    last finite point and recorded.  Each step's time is shared among the
    structures active in it; one whose share passes ``budget`` seconds is stopped
    at its best point and recorded as over its budget.  ``xs`` are the starting
    points (default: the rows'), ``spent`` the seconds each has already used.
    """
    params = params or env.params
    n_all = len(problems)
    xs = [np.array(x, float) for x in (xs if xs is not None else [p.x0 for p in problems])]
    result: list[Outcome | None] = [None] * n_all
    iters = np.zeros(n_all, int)
    spent0 = np.zeros(n_all) if spent is None else np.array(spent, float)
    spent = spent0.copy()
    todo = list(range(n_all))
    steps_left = opts.steps
    while todo and steps_left > 0:
        t_build = time.perf_counter()
        b = make_batch([problems[k] for k in todo], [xs[k] for k in todo], env, params, device)
        spent[todo] += (time.perf_counter() - t_build) / len(todo)
        done, used = _lbfgs(b, opts, memory, steps_left, spent[todo])
        steps_left -= used
        for local, k in enumerate(todo):
            xs[k] = done["x"][local]
            iters[k] += done["iters"][local]
            spent[k] = done["spent"][local]
            if done["finished"][local] or steps_left <= 0:
                result[k] = Outcome(xs[k], done["loss"][local], int(iters[k]), 0.0,
                                    done["error"][local])
        todo = [k for k in todo if result[k] is None]
    for k in range(n_all):
        res = result[k] or Outcome(xs[k], math.nan, int(iters[k]), 0.0, "not finished")
        result[k] = replace(res, seconds=float(spent[k] - spent0[k]))
    return result  # type: ignore[return-value]


def _lbfgs(b: Batch, opts: Options, memory: int, steps: int, spent: np.ndarray
           ) -> tuple[dict[str, Any], int]:
    """Run the batched L-BFGS on one batch until all converged or over budget,
    fewer than half are active or ``steps`` are used; the best point of each and
    the seconds each has ``spent`` (its share of every step it took part in)."""
    import torch

    n, owner, unit = b.n, b.owner, b.unit
    f64 = dict(dtype=torch.float64, device=b.x.device)
    lo, hi = b.lower / unit, b.upper / unit

    def evaluate(y: Any) -> tuple[Any, Any]:
        loss, g = loss_and_grad(b, y * unit)
        return loss, g * unit

    y0 = b.x / unit
    tick = time.perf_counter()
    spent_t = torch.as_tensor(np.asarray(spent, float), **f64)
    loss, grad = evaluate(y0)
    st = LbfgsState(y0, loss, grad, torch.full((n,), opts.max_step, **f64),
                    torch.zeros(n, **f64), torch.zeros((memory, len(y0)), **f64),
                    torch.zeros((memory, len(y0)), **f64), torch.zeros((memory, n), **f64))
    finite = torch.isfinite(loss) & _segment_sum((~torch.isfinite(grad)).double(), owner, n).eq(0)
    blown = ~finite
    active = finite.clone()
    iters = torch.zeros(n, dtype=torch.long, device=b.x.device)
    last_gain = torch.zeros(n, dtype=torch.long, device=b.x.device)
    gain_loss = torch.where(finite, loss, torch.full_like(loss, math.inf))
    over = torch.zeros(n, dtype=torch.bool, device=b.x.device)
    timed = active.clone()  # who shares the time since ``tick``
    used = 0
    for step_no in range(steps):
        now = time.perf_counter()
        spent_t += timed * ((now - tick) / max(int(timed.sum()), 1))
        tick = now
        over |= active & (spent_t > opts.budget)
        active &= ~over
        gmax = torch.zeros(n, **f64).scatter_reduce(0, owner, st.grad.abs(), "amax")
        active &= ~((st.loss < opts.loss_tol) | (gmax < opts.fmax) | (st.trust < 1e-9)
                    | (step_no - last_gain > opts.patience))
        n_active = int(active.sum())
        if n_active == 0 or (n_active < n / 2 and step_no >= 20 and n > 8):
            break
        timed = active.clone()
        used += 1
        d = torch.where(torch.isfinite(st.grad), _lbfgs_direction(st, owner, n),
                        torch.zeros_like(st.grad))
        descent = _segment_sum(d * st.grad, owner, n) < 0
        d = torch.where(descent[owner], d, -st.grad)
        norm = torch.sqrt(_segment_sum(d * d, owner, n)).clamp_min(1e-300)
        d = d * (torch.minimum(st.trust, norm) / norm)[owner]
        y_new = torch.where(active[owner], torch.minimum(torch.maximum(st.x + d, lo), hi), st.x)
        loss_new, grad_new = evaluate(y_new)
        ok = torch.isfinite(loss_new) & _segment_sum((~torch.isfinite(grad_new)).double(),
                                                     owner, n).eq(0)
        accept = active & ok & (loss_new <= st.loss + 1e-12 * st.loss.abs())
        reject = active & ~accept
        iters += active
        # memory: the new pair where accepted with positive curvature, else empty
        s_vec = (y_new - st.x) * accept[owner]
        y_vec = (grad_new - st.grad) * accept[owner]
        sy = _segment_sum(s_vec * y_vec, owner, n)
        yy = _segment_sum(y_vec * y_vec, owner, n)
        good = accept & (sy > 1e-12 * torch.sqrt(yy))
        st.s[st.slot] = s_vec * good[owner]
        st.y[st.slot] = y_vec * good[owner]
        st.rho[st.slot] = torch.where(good, 1 / sy.clamp_min(1e-300), torch.zeros_like(sy))
        st.gamma = torch.where(good, sy / yy.clamp_min(1e-300), st.gamma)
        st.slot = (st.slot + 1) % memory
        st.rho[:, reject] = 0.0
        st.gamma = torch.where(reject, torch.zeros_like(st.gamma), st.gamma)
        st.trust = torch.where(accept, (st.trust * 1.5).clamp_max(opts.max_step),
                               torch.where(reject, st.trust * 0.25, st.trust))
        st.x = torch.where(accept[owner], y_new, st.x)
        st.loss = torch.where(accept, loss_new, st.loss)
        st.grad = torch.where(accept[owner], grad_new, st.grad)
        gain = accept & (st.loss < gain_loss - torch.clamp(gain_loss * 1e-4,
                                                           min=opts.ftol * opts.patience))
        last_gain = torch.where(gain, torch.full_like(last_gain, step_no), last_gain)
        gain_loss = torch.where(gain, st.loss, gain_loss)
    spent_t += timed * ((time.perf_counter() - tick) / max(int(timed.sum()), 1))
    x = (st.x * unit).cpu().numpy()
    offsets = np.cumsum([0] + [len(p.x0) for p in b.problems])
    losses = torch.where(blown, torch.full_like(st.loss, math.nan), st.loss).cpu().numpy()
    error = ["the objective blew up (non-finite loss or gradient)" if bool(bl) else
             f"time budget of {opts.budget:g} s exceeded" if bool(ov) else None
             for bl, ov in zip(blown, over)]
    return ({"x": [x[offsets[k]:offsets[k + 1]] for k in range(n)],
             "loss": [float(v) for v in losses], "iters": iters.cpu().numpy(),
             "finished": (~active).cpu().numpy(), "error": error,
             "spent": spent_t.cpu().numpy()}, used)


# ---------------------------------------------------------------------------
# rows
# ---------------------------------------------------------------------------

def check(row: Mapping[str, Any], p: Problem, out: Outcome, env: Environment) -> Outcome:
    """``out`` with ``valid`` and ``reason`` set: the environment check of the
    relaxed crystal as decoded from the row that would be written."""
    try:
        ok, reason = check_atoms(codec.row_to_atoms({**row, **relaxed_row(p, out.x)}), env)
    except codec.DecodeError as exc:
        ok, reason = False, f"relaxed crystal is invalid: {exc}"
    if out.error:
        ok, reason = False, out.error if ok else f"{out.error}; {reason}"
    return replace(out, valid=bool(ok), reason=reason)


def volume_per_atom(p: Problem, x: np.ndarray) -> float:
    """Cell volume per atom (Å³) of ``p`` at free variables ``x``."""
    det = float(np.linalg.det(codec.metric_tensor(p.cell(x))))
    return math.sqrt(max(det, 0.0)) / p.natoms


def at_density(p: Problem, vpa: float) -> np.ndarray:
    """The start ``p.x0`` with every cell length scaled alike to ``vpa`` Å³ per atom;
    angles and fractional coordinates kept, so the symmetry is."""
    x = p.x0.copy()
    x[p.kind == 0] *= (vpa / volume_per_atom(p, x)) ** (1 / 3)
    lo, hi = bounds(p)
    return np.clip(x, lo, hi)


def relax_rows(rows: Sequence[Mapping[str, Any]], problems: Sequence[Problem],
               env: Environment, opts: Options = Options(), mode: str = "scipy",
               params: SO3Params | None = None) -> list[Outcome]:
    """Relax crystals (``mode``: ``scipy`` one by one, or batched on ``cpu`` /
    ``cuda``), check their environments, and rescue those that miss it.

    A perturbation can push a bond out of the descriptor's cutoff or crowd a
    second neighbour into it, and L-BFGS then settles with the wrong neighbours.
    The rescues, in order, for the structures still without the environment: a
    restart at the reference's density for a start whose volume per atom is off by
    more than the factor ``opts.density`` (a dilute start has no neighbours within
    the cutoff to pull on; angles and fractional coordinates kept), a
    continuation (relax from the start with the wider cutoff ``opts.wide_rcut``,
    which sees those atoms, then with the reference's), then ``opts.hops`` basin
    hops (restart from the start moved by a random step, farther each time: hop
    i moves the free coordinates by about (i + 1) x ``opts.hop_step`` Å and
    strains the cell by (i + 1) x ``opts.hop_strain``).
    A rescue is kept when it reaches the environment, or when it lowers the loss
    of a structure that still misses it; a structure that runs out of its budget
    is not rescued further.  Time and iterations add up over the attempts.
    """
    params = params or env.params
    wide = replace(params, rcut=opts.wide_rcut)

    def run(todo: list[int], xs: list[np.ndarray], par: SO3Params,
            used: np.ndarray) -> list[Outcome]:
        ps = [problems[k] for k in todo]
        if mode == "scipy":
            return [relax_scipy(p, env, replace(opts, budget=opts.budget - u), par, x)
                    for p, x, u in zip(ps, xs, used)]
        return relax_batch(ps, env, opts, mode, par, xs=xs, spent=used)

    n = len(problems)
    first = run(list(range(n)), [p.x0 for p in problems], params, np.zeros(n))
    out = [check(r, p, o, env) for r, p, o in zip(rows, problems, first)]
    rng = np.random.default_rng(opts.seed)
    ref_vpa = env.reference.get_volume() / len(env.reference)

    def off_density(p: Problem) -> bool:
        return abs(math.log(volume_per_atom(p, p.x0) / ref_vpa)) > math.log(opts.density)

    stages = ((["density"] if opts.density > 1 else [])
              + (["wide"] if opts.wide_rcut > params.rcut else []) + list(range(opts.hops)))
    for stage in stages:
        todo = [k for k, o in enumerate(out) if not o.valid and o.error is None
                and (stage != "density" or off_density(problems[k]))]
        if not todo:
            continue
        used = np.array([out[k].seconds for k in todo])
        if stage == "density":
            new = run(todo, [at_density(problems[k], ref_vpa) for k in todo], params, used)
        elif stage == "wide":
            first = run(todo, [problems[k].x0 for k in todo], wide, used)
            new = run(todo, [o.x for o in first], params,
                      used + np.array([o.seconds for o in first]))
            for a, b in zip(first, new):
                b.seconds += a.seconds
                b.iterations += a.iterations
                b.error = b.error or a.error
        else:
            starts = []
            for k in todo:
                p = problems[k]
                lo, hi = bounds(p)
                size = np.where(p.kind == 2, opts.hop_step * p.unit, opts.hop_strain * p.x0)
                move = rng.normal(0.0, 1.0, len(p.x0)) * size * (stage + 1)
                starts.append(np.clip(p.x0 + move, lo, hi))
            new = run(todo, starts, params, used)
        for k, res in zip(todo, new):
            res = check(rows[k], problems[k], res, env)
            old = out[k]
            keep = res if (res.valid or res.loss < old.loss) else old
            out[k] = replace(keep, seconds=old.seconds + res.seconds,
                             iterations=old.iterations + res.iterations)
            if res.error and keep is old:  # cut short: no further rescue
                out[k] = replace(out[k], error=res.error, reason=f"{res.error}; {old.reason}")
    return out


def _finish(row: Mapping[str, Any], p: Problem, out: Outcome) -> dict[str, Any]:
    """The relaxed row with the PRERELAX columns of a checked outcome."""
    rec = dict(row)
    rec.update(relaxed_row(p, out.x))
    rec.update(loss=out.loss, iterations=out.iterations, seconds=out.seconds,
               valid_env=out.valid, env_error=out.reason)
    return rec


def _failed(row: Mapping[str, Any], reason: str) -> dict[str, Any]:
    return {**row, "loss": math.nan, "valid_env": False, "env_error": reason,
            "iterations": 0, "seconds": 0.0}


def prerelax_row(row: Mapping[str, Any], env: Environment | str = "graphite",
                 **opts: Any) -> dict[str, Any]:
    """Pre-relax one row on the CPU (scipy): the row with its relaxed cell and
    coordinates and ``loss, valid_env, env_error, iterations, seconds``."""
    env = get_environment(env)
    options = replace(Options(), **opts)
    try:
        p = build_problem(row)
    except codec.DecodeError as exc:
        return _failed(row, f"not a valid crystal: {exc}")
    [out] = relax_rows([row], [p], env, options)
    return _finish(row, p, out)


def _resolve_device(device: str) -> str:
    """``cpu`` (scipy), ``torch`` (batched, on the GPU when there is one) or
    ``auto`` (batched on a GPU, scipy without) -> ``scipy``, ``cpu`` or ``cuda``."""
    import torch

    gpu = torch.cuda.is_available()
    if device == "cpu":
        return "scipy"
    if device == "torch":
        return "cuda" if gpu else "cpu"
    if device == "auto":
        return "cuda" if gpu else "scipy"
    raise ValueError(f"unknown device {device!r}: cpu, torch or auto")


def prerelax_frame(df: pd.DataFrame, env: Environment | str = "graphite",
                   device: str = "auto", limit: int | None = None,
                   options: Options = Options(),
                   partition_info: dict[str, Any] | None = None,
                   limits: Sequence[int] | None = None) -> pd.DataFrame:
    """The stage kernel: pre-relax every valid row of a partition.

    Rows that are not valid crystals, that fail, or that lie beyond ``limit``
    valid rows (``limits[i]`` for partition i when mapped over a table) are kept
    with the reason in ``env_error``.  The batched path groups rows by size.
    """
    env = get_environment(env)
    if limits is not None and partition_info is not None:
        limit = limits[partition_info["number"]]
    extra = {c: str(t) for c, t in df.dtypes.items() if c not in S.COLUMNS}
    extra.update(EXTRA_DTYPES)
    frame = S.conform(df)
    valid = frame["valid_xtal"].fillna(False).astype(bool).to_numpy()
    chosen = np.flatnonzero(valid)[:limit]
    # rows not relaxed pass through column-wise, never as Python dicts: a partition
    # of a million-row sample is mostly such rows
    rest = np.setdiff1d(np.arange(len(frame)), chosen)
    error = frame["error"].iloc[rest].astype("string").fillna("None").to_numpy(dtype=object)
    reason = np.where(valid[rest], "not relaxed (--limit)", "not a valid crystal: " + error)
    passed = frame.iloc[rest].assign(loss=math.nan, valid_env=False, env_error=reason,
                                     iterations=0, seconds=0.0)
    records = frame.iloc[chosen].to_dict("records")
    out: list[dict[str, Any] | None] = [None] * len(records)
    todo: list[tuple[int, Problem]] = []
    for k, rec in enumerate(records):
        try:
            todo.append((k, build_problem(rec)))
        except Exception as exc:  # a bad row is recorded, never fatal
            out[k] = _failed(rec, f"{type(exc).__name__}: {exc}")
    mode = _resolve_device(device)
    if mode != "cuda":
        import torch

        torch.set_num_threads(1)  # small tensors; dask runs one task per core
    if mode == "scipy":
        for k, p in todo:
            out[k] = _guarded(records[k], p, env, options)
    else:
        todo.sort(key=lambda kp: kp[1].natoms)
        for i in range(0, len(todo), options.batch_size):
            chunk = todo[i:i + options.batch_size]
            try:
                results = relax_rows([records[k] for k, _ in chunk], [p for _, p in chunk],
                                     env, options, mode)
            except Exception as exc:  # the batch failed: relax its rows one by one
                log.warning("batch of %d failed (%s); relaxing one by one", len(chunk), exc)
                results = [None] * len(chunk)
            for (k, p), res in zip(chunk, results):
                out[k] = _finish(records[k], p, res) if res is not None else \
                    _guarded(records[k], p, env, options)
    relaxed = pd.DataFrame.from_records(out, index=frame.index[chosen],
                                        columns=list(passed.columns))
    both = pd.concat([S.conform(passed, extra), S.conform(relaxed, extra)])
    both = both.iloc[np.argsort(np.concatenate([rest, chosen]), kind="stable")]
    return both[list(S.empty_frame(extra).columns)]


def _guarded(row: Mapping[str, Any], p: Problem, env: Environment, options: Options
             ) -> dict[str, Any]:
    """The row relaxed on the CPU (scipy), or with the exception as its error."""
    try:
        [res] = relax_rows([row], [p], env, options)
        return _finish(row, p, res)
    except Exception as exc:  # anything unforeseen is a recorded failure
        return _failed(row, f"{type(exc).__name__}: {exc}")


# ---------------------------------------------------------------------------
# the stage
# ---------------------------------------------------------------------------

def spread_limit(limit: int, counts: Sequence[int]) -> list[int]:
    """Share ``limit`` rows over partitions holding ``counts`` valid rows as evenly
    as their counts allow (the earlier partitions take the remainder), so that a
    quick look keeps every worker busy instead of filling the first partitions."""
    quota = [0] * len(counts)
    left = min(int(limit), int(sum(counts)))
    while left > 0:
        open_ = [i for i, c in enumerate(counts) if quota[i] < c]
        share = max(1, left // len(open_))
        for i in open_:
            take = min(share, counts[i] - quota[i], left)
            quota[i] += take
            left -= take
            if left == 0:
                break
    return quota


def prerelax(run: Any, source: str | None = None, env: str | Environment = "graphite",
             device: str = "auto", limit: int | None = None,
             options: Options = Options(), output: str = "prerelaxed",
             rdf_bins: int = 0) -> Any:
    """Pre-relax table ``source`` (``samples``, else ``decoded``) of a run into
    ``RUN/prerelaxed.parquet``; on a cluster with a GPU worker the batched path
    runs there.  ``rdf_bins`` > 0 adds the smoothed RDF to the descriptor."""
    from . import cluster

    if rdf_bins:
        env = replace(get_environment(env), rdf_bins=rdf_bins)

    if source is None:
        source = "samples" if run.table_path("samples").exists() else "decoded"
    ddf = run.read(source)
    extra = {c: str(t) for c, t in ddf.dtypes.items() if c not in S.COLUMNS}
    extra.update(EXTRA_DTYPES)
    meta = S.empty_frame(extra)
    annotations = None
    if device in ("auto", "torch") and cluster.has_gpu_worker():
        annotations = {"resources": cluster.GPU_RESOURCE}
        device = "torch"
    limits = None
    if limit is not None:
        import dask

        counts = cluster.compute([dask.delayed(lambda d: int(d["valid_xtal"].sum()))(part)
                                  for part in ddf[["valid_xtal"]].to_delayed()], desc="count")
        limits = spread_limit(limit, counts)
    kernel = functools.partial(prerelax_frame, env=env, device=device, options=options,
                               limits=limits)
    return run.map_table(source, output, kernel, meta, desc="prerelax",
                         annotations=annotations)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--input", default=None,
                   help="table to pre-relax (default: samples, else decoded)")
    p.add_argument("--output", default="prerelaxed", help="output table name")
    p.add_argument("--env", default="graphite",
                   help="reference environment: graphite, cristobalite or a structure file")
    p.add_argument("--device", choices=["cpu", "torch", "auto"], default="auto",
                   help="cpu: scipy per structure; torch: batched (GPU if any); "
                        "auto: batched on a GPU worker, else scipy")
    p.add_argument("--limit", type=int, default=None,
                   help="relax only N valid rows, spread evenly over the partitions "
                        "(the first valid rows of each)")
    p.add_argument("--budget", type=float, default=Options.budget,
                   help="seconds per structure (batched path: its share of each step)")
    p.add_argument("--batch-size", type=int, default=Options.batch_size)
    p.add_argument("--hops", type=int, default=Options.hops,
                   help="basin-hopping restarts for structures that miss the environment")
    p.add_argument("--density-rescue", type=float, default=Options.density,
                   help="restart at the reference's volume per atom a structure that misses "
                        "the environment from a start off by more than this factor (0: never)")
    p.add_argument("--wide-rcut", type=float, default=Options.wide_rcut,
                   help="rescue cutoff (Å) for structures that miss the environment "
                        "(0: no such rescue)")
    p.add_argument("--rdf-bins", type=int, default=0,
                   help="add the smoothed RDF in so many bins to the descriptor (pyxtal: 20)")


def command(args: argparse.Namespace) -> int:
    from .store import Run

    opts = Options(budget=args.budget, batch_size=args.batch_size, hops=args.hops,
                   wide_rcut=args.wide_rcut, density=args.density_rescue)
    result = prerelax(Run(args.run), args.input, args.env, args.device, args.limit, opts,
                      args.output, args.rdf_bins)
    print(result)
    return 0
