"""Numbers that enter from the user: eps, alpha and input-protocol values (issue 14)."""
import math

import numpy as np
import pytest

from caffe_attacks.attacks import MAX_EPS, ifgsm, ifgsm_ll, validate_alpha, validate_eps
from caffe_attacks.preprocess import Protocol
from tests.models import LinearPixelModel


class CountingModel(LinearPixelModel):
    """A linear model that counts forward passes (an attack must not start on bad input)."""

    def __init__(self):
        rng = np.random.default_rng(0)
        super().__init__(rng.normal(size=(3, 3)).astype(np.float32), np.zeros(3, np.float32))
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        # a regression must fail, not hang in 1.25e9 iterations
        assert self.calls < 1000, "the attack started iterating"
        return super().forward(x)


X = np.random.default_rng(1).normal(0, 40, (1, 3, 4, 5)).astype(np.float32)


@pytest.mark.parametrize("eps", [255.5, 256, 1e9, float("inf")])
@pytest.mark.parametrize("attack", [ifgsm, ifgsm_ll])
def test_eps_beyond_the_pixel_range_is_refused_before_any_iteration(attack, eps):
    model = CountingModel()
    with pytest.raises(ValueError, match="eps must be"):
        attack(model, X, [2.0, eps])
    assert model.calls == 0


def test_eps_up_to_the_pixel_range_is_accepted():
    assert validate_eps([0, 0.25, MAX_EPS]) == [0.0, 0.25, 255.0]


@pytest.mark.parametrize("alpha", [float("nan"), float("inf"), -1.0, 0.0, 256.0, "x", None])
@pytest.mark.parametrize("attack", [ifgsm, ifgsm_ll])
def test_a_bad_alpha_is_refused_before_any_iteration(attack, alpha):
    model = CountingModel()
    with pytest.raises(ValueError, match="alpha must be"):
        attack(model, X, 2.0, alpha=alpha)
    assert model.calls == 0


@pytest.mark.parametrize("alpha", [1e-3, 0.5, 1, 255])
def test_a_good_alpha_passes_and_stays_finite(alpha):
    assert validate_alpha(alpha) == float(alpha)
    x_adv = ifgsm(CountingModel(), X, 2.0, alpha=alpha)
    assert np.isfinite(x_adv).all() and np.abs(x_adv - X).max() <= 2.0 + 1e-5


VALID = {"mean_bgr": [104.0, 117.0, 123.0], "resize": None,
         "pad": {"mode": "constant", "canvas": [513, 513]}, "scores_to_labels": "crop"}


def _with(**changes):
    d = dict(VALID)
    d.update(changes)
    return d


@pytest.mark.parametrize("d, message", [
    (_with(mean_bgr=5), "mean_bgr needs 3 values"),
    (_with(mean_bgr=[1.0, float("nan"), 3.0]), r"mean_bgr must be a number in \[0, 255\]"),
    (_with(mean_bgr=[1.0, 2.0, float("inf")]), "mean_bgr must be"),
    (_with(mean_bgr=[1.0, 2.0, 300.0]), "mean_bgr must be"),
    (_with(mean_bgr=[1.0, 2.0, "3"]), "mean_bgr must be a number"),
    (_with(pad={"mode": "constant", "canvas": [0, 513]}), "pad canvas must be an integer"),
    (_with(pad={"mode": "constant", "canvas": [float("nan"), 513]}), "pad canvas"),
    (_with(pad={"mode": "constant", "canvas": 513}), r"pad canvas must be \[H, W\]"),
    (_with(pad={"mode": "reflect101", "margin": -1}), "pad margin"),
    (_with(pad="constant"), "pad must be a JSON object"),
    (_with(pad=None, resize={"long_side": 1e9}), "resize long_side"),
    (_with(pad=None, resize={"size": [512, float("inf")]}), "resize height"),
    (_with(pad=None, resize={"size": 512}), "resize must be"),
    (5, "must be a JSON object"),
    ([1, 2, 3], "must be a JSON object"),
], ids=["mean-scalar", "mean-nan", "mean-inf", "mean-300", "mean-str", "canvas-0",
        "canvas-nan", "canvas-scalar", "margin-neg", "pad-str", "long-side-huge",
        "size-inf", "size-scalar", "number", "list"])
def test_a_bad_protocol_is_one_value_error_naming_the_key(d, message):
    with pytest.raises(ValueError, match=message):
        Protocol.from_dict(d)


def test_a_good_protocol_round_trips():
    p = Protocol.from_dict(VALID)
    assert Protocol.from_dict(p.to_dict()) == p
    assert all(math.isfinite(v) for v in p.mean_bgr)
