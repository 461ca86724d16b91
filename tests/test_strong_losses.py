"""The strong attacks' losses: finite differences, brute force, and the cospgd package."""
import numpy as np
import pytest

from caffe_attacks.strong_attacks import losses
from tests.gradcheck import assert_gradient_close, numeric_gradient

SHAPES = [(1, 4, 3, 5), (2, 3, 4, 4), (3, 6, 2, 3)]


def _problem(shape, seed, ignore_fraction=0.2, scale=3.0):
    rng = np.random.default_rng(seed)
    n, c, h, w = shape
    scores = rng.normal(0, scale, shape)
    labels = rng.integers(0, c, (n, h, w))
    labels[rng.random((n, h, w)) < ignore_fraction] = losses.IGNORE_LABEL
    return scores, labels, rng


def _fd_check(fn, scores):
    """fn(scores) -> (loss (N,), dscores); dscores must be d loss.sum() / dscores."""
    _, analytic = fn(scores)
    numeric = numeric_gradient(lambda s: fn(s)[0].sum(), scores, step=1e-6)
    assert_gradient_close(analytic, numeric, threshold=1e-6)
    assert np.abs(analytic).max() > 1e-4    # the check saw a real gradient


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_weighted_cross_entropy_gradient(shape):
    scores, labels, rng = _problem(shape, 1)
    weights = rng.random(labels.shape)
    _fd_check(lambda s: losses.weighted_cross_entropy(s, labels, weights), scores)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_jensen_shannon_gradient(shape):
    scores, labels, _ = _problem(shape, 2)
    _fd_check(lambda s: losses.jensen_shannon(s, labels), scores)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("balanced", [False, True], ids=["mce", "mce_bal"])
def test_masked_cross_entropy_gradient_with_the_mask_held_fixed(shape, balanced):
    # The mask is argmax == label, piecewise constant: away from argmax ties
    # the loss's derivative is that of CE with the mask as constant weights.
    scores, labels, rng = _problem(shape, 3)
    labels = np.where(rng.random(labels.shape) < 0.5, scores.argmax(1), labels)
    cw = rng.random(shape[1]) if balanced else None
    _fd_check(lambda s: losses.masked_cross_entropy(s, labels, cw), scores)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_cross_entropy_equals_the_paper_loss_per_pixel(shape):
    from caffe_attacks.losses import softmax_cross_entropy
    scores, labels, _ = _problem(shape, 4)
    loss, d = losses.cross_entropy(scores, labels)
    ref_loss, ref_d = softmax_cross_entropy(scores.astype(np.float32), labels)
    hw = shape[2] * shape[3]
    np.testing.assert_allclose(loss.sum() * hw, ref_loss, rtol=1e-5)
    np.testing.assert_allclose(d * hw, ref_d, atol=1e-6)


def test_jensen_shannon_brute_force():
    scores, labels, _ = _problem((2, 5, 3, 3), 5, ignore_fraction=0.0)
    p = np.exp(scores - scores.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    q = np.moveaxis(np.eye(5)[labels], -1, 1)
    m = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_q = np.where(q > 0, q * np.log(q / m), 0.0).sum(1)
    js = 0.5 * (p * np.log(p / m)).sum(1) + 0.5 * kl_q
    np.testing.assert_allclose(losses.jensen_shannon(scores, labels)[0], js.mean((1, 2)),
                               rtol=1e-10)


def test_masked_cross_entropy_brute_force_and_ignore():
    scores, labels, rng = _problem((2, 4, 5, 5), 6)
    labels = np.where(rng.random(labels.shape) < 0.5, scores.argmax(1), labels)
    cw = np.array([0.1, 0.2, 0.3, 0.4])
    loss, d = losses.masked_cross_entropy(scores, labels, cw)
    logp = scores - np.log(np.exp(scores).sum(1, keepdims=True))
    expect = np.zeros(2)
    for n, i, j in np.ndindex(2, 5, 5):
        y = labels[n, i, j]
        if y != 255 and scores[n, :, i, j].argmax() == y:
            expect[n] -= cw[y] * logp[n, y, i, j] / 25
    np.testing.assert_allclose(loss, expect, rtol=1e-12)
    assert np.all(d[np.broadcast_to((labels == 255)[:, None], d.shape)] == 0)


def test_segpgd_and_cospgd_weights_closed_form():
    scores, labels, _ = _problem((1, 3, 4, 4), 7, ignore_fraction=0.0)
    correct = scores.argmax(1) == labels
    w = losses.segpgd_weights(scores, labels, 3, 10)
    np.testing.assert_allclose(w, np.where(correct, 1 - 0.15, 0.15))
    p = np.exp(scores) / np.exp(scores).sum(1, keepdims=True)
    py = np.take_along_axis(p, labels[:, None], 1)[:, 0]
    np.testing.assert_allclose(losses.cospgd_weights(scores, labels),
                               py / np.linalg.norm(p, axis=1))


# --- the cospgd package (the SegPGD / CosPGD reference code) as oracle ---
@pytest.fixture(scope="module")
def cospgd():
    """The package (a test dependency; it needs torch): skip without it."""
    pytest.importorskip("torch")
    return pytest.importorskip("cospgd")


def _oracle_pixel_weights(scale_fn, scores, labels):
    """Per-pixel weights the package applies: d(its output) / d(per-pixel loss)."""
    import torch
    loss = torch.ones(labels.shape, dtype=torch.float64, requires_grad=True)
    out = scale_fn(torch.from_numpy(scores), torch.from_numpy(labels), loss)
    out.sum().backward()
    return loss.grad.numpy()


@pytest.mark.parametrize("shape", [(1, 4, 5, 6), (3, 21, 7, 4), (2, 19, 3, 9)], ids=str)
@pytest.mark.parametrize("t", [0, 1, 7, 19])
def test_segpgd_weights_match_the_cospgd_package(cospgd, shape, t):
    scores, labels, rng = _problem(shape, 10 + t, ignore_fraction=0.0)
    labels = np.where(rng.random(labels.shape) < 0.5, scores.argmax(1), labels)
    steps = 20
    oracle = _oracle_pixel_weights(
        lambda s, y, l: cospgd.functions.segpgd_scale(s, y, l, t, steps), scores, labels)
    hw = shape[2] * shape[3]
    np.testing.assert_allclose(losses.segpgd_weights(scores, labels, t, steps) / hw, oracle,
                               rtol=1e-12)


@pytest.mark.parametrize("shape", [(1, 4, 5, 6), (3, 21, 7, 4), (2, 19, 3, 9)], ids=str)
def test_cospgd_weights_match_the_cospgd_package(cospgd, shape):
    scores, labels, _ = _problem(shape, 20, ignore_fraction=0.0)
    oracle = _oracle_pixel_weights(
        lambda s, y, l: cospgd.functions.cospgd_scale(s, y, l, num_classes=shape[1]),
        scores, labels)
    np.testing.assert_allclose(losses.cospgd_weights(scores, labels), oracle, rtol=1e-10)
