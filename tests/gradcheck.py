"""Central finite differences under Caffe's GradientChecker rules.

Caffe checks a gradient by central differences with a step of 1e-2 in float32
and compares with a tolerance scaled by max(|analytic|, |numeric|, 1); points
within one step of a kink (ReLU at 0, max ties) are skipped by the caller via
``skip``.
"""
import numpy as np


def numeric_gradient(f, x, step=1e-2, indices=None):
    """d f(x) / dx by central differences.

    Parameters
    ----------
    f : callable, array -> float (scalar objective; may be float32 inside)
    x : ndarray, the point; not modified
    step : float, the difference step (Caffe: 1e-2)
    indices : iterable of flat indices to probe (default: all)

    Returns
    -------
    grad : ndarray of x's shape, float64; NaN where not probed
    """
    x = np.array(x, dtype=np.float64 if x.dtype == np.float64 else x.dtype, copy=True)
    grad = np.full(x.shape, np.nan)
    flat = x.reshape(-1)
    for i in (range(flat.size) if indices is None else indices):
        orig = flat[i]
        flat[i] = orig + step
        up = float(f(x))
        flat[i] = orig - step
        down = float(f(x))
        flat[i] = orig
        grad.reshape(-1)[i] = (up - down) / (2 * step)
    return grad


def assert_gradient_close(analytic, numeric, threshold=1e-2, skip=None):
    """Caffe's rule: |a - n| <= threshold * max(|a|, |n|, 1) wherever probed."""
    analytic = np.asarray(analytic, dtype=np.float64)
    probed = ~np.isnan(numeric)
    if skip is not None:
        probed &= ~skip
    assert probed.any(), "no point was probed"
    a, n = analytic[probed], numeric[probed]
    scale = np.maximum(np.maximum(np.abs(a), np.abs(n)), 1.0)
    bad = np.abs(a - n) > threshold * scale
    if bad.any():
        i = np.flatnonzero(bad)[0]
        raise AssertionError(
            "%d of %d gradient entries differ; first: analytic %.6g vs numeric %.6g"
            % (bad.sum(), bad.size, a[i], n[i]))


def sample_indices(shape, k, seed=0):
    """k distinct flat indices of an array of `shape` (all of them if fewer)."""
    size = int(np.prod(shape))
    rng = np.random.default_rng(seed)
    return rng.choice(size, size=min(k, size), replace=False)
