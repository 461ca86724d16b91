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
    (_with(mean_bgr=5), "mean_bgr must be"),
    (_with(mean_bgr=[1.0, float("nan"), 3.0]), r"mean_bgr must be .*in \[0, 255\]"),
    (_with(mean_bgr=[1.0, 2.0, float("inf")]), "mean_bgr must be"),
    (_with(mean_bgr=[1.0, 2.0, 300.0]), "mean_bgr must be"),
    (_with(mean_bgr=[1.0, 2.0, "3"]), "mean_bgr must be"),
    (_with(pad={"mode": "constant", "canvas": [0, 513]}), "constant pad"),
    (_with(pad={"mode": "constant", "canvas": [float("nan"), 513]}), "constant pad"),
    (_with(pad={"mode": "constant", "canvas": [100000, 513]}), "constant pad"),
    (_with(pad={"mode": "constant", "canvas": 513}), "constant pad"),
    (_with(pad={"mode": "reflect101", "margin": -1}), "reflect101 pad"),
    (_with(pad="constant"), "pad must be"),
    (_with(pad=None, resize={"long_side": 10 ** 9}), "resize must be"),
    (_with(pad=None, resize={"size": [512, float("inf")]}), "resize must be"),
    (_with(pad=None, resize={"size": 512}), "resize must be"),
    (5, "must be an object"),
    ([1, 2, 3], "must be an object"),
], ids=["mean-scalar", "mean-nan", "mean-inf", "mean-300", "mean-str", "canvas-0",
        "canvas-nan", "canvas-huge", "canvas-scalar", "margin-neg", "pad-str", "long-side-huge",
        "size-inf", "size-scalar", "number", "list"])
def test_a_bad_protocol_is_one_value_error_naming_the_key(d, message):
    with pytest.raises(ValueError, match=message):
        Protocol.from_dict(d)


def test_a_good_protocol_round_trips():
    p = Protocol.from_dict(VALID)
    assert Protocol.from_dict(p.to_dict()) == p
    assert all(math.isfinite(v) for v in p.mean_bgr)


# --- the synthetic-set generator and empty splits ----------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--num-classes", "99"], "--num-classes must be 2..7"),
    (["--num-classes", "1"], "--num-classes must be 2..7"),
    (["--n", "0"], "--n must be at least 1"),
    (["--n", "-3"], "--n must be at least 1"),
    (["--seed", "-1"], "--seed must be >= 0"),
    (["--width", "0"], "--width and --height must be"),
    (["--height", "100000"], "--width and --height must be"),
    (["--val-fraction", "nan"], "--val-fraction must be in"),
    (["--val-fraction", "1.5"], "--val-fraction must be in"),
    (["--jpeg-quality", "101"], "--jpeg-quality must be"),
    (["--void-width", "-2"], "--void-width must be"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_synthetic_cli_refuses_bad_settings_with_one_line(tmp_path, capsys, args, message):
    from caffe_attacks.datasets.synthetic import main
    out = tmp_path / "set"
    assert main(["--format", "voc", "--out", str(out)] + args) == 2
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [captured.err.strip()]
    assert captured.err.startswith("error: ") and message in captured.err
    assert not out.exists()                               # nothing half-written


def test_synthetic_cli_refuses_a_file_as_out(tmp_path, capsys):
    from caffe_attacks.datasets.synthetic import main
    (tmp_path / "f").write_text("x")
    assert main(["--format", "cityscapes", "--out", str(tmp_path / "f"), "--n", "2"]) == 2
    assert "exists and is not a directory" in capsys.readouterr().err


def test_synthetic_cli_writes_a_one_scene_set(tmp_path, capsys):
    from caffe_attacks.datasets import open_dataset
    from caffe_attacks.datasets.synthetic import main
    assert main(["--format", "voc", "--out", str(tmp_path / "s"), "--n", "1"]) == 0
    assert "0 train, 1 val" in capsys.readouterr().out
    assert len(open_dataset("synthetic", tmp_path / "s", split="val")) == 1


def test_an_empty_split_is_a_dataset_error(tmp_path):
    from caffe_attacks.datasets import DatasetError, open_dataset
    from caffe_attacks.datasets.synthetic import write_cityscapes, write_voc
    write_voc(str(tmp_path / "v"), n=3, seed=0)
    (tmp_path / "v" / "ImageSets" / "Segmentation" / "val.txt").write_text("\n")
    with pytest.raises(DatasetError, match="split 'val' has no images"):
        open_dataset("synthetic", tmp_path / "v", split="val")
    assert len(open_dataset("synthetic", tmp_path / "v", split="train")) == 2
    write_cityscapes(str(tmp_path / "c"), n=2, seed=0, size=(32, 16))
    (tmp_path / "c" / "leftImg8bit" / "test").mkdir()
    (tmp_path / "c" / "gtFine" / "test").mkdir()
    with pytest.raises(DatasetError, match="split 'test' has no images"):
        open_dataset("synthetic", tmp_path / "c", split="test")


def test_a_split_whose_every_sample_is_bad_is_an_error_under_skip_bad(tmp_path):
    from caffe_attacks.datasets import DatasetError, open_dataset
    from caffe_attacks.datasets.synthetic import write_voc
    write_voc(str(tmp_path / "v"), n=4, seed=0)
    for jpg in (tmp_path / "v" / "JPEGImages").iterdir():
        jpg.unlink()
    with pytest.raises(DatasetError, match=r"has no images \(1 skipped as bad\)"):
        open_dataset("synthetic", tmp_path / "v", split="val", skip_bad=True)
