"""The four attacks: budgets, closed forms on a linear model, schedules."""
import numpy as np
import pytest

from caffe_attacks import attacks
from caffe_attacks.attacks import (PAPER_EPS, ImageBox, fgsm, fgsm_ll, ifgsm, ifgsm_ll,
                                   num_iterations, validate_eps)
from caffe_attacks.losses import softmax_cross_entropy
from tests.models import LinearPixelModel, TanhConvModel

ALL = [fgsm, fgsm_ll, ifgsm, ifgsm_ll]


def _x(shape, seed=0, scale=40.0):
    return (np.random.default_rng(seed).normal(0, scale, shape)).astype(np.float32)


def test_schedule_matches_the_paper():
    assert [num_iterations(e) for e in PAPER_EPS] == [1, 1, 2, 3, 5, 10, 20, 36]


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), "x", []])
def test_bad_eps_rejected(bad):
    with pytest.raises(ValueError):
        validate_eps(bad)


@pytest.mark.parametrize("attack", ALL, ids=lambda f: f.__name__)
@pytest.mark.parametrize("shape", [(1, 3, 5, 7), (2, 3, 4, 4)])
def test_every_attack_stays_in_the_eps_ball(attack, shape):
    model = TanhConvModel()
    x = _x(shape)
    eps = [0, 0.25, 1, 4, 8]
    for e, x_adv in zip(eps, attack(model, x, eps)):
        assert x_adv.dtype == np.float32 and x_adv.shape == x.shape
        assert np.abs(x_adv - x).max() <= e + 1e-4
        if e == 0:
            np.testing.assert_array_equal(x_adv, x)
        else:
            assert np.abs(x_adv - x).max() > 0.5 * e


def test_fgsm_moves_every_pixel_with_gradient_by_exactly_eps():
    W = np.array([[1.0, 0.0, -2.0], [0.5, 0.0, 1.0], [-1.0, 0.0, 0.3]])  # channel 1 has no gradient
    model = LinearPixelModel(W, np.zeros(3))
    x = _x((1, 3, 6, 6), seed=3, scale=20.0)
    g = attacks.loss_gradient(model, x, model.forward(x).argmax(1))
    assert np.all(g[:, 1] == 0)
    # Saturated softmax pixels have an exactly zero gradient: they must not move.
    assert 0 < np.mean(g == 0) < 0.9
    for e in (0.25, 2.0, 32.0):
        delta = fgsm(model, x, e) - x
        np.testing.assert_allclose(np.abs(delta[g != 0]), e, rtol=1e-5)
        assert np.all(delta[g == 0] == 0)


@pytest.mark.parametrize("shape", [(1, 3, 8, 9), (3, 3, 5, 5), (2, 3, 1, 16)])
@pytest.mark.parametrize("eps", [0.5, 2.0, 8.0])
def test_fgsm_closed_form_on_a_linear_two_class_model(shape, eps):
    """A pixel flips iff its margin is below eps * ||w1 - w0||_1."""
    rng = np.random.default_rng(hash((shape, eps)) % 2 ** 32)
    W = rng.normal(0, 1, (2, 3))
    b = rng.normal(0, 1, 2)
    model = LinearPixelModel(W, b)
    x = _x(shape, seed=1, scale=3.0)
    scores = model.forward(x).astype(np.float64)
    margin = np.abs(scores[:, 1] - scores[:, 0])
    bound = eps * np.abs(W[1] - W[0]).sum()
    clear = np.abs(margin - bound) > 1e-3 * max(bound, 1)  # not on the boundary
    flips = model.forward(fgsm(model, x, eps)).argmax(1) != scores.argmax(1)
    np.testing.assert_array_equal(flips[clear], (margin < bound)[clear])
    assert clear.mean() > 0.9


def test_fgsm_ll_moves_towards_the_least_likely_class():
    W = np.random.default_rng(2).normal(0, 1, (3, 3))
    model = LinearPixelModel(W, np.zeros(3))
    x = _x((1, 3, 10, 10), seed=4, scale=2.0)
    ll = model.forward(x).argmin(1)
    before = np.mean(model.forward(x).argmax(1) == ll)
    after = [np.mean(model.forward(xa).argmax(1) == ll) for xa in fgsm_ll(model, x, [1, 4, 16])]
    assert before == 0
    assert 0 < after[0] <= after[1] <= after[2] and after[2] > 0.5


@pytest.mark.parametrize("attack", [fgsm, fgsm_ll], ids=lambda f: f.__name__)
def test_shared_gradient_sweep_equals_per_eps_recomputation(attack):
    model = TanhConvModel(seed=5)
    x = _x((1, 3, 7, 6), seed=6)
    sweep = attack(model, x, list(PAPER_EPS))
    for e, x_adv in zip(PAPER_EPS, sweep):
        np.testing.assert_array_equal(x_adv, attack(model, x, e))


def test_single_step_sweep_uses_one_gradient():
    model = LinearPixelModel(np.eye(3), np.zeros(3))
    fgsm(model, _x((1, 3, 4, 4)), list(PAPER_EPS))
    assert model.gradients == 1


@pytest.mark.parametrize("eps", [0.25, 1, 2, 4, 8])
def test_iterative_attacks_follow_the_schedule(eps):
    for attack in (ifgsm, ifgsm_ll):
        model = LinearPixelModel(np.random.default_rng(0).normal(size=(3, 3)), np.zeros(3))
        attack(model, _x((1, 3, 4, 4)), eps)
        assert model.gradients == num_iterations(eps)
    model = LinearPixelModel(np.eye(3), np.zeros(3))
    ifgsm(model, _x((1, 3, 4, 4)), eps, iterations=3)
    assert model.gradients == 3


def test_ifgsm_keeps_the_clean_labels_and_ifgsm_ll_recomputes_targets(monkeypatch):
    model = TanhConvModel(seed=7)
    x = _x((1, 3, 6, 6), seed=8)
    seen = []
    real = attacks.loss_gradient

    def spy(model, x, target, scores=None):
        seen.append(np.array(target))
        return real(model, x, target, scores)

    monkeypatch.setattr(attacks, "loss_gradient", spy)
    clean = model.forward(x)
    ifgsm(model, x, 8)
    assert all(np.array_equal(t, clean.argmax(1)) for t in seen)
    seen.clear()
    x_adv = ifgsm_ll(model, x, 8)
    assert np.array_equal(seen[0], clean.argmin(1))
    assert not all(np.array_equal(t, seen[0]) for t in seen[1:])
    seen.clear()
    ifgsm_ll(model, x, 8, target="clean")
    assert all(np.array_equal(t, clean.argmin(1)) for t in seen)
    assert x_adv.shape == x.shape


def test_iterative_is_stronger_than_single_step():
    model = TanhConvModel(seed=9)
    x = _x((1, 3, 12, 12), seed=10)
    clean = model.forward(x).argmax(1)

    def loss(x_adv):
        return softmax_cross_entropy(model.forward(x_adv), clean, None)[0]

    assert loss(ifgsm(model, x, 8)) > loss(fgsm(model, x, 8)) > loss(x)


def test_clip_to_image_keeps_pixels_valid():
    mean = [104.0, 117.0, 123.0]
    box = ImageBox.from_mean(mean)
    img = 255.0 * np.random.default_rng(0).integers(0, 2, (1, 3, 6, 6)).astype(np.float32)
    x = img - np.array(mean, np.float32).reshape(1, 3, 1, 1)
    model = TanhConvModel(seed=1)
    for attack in ALL:
        unclipped = attack(model, x, 16)
        clipped = attack(model, x, 16, clip_to_image=box)
        restored = clipped + np.array(mean, np.float32).reshape(1, 3, 1, 1)
        assert restored.min() >= 0 and restored.max() <= 255
        assert np.abs(clipped - x).max() <= 16 + 1e-4
        raw = unclipped + np.array(mean, np.float32).reshape(1, 3, 1, 1)
        assert raw.max() > 255 or raw.min() < 0


def test_unknown_attack_and_target():
    with pytest.raises(ValueError, match="unknown attack"):
        attacks.get_attack("pgd")
    with pytest.raises(ValueError):
        ifgsm_ll(TanhConvModel(), _x((1, 3, 2, 2)), 1, target="random")


@pytest.mark.parametrize("attack", [ifgsm, ifgsm_ll], ids=lambda f: f.__name__)
def test_eps_batched_sweep_equals_the_per_eps_loop(attack):
    model = TanhConvModel(seed=11)
    x = _x((1, 3, 7, 9), seed=12)
    eps = [0, 0.5, 2, 8]
    loop = attack(model, x, eps)
    batched = attack(model, x, eps, batch_eps=True)
    for a, b in zip(loop, batched):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-4)
    counting = LinearPixelModel(np.random.default_rng(0).normal(size=(3, 3)), np.zeros(3))
    attack(counting, x, eps, batch_eps=True)
    assert counting.gradients == max(num_iterations(e) for e in eps[1:])
