"""losses.py against finite differences and a direct per-pixel formula."""
import numpy as np
import pytest

from caffe_attacks.losses import softmax, softmax_cross_entropy
from tests.gradcheck import assert_gradient_close, numeric_gradient


def _direct_loss(scores, labels, ignore=255):
    total = 0.0
    n, c, h, w = scores.shape
    for b in range(n):
        for i in range(h):
            for j in range(w):
                if labels[b, i, j] == ignore:
                    continue
                s = scores[b, :, i, j].astype(np.float64)
                total += np.log(np.exp(s).sum()) - s[labels[b, i, j]]
    return total


@pytest.mark.parametrize("shape", [(1, 3, 4, 5), (2, 5, 3, 3)])
def test_loss_is_summed_cross_entropy(shape):
    rng = np.random.default_rng(0)
    scores = rng.normal(size=shape).astype(np.float32) * 3
    labels = rng.integers(0, shape[1], size=(shape[0],) + shape[2:])
    labels[0, 0, :2] = 255
    loss, _ = softmax_cross_entropy(scores, labels)
    assert loss == pytest.approx(_direct_loss(scores, labels), rel=1e-6)


def test_gradient_matches_finite_differences_and_ignores_void():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(1, 4, 3, 4)) * 2
    labels = rng.integers(0, 4, size=(1, 3, 4))
    labels[0, 1, 1] = labels[0, 2, 3] = 255
    _, grad = softmax_cross_entropy(scores, labels)
    numeric = numeric_gradient(lambda s: softmax_cross_entropy(s, labels)[0], scores, step=1e-4)
    assert_gradient_close(grad, numeric, threshold=1e-3)
    assert np.all(grad[0, :, 1, 1] == 0) and np.all(grad[0, :, 2, 3] == 0)
    assert np.any(grad[0, :, 0, 0] != 0)


def test_stable_for_huge_scores():
    scores = np.array([[[[1e4]], [[-1e4]]]], np.float32)
    loss, grad = softmax_cross_entropy(scores, np.array([[[1]]]))
    assert loss == pytest.approx(2e4)
    assert np.allclose(grad[0, :, 0, 0], [1, -1])
    assert np.allclose(softmax(scores)[0, :, 0, 0], [1, 0])


def test_rejects_out_of_range_labels():
    with pytest.raises(ValueError):
        softmax_cross_entropy(np.zeros((1, 2, 1, 1)), np.array([[[2]]]))
