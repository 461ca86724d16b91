"""Permutohedral lattice: against brute-force Gaussian filtering, its own
transpose, and Kraehenbuehl's lattice (pydensecrf2) as an independent
implementation."""
import numpy as np
import pytest

from caffe_attacks import lattice
from caffe_attacks.lattice import PermutohedralLattice
from caffe_attacks.layers.meanfield import bilateral_features, spatial_features

BLUR_BACKENDS = [False] + ([True] if lattice.numba is not None else [])


def smooth_image(height, width):
    """(3, H, W) float64: sinusoids, steps and a ramp, 0..~200 in range."""
    y, x = np.mgrid[:height, :width].astype(np.float64)
    return np.stack([60 * np.sin(x / 4) + 40 * (y > height / 2),
                     30 * np.cos(y / 5) + 50 * (x > width / 2),
                     2 * x + 3 * y])


def normalised_error(features, use_numba):
    """max |lattice - exact| of the normalised Gaussian filter of uniform(0,1) values."""
    features = np.asarray(features, dtype=np.float64)
    lat = PermutohedralLattice(features, use_numba=use_numba)
    sq = ((features[:, None, :] - features[None, :, :]) ** 2).sum(axis=-1)
    kernel = np.exp(-sq / 2)
    values = np.random.default_rng(1).uniform(size=(features.shape[0], 3))
    exact = kernel @ values / kernel.sum(axis=1, keepdims=True)
    ours = lat.filter(values) / lat.filter(np.ones(features.shape[0]))[:, None]
    return np.abs(exact - ours).max()


# Observed max errors of the normalised filter (values in [0, 1]) on 14x16
# images: spatial theta 2: 0.0154; bilateral (theta_alpha 5, theta_beta 20 on
# smooth_image): 0.0515.  The lattice is an approximation (piecewise-linear
# splat/slice, 3-tap blur), so this is its accuracy, not round-off.  A lattice
# whose feature scale is off by 20% gives 0.035 and 0.081, beyond the bounds.
@pytest.mark.parametrize("use_numba", BLUR_BACKENDS, ids=lambda b: "numba" if b else "numpy")
@pytest.mark.parametrize("name, features, bound", [
    ("spatial", spatial_features(14, 16, 2.0), 0.02),
    ("bilateral", bilateral_features(smooth_image(14, 16), 5.0, 20.0), 0.065),
], ids=["spatial-d2", "bilateral-d5"])
def test_filter_close_to_brute_force_gaussian(name, features, bound, use_numba):
    assert normalised_error(features, use_numba) < bound


@pytest.mark.parametrize("use_numba", BLUR_BACKENDS, ids=lambda b: "numba" if b else "numpy")
def test_wide_kernel_averages_everything(use_numba):
    # With theta far larger than the image, every weight is ~1: the normalised
    # filter is the global mean (closed form).
    features = spatial_features(9, 11, 1e4).astype(np.float64)
    values = np.random.default_rng(2).uniform(size=(99, 2))
    lat = PermutohedralLattice(features, use_numba=use_numba)
    ours = lat.filter(values) / lat.filter(np.ones(99))[:, None]
    np.testing.assert_allclose(ours, np.broadcast_to(values.mean(axis=0), ours.shape), atol=1e-3)


@pytest.mark.parametrize("use_numba", BLUR_BACKENDS, ids=lambda b: "numba" if b else "numpy")
def test_transpose_is_the_adjoint(use_numba):
    rng = np.random.default_rng(3)
    features = np.concatenate([spatial_features(6, 7, 2.0), rng.normal(size=(42, 3))], axis=1)
    lat = PermutohedralLattice(features, use_numba=use_numba)
    forward = lat.filter(np.eye(42))          # column j = K e_j, so this is K
    backward = lat.filter(np.eye(42), transpose=True)
    # The blur order matters: K is not symmetric, so this check has teeth.
    assert np.abs(forward - forward.T).max() > 1e-4
    np.testing.assert_allclose(backward, forward.T, atol=1e-12)


def test_numba_and_numpy_agree():
    if lattice.numba is None:
        pytest.skip("numba not installed")
    features = bilateral_features(smooth_image(12, 13), 4.0, 15.0)
    values = np.random.default_rng(4).normal(size=(156, 5)).astype(np.float32)
    a = PermutohedralLattice(features, use_numba=True).filter(values, transpose=True)
    b = PermutohedralLattice(features, use_numba=False).filter(values, transpose=True)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_deterministic_and_shape_preserving():
    features = bilateral_features(smooth_image(8, 9), 3.0, 10.0)
    values = np.random.default_rng(5).normal(size=72).astype(np.float32)
    lat = PermutohedralLattice(features)
    a, b = lat.filter(values), lat.filter(values)
    assert a.shape == values.shape and a.dtype == np.float32
    assert np.array_equal(a, b)


def densecrf_kernel(features):
    """Row-normalised lattice kernel of pydensecrf2, read out of one mean-field step.

    Two labels; label 0's unary energy is -20 at pixel j and +20 elsewhere,
    so Q0[0] ~ e_j and Q0[1] ~ 1 - e_j.  With a Potts weight 1 and
    NORMALIZE_AFTER, one step gives log Q1[0]/Q1[1] = -U0 + 2 n_i K_ij - 1
    (n = 1 / K 1), hence column j of the normalised kernel.
    """
    dcrf = pytest.importorskip("pydensecrf.densecrf")
    n = features.shape[0]
    out = np.empty((n, n))
    for j in range(n):
        energy = np.zeros((2, n), np.float32)
        energy[0] = 20
        energy[0, j] = -20
        crf = dcrf.DenseCRF(n, 2)
        crf.setUnaryEnergy(energy)
        crf.addPairwiseEnergy(np.ascontiguousarray(features.T, dtype=np.float32), compat=1.0,
                              kernel=dcrf.DIAG_KERNEL, normalization=dcrf.NORMALIZE_AFTER)
        q = np.array(crf.inference(1))
        out[:, j] = ((np.log(q[0]) - np.log(q[1]) + energy[0]) + 1) / 2
    return out


@pytest.mark.parametrize("features", [
    spatial_features(6, 9, 3.0),
    bilateral_features(np.random.default_rng(0).uniform(0, 255, (3, 6, 9)), 5.0, 40.0),
], ids=["spatial", "bilateral-random-colours"])
def test_same_lattice_as_densecrf(features):
    # Same construction (elevation, rounding, ranks, [1 2 1]/2 blur, slice
    # factor) as Kraehenbuehl's lattice: observed agreement 1.2e-6, float32
    # round-off in pydensecrf, even where the lattice is far from the exact
    # Gaussian (random colours: error ~0.25 against brute force).
    theirs = densecrf_kernel(features)
    lat = PermutohedralLattice(features)
    ours = lat.filter(np.eye(features.shape[0]))
    ours /= ours.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_numba_and_numpy_build_the_same_lattice():
    if lattice.numba is None:
        pytest.skip("numba not installed")
    rng = np.random.default_rng(6)
    # Integer-valued features: many exact ties in rounding and ranking.
    features = np.concatenate([spatial_features(10, 11, 1.0), rng.integers(0, 4, (110, 3))], axis=1)
    for f in (features, bilateral_features(smooth_image(10, 11), 3.0, 7.0)):
        a = PermutohedralLattice(f, use_numba=True)
        b = PermutohedralLattice(f, use_numba=False)
        assert a.num_points == b.num_points
        np.testing.assert_array_equal(a._offsets, b._offsets)
        np.testing.assert_allclose(a._weights, b._weights, rtol=0, atol=1e-12)
        for (a1, a2), (b1, b2) in zip(a._neighbours, b._neighbours):
            np.testing.assert_array_equal(a1, b1)
            np.testing.assert_array_equal(a2, b2)
