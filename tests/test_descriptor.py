"""The SO(3) power spectrum: pyxtal's numbers, NumPy = torch, exact gradients."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from ase.build import bulk
from legodask.crystal.descriptor import (SO3Params, SO3Torch, _monomials, _sph_monomial_table,
                                 power_spectrum, radial_functions, real_sph)
from legodask.crystal.environment import get_environment


def _pyxtal_so3(rcut: float):
    from pyxtal.lego.SO3 import SO3

    return SO3(nmax=2, lmax=4, rcut=rcut, alpha=1.5, weight_on=True)


def _random_crystals():
    """Random crystals of pyxtal, carbon and SiO2, in several lattice types."""
    from pyxtal import pyxtal

    cases = [(194, ["C"], [4]), (62, ["C"], [8]), (152, ["Si", "O"], [3, 6]),
             (12, ["C"], [8]), (2, ["C"], [6]), (227, ["C"], [8])]
    out = []
    for seed, (spg, els, num) in enumerate(cases):
        x = pyxtal()
        x.from_random(3, spg, els, num, random_state=seed, factor=0.5)
        out.append(x.to_ase(resort=False))
    return out


def _min_height(atoms) -> float:
    cell = atoms.cell.array
    vol = abs(np.linalg.det(cell))
    return min(vol / np.linalg.norm(np.cross(cell[i - 2], cell[i - 1])) for i in range(3))


@pytest.mark.parametrize("rcut", [2.1, 2.4])
def test_numpy_and_torch_match_pyxtal(rcut):
    so3 = _pyxtal_so3(rcut)
    ours = SO3Torch(SO3Params(rcut=rcut))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's sph_harm deprecation inside pyxtal
        for atoms in _random_crystals():
            # pyxtal looks at the 27 nearest cells only: complete in a 3x3x3 supercell
            ref = so3.compute_p(atoms * (3, 3, 3), list(range(len(atoms))))
            scale = max(np.abs(ref).max(), 1.0)
            p_np = power_spectrum(atoms, SO3Params(rcut=rcut))
            p_t = ours.of_atoms(atoms).numpy()
            assert p_np.shape == (len(atoms), 15)
            np.testing.assert_allclose(p_np, ref, rtol=1e-8, atol=1e-8 * scale)
            np.testing.assert_allclose(p_t, ref, rtol=1e-8, atol=1e-8 * scale)
            if _min_height(atoms) > rcut:  # thick cell: pyxtal's own numbers as they are
                direct = so3.compute_p(atoms, list(range(len(atoms))))
                np.testing.assert_allclose(p_np, direct, rtol=1e-8, atol=1e-8 * scale)


def test_thin_cell_convention_is_the_complete_neighbour_list():
    """A cell thinner than rcut: pyxtal (27 cells) misses neighbours two cells
    away, we do not; pyxtal on a supercell agrees with us."""
    atoms = bulk("C", "sc", a=1.1)
    so3 = _pyxtal_so3(2.4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        direct = so3.compute_p(atoms, [0])
        complete = so3.compute_p(atoms * (3, 3, 3), [0])
    ours = power_spectrum(atoms, SO3Params(rcut=2.4))
    np.testing.assert_allclose(ours, complete, rtol=1e-8, atol=1e-8)
    assert np.abs(ours - direct).max() > 1e-3 * np.abs(ours).max()


def test_graphite_reference_spectrum():
    env = get_environment("graphite")
    p = power_spectrum(env.reference, SO3Params())
    np.testing.assert_allclose(p, np.repeat(p[:1], 4, 0), rtol=1e-10, atol=1e-12)  # all sites alike
    assert p[0, 0] == pytest.approx(16.6991445, rel=1e-7)


def test_real_harmonics_sum_rule_and_polynomial_form():
    u = np.random.default_rng(0).normal(size=(50, 3))
    u /= np.linalg.norm(u, axis=1)[:, None]
    y = real_sph(u, 4, np.stack)
    for l in range(5):
        np.testing.assert_allclose((y[:, l * l:(l + 1) ** 2] ** 2).sum(1),
                                   (2 * l + 1) / (4 * np.pi), rtol=1e-12)
    poly = _monomials(u, 4, np.concatenate, np.einsum) @ _sph_monomial_table(4)
    np.testing.assert_allclose(poly, y, atol=1e-13)


def test_radial_table_interpolates_the_exact_radial_factor():
    params = SO3Params(rcut=2.1)
    so3 = SO3Torch(params)
    r = np.random.default_rng(1).uniform(0.01, 2.1, 500)
    exact, slope = radial_functions(r, params)
    rt = torch.tensor(r, requires_grad=True)
    got = so3._radial(rt)
    scale = np.abs(exact).max()
    np.testing.assert_allclose(got.detach().numpy(), exact, atol=1e-11 * scale)
    (grad,) = torch.autograd.grad(got.sum(), rt)
    np.testing.assert_allclose(grad.numpy(), slope.sum((1, 2)), atol=1e-7 * np.abs(slope).max())
    # the slope itself is the derivative of the value
    h = 1e-6
    fd = (radial_functions(r + h, params)[0] - radial_functions(r - h, params)[0]) / (2 * h)
    np.testing.assert_allclose(slope, fd, atol=1e-6 * np.abs(slope).max())


def test_torch_gradient_matches_finite_differences():
    atoms = _random_crystals()[3]
    so3 = SO3Torch(SO3Params(rcut=2.4))
    from ase.neighborlist import neighbor_list

    i, j, vec = neighbor_list("ijD", atoms, 2.4)
    keep = i == 0
    vec = torch.tensor(vec[keep], dtype=torch.float64, requires_grad=True)
    center = torch.zeros(len(vec), dtype=torch.long)
    w = torch.full((len(vec),), 6.0, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda v: so3(v, center, w, 1), (vec,), eps=1e-6,
                                    atol=1e-5, rtol=1e-6)


def test_rdf_part_matches_pyxtal_in_weight_and_peak():
    """pyxtal's smoothed histogram of neighbour distances and our differentiable
    form of it: the same total (0.5 x the neighbours) and mean distance, on
    crystals with no neighbour in the last bin (where ours fades out) and at most
    pyxtal's 12 neighbours per atom."""
    params = SO3Params(rdf_bins=20)
    so3 = _pyxtal_so3(2.1)
    crystals = _random_crystals()
    for atoms in [get_environment("graphite").reference, crystals[0], crystals[2], crystals[5]]:
        ours = power_spectrum(atoms, params)
        torch_ = SO3Torch(params).of_atoms(atoms).numpy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = so3.compute_p(atoms * (3, 3, 3), list(range(len(atoms))), return_rdf=True)
        assert ours.shape == ref.shape == (len(atoms), 35)
        np.testing.assert_allclose(torch_, ours, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(ours[:, :15], ref[:, :15], rtol=1e-8, atol=1e-8)
        inside = ref[:, 15:].sum(1) > 0
        np.testing.assert_allclose(ours[:, 15:].sum(1), ref[:, 15:].sum(1), rtol=0.03, atol=0.05)
        centres = (np.arange(20) + 0.5) * 2.1 / 20
        mean = [(r[inside, 15:] * centres).sum(1) / r[inside, 15:].sum(1) for r in (ours, ref)]
        np.testing.assert_allclose(mean[0], mean[1], atol=2.1 / 20 / 2)  # pyxtal snaps to bins


def test_rdf_gradient_matches_finite_differences_and_fades_at_the_cutoff():
    params = SO3Params(rcut=2.1, rdf_bins=20)
    so3 = SO3Torch(params)
    r = torch.tensor([[1.42, 0.0, 0.0], [0.3, 1.2, 0.5], [0.0, 0.0, 2.06]],
                     dtype=torch.float64, requires_grad=True)
    center = torch.zeros(3, dtype=torch.long)
    w = torch.full((3,), 6.0, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda v: so3(v, center, w, 1), (r,), eps=1e-6,
                                    atol=1e-5, rtol=1e-6)
    near_cut = [so3(torch.tensor([[0.0, 0.0, d]], dtype=torch.float64), center[:1], w[:1], 1)
                [0, 15:].sum().item() for d in (2.0999, 2.1001)]
    assert near_cut[0] < 1e-6 and near_cut[1] == 0.0
