"""Many crystals as one batched state, and the objective over it (torch).

The objective of a crystal is ``sum_sites multiplicity * min_k |P_site - P_ref,k|^2
/ N_atoms``: ``P_site`` the SO(3) power spectrum of one atom of the Wyckoff site
(all atoms of an orbit have the same one) and ``P_ref,k`` the distinct spectra of
the site's element in the reference crystal.  ``batch_loss`` evaluates it for every
crystal of a ``Batch`` at once, ``loss_and_grad`` adds exact gradients by autograd.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..crystal.descriptor import SO3Params, SO3Torch, pair_weights
from ..crystal.environment import Environment
from .problem import Problem, bounds, targets

SKIN = 0.5                 # Å of neighbour-list skin


def cell_vectors(par: Any) -> Any:
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
    cell = cell_vectors(xe[b.cell_var] + b.cell_const)
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
