"""The SO(3) power spectrum of atomic environments (Bartók et al.), as in pyxtal.lego.

Each neighbour j of atom i within ``rcut`` adds a Gaussian of width ``alpha`` to the
neighbour density of i; the density is expanded on a polynomial radial basis
orthonormalised over (0, rcut) and on spherical harmonics up to ``lmax``:

    c_nlm = sum_j w_j 4 pi exp(-alpha r_ij^2) fc(r_ij) Y_lm(r_ij) norm_l
            * int_0^rc g_n(r) r^2 exp(-alpha r^2) i_l(2 alpha r r_ij) dr
    P_nn'l = sum_m c_nlm c_n'lm            (n >= n', ordered as pyxtal's tril)

with the cosine cutoff fc, modified spherical Bessel functions i_l and weights
w_j = Z_j (negated for a neighbour of another element when ``weight_on``).

Optionally (``rdf_bins`` > 0) each atom's smoothed radial distribution is appended,
as pyxtal's ``compute_p(return_rdf=True)`` does (``rdf_weight`` x a histogram of the
neighbour distances in ``rdf_bins`` bins over (0, rcut), smoothed by a Gaussian of
``rdf_sigma`` bins).  Ours is the differentiable form of that: each neighbour adds
a Gaussian of the same width, integrated over each bin by its centre value, and
fades out over the last bin before ``rcut`` so that a neighbour crossing the cutoff
does not make a jump.  The two agree in total weight (the number of neighbours)
and peak position; pyxtal's first snaps each distance to its bin.  The
radial integral uses pyxtal's Gauss-Chebyshev quadrature, so the numbers are
pyxtal's own (``SO3.compute_p``).  Conventions that differ from pyxtal, on purpose:

* real spherical harmonics instead of complex ones: P sums |c|^2 over m within an
  l, which is invariant under that unitary change of basis, so P is identical;
* every periodic image within ``rcut`` is a neighbour.  ``SO3.compute_p`` only
  looks at the 27 nearest cells, so it misses neighbours in cells thinner than
  ``rcut``; there we equal pyxtal's numbers on a 3x3x3 supercell instead.

Two implementations: ``power_spectrum`` (NumPy, one structure, for checks and the
reference) and ``SO3Torch`` (float64 torch on CPU or GPU, any number of structures
as one ragged list of pairs, differentiable by autograd).  Both use the same
radial factor (``radial_functions``) and harmonics (``real_sph``); for speed the
torch one reads the radial factor from a cubic Hermite table (exact values and
slopes at 2048 knots: error ~1e-13 relative) and evaluates the harmonics as one
product of monomials with a fitted matrix (exact to 1e-15), so that a structure
costs a few dozen tensor operations instead of hundreds.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from ase import Atoms


@dataclass(frozen=True)
class SO3Params:
    """Descriptor parameters; the defaults are the paper's (15 numbers per atom)."""

    lmax: int = 4
    nmax: int = 2
    rcut: float = 2.1
    alpha: float = 1.5
    weight_on: bool = True
    rdf_bins: int = 0            # 0: no radial distribution part (pyxtal uses 20)
    rdf_weight: float = 0.5
    rdf_sigma: float = 0.5       # Gaussian width, in bins

    @property
    def size(self) -> int:
        return self.nmax * (self.nmax + 1) // 2 * (self.lmax + 1) + self.rdf_bins


def rdf_terms(r: Any, p: SO3Params, xp: Any) -> Any:
    """Each neighbour's contribution to the smoothed RDF, (len(r), rdf_bins), with
    array module ``xp`` (numpy or torch): a Gaussian at ``r`` read at the bin centres
    (area one over the bins), times a taper from 1 to 0 over the last bin."""
    dr = p.rcut / p.rdf_bins
    s = p.rdf_sigma * dr
    centres = (xp.arange(p.rdf_bins, dtype=r.dtype) + 0.5) * dr
    if xp is not np:
        centres = centres.to(r.device)
    area = dr / (s * math.sqrt(2 * math.pi))
    gauss = xp.exp(-((r[:, None] - centres[None, :]) / s) ** 2 / 2) * area
    edge = xp.clip((p.rcut - r) / dr, 0.0, 1.0)
    taper = 0.5 - 0.5 * xp.cos(math.pi * edge)
    return p.rdf_weight * gauss * taper[:, None]


def _w_matrix(nmax: int) -> np.ndarray:
    """The orthonormalisation matrix of the polynomial radial basis (S^-1/2)."""
    s = np.zeros((nmax, nmax))
    for a in range(1, nmax + 1):
        t1 = (2 * a + 5) * (2 * a + 6) * (2 * a + 7)
        for b in range(1, a + 1):
            t2 = (2 * b + 5) * (2 * b + 6) * (2 * b + 7)
            s[a - 1, b - 1] = s[b - 1, a - 1] = (math.sqrt(t1 * t2) / (5 + a + b)
                                                 / (6 + a + b) / (7 + a + b))
    vals, vecs = np.linalg.eigh(np.linalg.inv(s))
    return vecs @ np.diag(np.sqrt(vals)) @ vecs.T


def radial_table(p: SO3Params) -> tuple[np.ndarray, np.ndarray]:
    """Quadrature nodes ``r_q`` on (0, rcut) and weights ``G[n, q]`` such that the
    radial integral of neighbour j is ``sum_q G[n, q] i_l(2 alpha r_q r_ij)``."""
    nq = (p.nmax + p.lmax + 1) * 10
    x = np.cos((2 * np.arange(1, nq + 1) - 1) * np.pi / 2 / nq)
    weight = np.pi / nq * p.rcut / 2
    r = p.rcut / 2 * (x + 1)
    w = _w_matrix(p.nmax)
    a = np.arange(1, p.nmax + 1)[:, None]
    phi = (p.rcut - r) ** (a + 2) / np.sqrt(
        2 * p.rcut ** (2 * a + 7) / (2 * a + 5) / (2 * a + 6) / (2 * a + 7))
    g = w @ phi
    return r, g * r ** 2 * np.exp(-p.alpha * r ** 2) * np.sqrt(1 - x ** 2) * weight


def real_sph(u: Any, lmax: int, stack: Any) -> Any:
    """Real spherical harmonics of unit vectors ``u`` (..., 3) up to ``lmax``:
    (..., (lmax+1)^2), index l^2 + l + m.  Polynomials in x, y, z (no angles), so
    smooth everywhere; works on NumPy arrays and torch tensors (``stack`` is
    ``np.stack`` or ``torch.stack``)."""
    x, y, z = u[..., 0], u[..., 1], u[..., 2]
    cos_m, sin_m = [x * 0 + 1], [x * 0]          # Re, Im of (x + iy)^m
    for m in range(1, lmax + 1):
        c, s = cos_m[-1], sin_m[-1]
        cos_m.append(x * c - y * s)
        sin_m.append(x * s + y * c)
    q: dict[tuple[int, int], Any] = {}            # P_l^m(z) / (1 - z^2)^(m/2)
    for m in range(lmax + 1):
        q[m, m] = x * 0 + (-1) ** m * float(np.prod(np.arange(1, 2 * m, 2)))
        if m < lmax:
            q[m + 1, m] = (2 * m + 1) * z * q[m, m]
        for l in range(m + 2, lmax + 1):
            q[l, m] = ((2 * l - 1) * z * q[l - 1, m] - (l + m - 1) * q[l - 2, m]) / (l - m)
    out = []
    for l in range(lmax + 1):
        for m in range(-l, l + 1):
            k = abs(m)
            norm = math.sqrt((2 * l + 1) / (4 * math.pi)
                             * math.factorial(l - k) / math.factorial(l + k))
            if m == 0:
                out.append(norm * q[l, 0])
            else:
                trig = cos_m[k] if m > 0 else sin_m[k]
                out.append(math.sqrt(2) * norm * q[l, k] * trig)
    return stack(out, -1)


@functools.lru_cache(maxsize=None)
def _sph_monomial_table(lmax: int) -> np.ndarray:
    """C with real_sph(u) = m(u) @ C on the unit sphere, m(u) the products of
    ``ceil(lmax/2)`` factors of (1 x y z) taken twice: all monomials of degree
    <= lmax (with repeats).  Fitted once, exactly (the harmonics are such
    polynomials); lets torch evaluate them in a few large operations."""
    u = np.random.default_rng(0).normal(size=(1000, 3))
    u /= np.linalg.norm(u, axis=1)[:, None]
    C, *_ = np.linalg.lstsq(_monomials(u, lmax, np.concatenate, np.einsum),
                            real_sph(u, lmax, np.stack), rcond=None)
    return C


def _monomials(u: Any, lmax: int, cat: Any, einsum: Any) -> Any:
    """(P, 4^k) products of k = ceil(lmax / 2) pairs of (1, x, y, z) factors."""
    v = cat([u[:, :1] * 0 + 1, u], 1)
    m = v
    for _ in range(lmax - 1):
        m = einsum("pa,pb->pab", m, v).reshape(len(u), m.shape[1] * v.shape[1])
    return m


def _l_norm(lmax: int) -> np.ndarray:
    """pyxtal's per-l normalisation of the coefficients."""
    ls = np.arange(lmax + 1)
    return np.sqrt(2 * np.sqrt(2) * np.pi / np.sqrt(2 * ls + 1))


def _lm_to_l(lmax: int) -> np.ndarray:
    """One-hot (lm, l): sums over m within each l."""
    n = (lmax + 1) ** 2
    out = np.zeros((n, lmax + 1))
    for l in range(lmax + 1):
        out[l * l:(l + 1) ** 2, l] = 1.0
    return out


def pair_weights(numbers_i: np.ndarray, numbers_j: np.ndarray, weight_on: bool) -> np.ndarray:
    """pyxtal's neighbour weights: Z_j, negated for another element when ``weight_on``."""
    w = numbers_j.astype(float)
    if weight_on:
        w = np.where(numbers_i != numbers_j, -w, w)
    return w


# ---------------------------------------------------------------------------
# NumPy: one structure
# ---------------------------------------------------------------------------

def power_spectrum(atoms: Atoms, params: SO3Params = SO3Params(),
                   atom_ids: list[int] | np.ndarray | None = None) -> np.ndarray:
    """Power spectra (len(atom_ids), params.size) of atoms of a periodic crystal."""
    from ase.neighborlist import neighbor_list

    ids = np.arange(len(atoms)) if atom_ids is None else np.asarray(atom_ids, int)
    i, j, vec = neighbor_list("ijD", atoms, params.rcut, self_interaction=False)
    r = np.linalg.norm(vec, axis=1)
    keep = np.isin(i, ids) & (r > 1e-2) & (r < params.rcut)
    i, j, vec, r = i[keep], j[keep], vec[keep], r[keep]
    out = np.zeros((len(ids), params.size))
    if not len(r):
        return out
    row = np.searchsorted(ids, i) if np.all(np.diff(ids) > 0) else \
        np.array([int(np.flatnonzero(ids == a)[0]) for a in i])
    lmax = params.lmax
    z = atoms.numbers
    radial = radial_functions(r, params)[0] * \
        pair_weights(z[i], z[j], params.weight_on)[:, None, None]         # (P, n, L)
    ylm = real_sph(vec / r[:, None], lmax, np.stack)                      # (P, LM)
    lm_l = _lm_to_l(lmax)
    c = np.einsum("pnl,ml->pnm", radial, lm_l) * ylm[:, None, :]
    ctot = np.zeros((len(ids), params.nmax, (lmax + 1) ** 2))
    np.add.at(ctot, row, c)
    p = _contract(np.einsum("anm,akm,ml->ankl", ctot, ctot, lm_l), params.nmax)
    if not params.rdf_bins:
        return p
    rdf = np.zeros((len(ids), params.rdf_bins))
    np.add.at(rdf, row, rdf_terms(r, params, np))
    return np.concatenate([p, rdf], 1)


def _contract(pnnl: Any, nmax: int) -> Any:
    """(A, n, n', l) -> (A, size) in pyxtal's order: (n, n') over tril, then l."""
    rows, cols = np.tril_indices(nmax)
    return pnnl[:, rows, cols, :].reshape(pnnl.shape[0], -1)


# ---------------------------------------------------------------------------
# torch: many structures, differentiable
# ---------------------------------------------------------------------------

def radial_functions(r: np.ndarray, p: SO3Params) -> tuple[np.ndarray, np.ndarray]:
    """The whole radial factor of a neighbour at distance ``r`` (without its
    weight): ``4 pi exp(-alpha r^2) fc(r) norm_l sum_q G[n, q] i_l(2 alpha r_q r)``,
    (len(r), nmax, lmax+1), and its derivative in ``r``."""
    from scipy.special import spherical_in

    rq, g = radial_table(p)
    arg = 2 * p.alpha * np.outer(r, rq)
    ls = range(p.lmax + 1)
    i_l = np.stack([spherical_in(l, arg) for l in ls], -1)
    di_l = np.stack([spherical_in(l, arg, derivative=True) for l in ls], -1) * \
        (2 * p.alpha * rq)[None, :, None]
    integral = np.einsum("nq,rql->rnl", g, i_l)
    dintegral = np.einsum("nq,rql->rnl", g, di_l)
    gauss = 4 * np.pi * np.exp(-p.alpha * r ** 2)
    fc = 0.5 * (np.cos(np.pi * r / p.rcut) + 1)
    dfc = -0.5 * np.pi / p.rcut * np.sin(np.pi * r / p.rcut)
    amp = gauss * fc
    damp = gauss * (dfc - 2 * p.alpha * r * fc)
    norm = _l_norm(p.lmax)
    value = amp[:, None, None] * integral * norm
    deriv = (damp[:, None, None] * integral + amp[:, None, None] * dintegral) * norm
    return value, deriv


@functools.lru_cache(maxsize=16)
def _hermite_table(p: SO3Params, knots: int) -> np.ndarray:
    """Values and scaled slopes of the radial factor at ``knots + 1`` nodes on
    (0, rcut), made once per parameters (every batch of a relaxation needs it)."""
    value, deriv = radial_functions(np.linspace(0, p.rcut, knots + 1), p)
    table = np.concatenate([value, deriv * (p.rcut / knots)], 1)
    table.flags.writeable = False
    return table


class SO3Torch:
    """The power spectrum on a ragged list of pairs, in float64 on any device.

    ``__call__(vec, center, weight, n_centers)``: ``vec`` (P, 3) are the vectors from
    each pair's central atom to its neighbour (Å, a differentiable function of the
    structure), ``center`` (P,) the row of the central atom in the output,
    ``weight`` (P,) the neighbour weights.  Pairs farther than ``rcut`` or closer
    than 0.01 Å contribute nothing (so a neighbour list with a skin can be reused
    while atoms move).  Returns (n_centers, size).
    """

    def __init__(self, params: SO3Params = SO3Params(), device: Any = "cpu", knots: int = 2048):
        import torch

        self.params = params
        self.device = torch.device(device)
        t = dict(dtype=torch.float64, device=self.device)
        # cubic Hermite table of the radial factor on (0, rcut): exact values and
        # slopes at the nodes, interpolation error ~ (rcut / knots)^4, far below 1e-8
        self.h = params.rcut / knots
        self.table = torch.tensor(_hermite_table(params, knots), **t)  # a copy
        self.l_norm = torch.as_tensor(_l_norm(params.lmax), **t)
        self.lm_l = torch.as_tensor(_lm_to_l(params.lmax), **t)
        self.sph = torch.as_tensor(_sph_monomial_table(params.lmax), **t)
        rows, cols = np.tril_indices(params.nmax)
        self.rows = torch.as_tensor(rows, device=self.device)
        self.cols = torch.as_tensor(cols, device=self.device)

    def __call__(self, vec: Any, center: Any, weight: Any, n_centers: int) -> Any:
        import torch

        p = self.params
        r2 = (vec * vec).sum(-1)
        inside = (r2 > 1e-4) & (r2 < p.rcut ** 2)
        # safe values outside, so that masked pairs have zero (not NaN) gradients
        safe_vec = torch.where(inside[:, None], vec, torch.full_like(vec, p.rcut / 2))
        r = torch.sqrt((safe_vec * safe_vec).sum(-1))
        radial = self._radial(r) * (weight * inside)[:, None, None]           # (P, n, L)
        ylm = _monomials(safe_vec / r[:, None], p.lmax, torch.cat, torch.einsum) @ self.sph
        c = torch.einsum("pnl,ml->pnm", radial, self.lm_l) * ylm[:, None, :]
        ctot = torch.zeros((n_centers, p.nmax, ylm.shape[-1]), dtype=c.dtype, device=c.device)
        ctot = ctot.index_add(0, center, c)
        pnnl = torch.einsum("anm,akm,ml->ankl", ctot, ctot, self.lm_l)
        out = pnnl[:, self.rows, self.cols, :].reshape(n_centers, -1)
        if not p.rdf_bins:
            return out
        terms = rdf_terms(r, p, torch) * inside[:, None]
        rdf = torch.zeros((n_centers, p.rdf_bins), dtype=r.dtype, device=r.device)
        return torch.cat([out, rdf.index_add(0, center, terms)], 1)

    def _radial(self, r: Any) -> Any:
        """The radial factor (P, nmax, lmax+1) by cubic Hermite interpolation."""
        import torch

        t = r / self.h
        k = torch.clamp(t.detach().floor().long(), 0, self.table.shape[0] - 2)
        s = (t - k)[:, None, None]
        nmax = self.params.nmax
        lo, hi = self.table[k], self.table[k + 1]
        s2, s3 = s * s, s * s * s
        return ((2 * s3 - 3 * s2 + 1) * lo[:, :nmax] + (s3 - 2 * s2 + s) * lo[:, nmax:]
                + (3 * s2 - 2 * s3) * hi[:, :nmax] + (s3 - s2) * hi[:, nmax:])

    def of_atoms(self, atoms: Atoms, atom_ids: list[int] | np.ndarray | None = None) -> Any:
        """Power spectra of an ASE crystal (a convenience for checks)."""
        import torch
        from ase.neighborlist import neighbor_list

        ids = np.arange(len(atoms)) if atom_ids is None else np.asarray(atom_ids, int)
        i, j, vec = neighbor_list("ijD", atoms, self.params.rcut, self_interaction=False)
        keep = np.isin(i, ids)
        i, j, vec = i[keep], j[keep], vec[keep]
        row = np.array([int(np.flatnonzero(ids == a)[0]) for a in i], dtype=np.int64)
        z = atoms.numbers
        w = pair_weights(z[i], z[j], self.params.weight_on)
        t = dict(dtype=torch.float64, device=self.device)
        return self(torch.as_tensor(vec, **t), torch.as_tensor(row, device=self.device),
                    torch.as_tensor(w, **t), len(ids))
