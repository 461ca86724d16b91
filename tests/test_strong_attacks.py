"""PGD, SegPGD, CosPGD, APGD and SEA: schedules, projections, closed forms, costs."""
import itertools

import numpy as np
import pytest

from caffe_attacks.attacks import ImageBox
from caffe_attacks.metrics import confusion_matrix, mean_iou
from caffe_attacks.strong_attacks import (PROJECTION_BALL, PROJECTION_BOX, apgd, cospgd,
                                          greedy_miou_selection, pgd, sea, segpgd,
                                          worst_by_accuracy)
from caffe_attacks.strong_attacks import auto_pgd as apgd_module
from caffe_attacks.strong_attacks.auto_pgd import checkpoints, expected_passes, halve_step
from tests.models import LinearPixelModel, TanhConvModel

PGD_FAMILY = [pgd, segpgd, cospgd]
MEAN = [104.0, 117.0, 123.0]


def _x(shape, seed=0, scale=40.0):
    return np.random.default_rng(seed).normal(0, scale, shape).astype(np.float32)


class Recorder:
    """Wraps a model and keeps every input it is asked about."""

    def __init__(self, model):
        self.model, self.inputs = model, []

    def forward(self, x):
        self.inputs.append(np.array(x))
        return self.model.forward(x)

    def input_gradient(self, x, dscores):
        self.inputs.append(np.array(x))
        return self.model.input_gradient(x, dscores)


# --- APGD schedule and step-size rule, on hand-made numbers ---

def test_checkpoints_by_hand():
    # N = 100: k = 22, then shrinking by 3 down to 6.
    assert checkpoints(100) == {21: 22, 40: 19, 56: 16, 69: 13, 79: 10, 86: 7, 92: 6, 98: 6}
    # SEA's first stage of 300 iterations (90): k = 19, shrink 2, floor 5.
    assert checkpoints(90) == {18: 19, 35: 17, 50: 15, 63: 13, 74: 11, 83: 9}
    # Tiny budgets: every length is at least 1.
    assert checkpoints(3) == {0: 1, 1: 1, 2: 1}


def test_halving_rule_on_hand_made_loss_sequences():
    k = 4
    # image 0: rises in 4/4 steps; image 1: 3/4 (<= 0.75 k); image 2: 0/4
    window = np.array([[0, 5, 9], [1, 6, 8], [2, 7, 7], [3, 5, 6], [4, 8, 5]], float)
    assert window.shape == (k + 1, 3)
    best = np.array([4.0, 8.0, 9.0])
    halve = halve_step(window, best, best_at_last_check=best - 1,
                       halved_last_check=np.array([False, False, False]))
    np.testing.assert_array_equal(halve, [False, True, True])
    # No improvement since the last check halves only if the last check did not.
    halve = halve_step(window[:, :1].repeat(2, 1), np.array([4.0, 4.0]),
                       best_at_last_check=np.array([4.0, 4.0]),
                       halved_last_check=np.array([False, True]))
    np.testing.assert_array_equal(halve, [True, False])


def test_stage_plan_and_passes_of_the_sea_schedule():
    assert apgd_module.stage_plan(300) == [(90, 2.0), (90, 1.5), (120, 1.0)]
    assert expected_passes(300) == (304, 300)
    assert expected_passes(300, clean_labels=False) == (303, 300)
    assert expected_passes(10, progressive=False) == (12, 10)


def test_apgd_checks_the_step_at_every_checkpoint(monkeypatch):
    calls = []
    real = apgd_module.halve_step

    def spy(window, *args):
        calls.append(window.shape[0] - 1)
        return real(window, *args)

    monkeypatch.setattr(apgd_module, "halve_step", spy)
    apgd(TanhConvModel(seed=1), _x((1, 3, 6, 6)), 4, loss="ce", iterations=100,
         clip_to_image=None)
    expect = [k for n, _ in apgd_module.stage_plan(100) for k in checkpoints(n).values()]
    assert calls == expect


# --- projection invariants, determinism, costs ---

def _attack(name, model, x, eps, box, **kw):
    if name in ("pgd", "segpgd", "cospgd"):
        return {"pgd": pgd, "segpgd": segpgd, "cospgd": cospgd}[name](
            model, x, eps, steps=8, restarts=2, clip_to_image=box, **kw)
    return apgd(model, x, eps, loss=name, iterations=20, class_weights=np.full(4, 0.25),
                clip_to_image=box, **kw)


ALL = ["pgd", "segpgd", "cospgd", "ce", "mce", "mce_bal", "js"]


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("with_box", [False, True], ids=["ball", "ball+box"])
def test_every_iterate_stays_in_the_ball_and_the_box(name, with_box):
    box = ImageBox.from_mean(MEAN) if with_box else None
    rng = np.random.default_rng(3)
    # a clean image at the box's edges, so the box binds
    img = 255.0 * rng.integers(0, 2, (2, 3, 6, 5)).astype(np.float32)
    x = img - np.asarray(MEAN, np.float32).reshape(1, 3, 1, 1)
    eps = 6.0
    rec = Recorder(TanhConvModel(seed=2))
    result = _attack(name, rec, x, eps, box)
    radius = eps if name in ("pgd", "segpgd", "cospgd") else 2 * eps   # APGD's first stage
    for xi in rec.inputs:
        assert np.abs(xi - x).max() <= radius + 1e-3
        if box is not None:
            assert np.all(xi >= box.lo - 1e-3) and np.all(xi <= box.hi + 1e-3)
    assert np.abs(result.x_adv - x).max() <= eps + 1e-3
    assert result.x_adv.dtype == np.float32 and result.x_adv.shape == x.shape
    assert result.projection == (PROJECTION_BOX if with_box else PROJECTION_BALL)
    if box is None:       # without the box, some pixel leaves [0, 255]
        valid = ImageBox.from_mean(MEAN)
        assert np.any(result.x_adv < valid.lo) or np.any(result.x_adv > valid.hi)


@pytest.mark.parametrize("attack", PGD_FAMILY, ids=lambda f: f.__name__)
def test_pgd_family_is_deterministic_for_a_seed(attack):
    model, x = TanhConvModel(seed=4), _x((2, 3, 5, 5), seed=5)
    a = attack(model, x, 4, steps=5, seed=7, clip_to_image=None)
    b = attack(model, x, 4, steps=5, seed=7, clip_to_image=None)
    c = attack(model, x, 4, steps=5, seed=8, clip_to_image=None)
    np.testing.assert_array_equal(a.x_adv, b.x_adv)
    assert not np.array_equal(a.x_adv, c.x_adv)
    assert a.seed == 7
    g1, g2 = np.random.default_rng(9), np.random.default_rng(9)
    np.testing.assert_array_equal(attack(model, x, 4, steps=5, seed=g1, clip_to_image=None).x_adv,
                                  attack(model, x, 4, steps=5, seed=g2, clip_to_image=None).x_adv)


def test_apgd_and_sea_are_deterministic():
    model, x = TanhConvModel(seed=4), _x((2, 3, 5, 5), seed=5)
    cw = np.full(4, 0.25)
    a, _ = sea(model, x, 4, iterations=12, class_weights=cw, clip_to_image=None)
    b, _ = sea(model, x, 4, iterations=12, class_weights=cw, clip_to_image=None)
    np.testing.assert_array_equal(a.x_adv, b.x_adv)


@pytest.mark.parametrize("attack", PGD_FAMILY, ids=lambda f: f.__name__)
@pytest.mark.parametrize("steps,restarts,gt", [(1, 1, False), (7, 1, False), (5, 3, False),
                                               (4, 2, True)])
def test_pgd_family_pass_counts_equal_the_schedule(attack, steps, restarts, gt):
    model = LinearPixelModel(np.random.default_rng(0).normal(size=(3, 3)), np.zeros(3))
    x = _x((2, 3, 4, 4))
    labels = np.zeros((2, 4, 4), int) if gt else None
    r = attack(model, x, 2, steps=steps, restarts=restarts, labels=labels, clip_to_image=None)
    forward = (0 if gt else 1) + restarts * steps + (restarts if restarts > 1 else 0)
    assert (r.n_forward, r.n_backward) == (forward, restarts * steps)
    assert (model.forwards, model.gradients) == (forward, restarts * steps)
    assert r.label_source == ("ground_truth" if gt else "prediction")


@pytest.mark.parametrize("iterations,progressive", [(300, True), (10, True), (3, True),
                                                    (7, False)])
@pytest.mark.parametrize("loss", ["mce", "js"])
def test_apgd_pass_counts_equal_the_schedule(iterations, progressive, loss):
    model = LinearPixelModel(np.random.default_rng(1).normal(size=(3, 3)), np.zeros(3))
    r = apgd(model, _x((1, 3, 4, 4), scale=2.0), 2, loss=loss, iterations=iterations,
             progressive=progressive, clip_to_image=None)
    assert (r.n_forward, r.n_backward) == expected_passes(iterations, progressive)
    assert (model.forwards, model.gradients) == expected_passes(iterations, progressive)


def test_sea_passes_match_the_reference_budget():
    """300 iterations: 3 x 303 forward (+1 for the clean labels) and 3 x 300 backward."""
    model = LinearPixelModel(np.random.default_rng(2).normal(size=(3, 3)), np.zeros(3))
    combined, members = sea(model, _x((1, 3, 4, 4), scale=2.0), 1, iterations=300,
                            class_weights=np.full(3, 1 / 3), clip_to_image=None)
    assert (combined.n_forward, combined.n_backward) == (910, 900)
    assert (model.forwards, model.gradients) == (910, 900)
    assert all((m.n_forward, m.n_backward) == (303, 300) for m in members.values())


def test_eps_zero_is_clean_and_free():
    model, x = TanhConvModel(), _x((1, 3, 4, 4))
    for r in [pgd(model, x, 0, clip_to_image=None), apgd(model, x, 0, clip_to_image=None)]:
        np.testing.assert_array_equal(r.x_adv, x)
        assert (r.n_forward, r.n_backward) == (0, 0)


# --- closed forms on a linear two-class model ---

@pytest.mark.parametrize("attack", PGD_FAMILY, ids=lambda f: f.__name__)
@pytest.mark.parametrize("shape", [(1, 3, 6, 7), (3, 3, 4, 4)], ids=str)
def test_pgd_family_reaches_the_corner_of_the_ball_on_a_linear_model(attack, shape):
    """Per pixel, CE's gradient sign is sign(w_other - w_label), constant: enough
    steps from any start end at x + eps sign(w_other - w_label)."""
    rng = np.random.default_rng(11)
    W = rng.normal(0, 1, (2, 3))
    model = LinearPixelModel(W, np.zeros(2))
    x = _x(shape, seed=12, scale=0.5)     # small margins: no saturated pixel
    label = model.forward(x).argmax(1)
    eps = 2.0
    r = attack(model, x, eps, steps=12, alpha=0.5, clip_to_image=None)
    direction = np.sign(W[1 - label] - W[label])           # (N, h, w, 3)
    np.testing.assert_allclose(r.x_adv, x + eps * np.moveaxis(direction, -1, 1), atol=1e-4)


def test_apgd_flips_exactly_the_pixels_a_closed_form_allows():
    """Linear two-class model: a pixel can flip iff margin < eps ||w1 - w0||_1."""
    rng = np.random.default_rng(13)
    W = rng.normal(0, 1, (2, 3))
    model = LinearPixelModel(W, rng.normal(0, 1, 2))
    x = _x((2, 3, 8, 8), seed=14, scale=3.0)
    s = model.forward(x).astype(np.float64)
    eps = 1.5
    margin, bound = np.abs(s[:, 1] - s[:, 0]), eps * np.abs(W[1] - W[0]).sum()
    clear = np.abs(margin - bound) > 1e-3 * bound
    for loss in ("ce", "mce", "js"):
        r = apgd(model, x, eps, loss=loss, iterations=30, clip_to_image=None)
        flipped = model.forward(r.x_adv).argmax(1) != s.argmax(1)
        np.testing.assert_array_equal(flipped[clear], (margin < bound)[clear])
        np.testing.assert_allclose(r.accuracy, 1 - flipped.reshape(2, -1).mean(1))


def test_restarts_keep_the_per_image_best():
    model, x = TanhConvModel(seed=21), _x((3, 3, 6, 6), seed=22)
    one = [pgd(model, x, 3, steps=3, seed=np.random.default_rng(5), clip_to_image=None)]
    best = pgd(model, x, 3, steps=3, restarts=4, seed=5, clip_to_image=None)
    label = model.forward(x).argmax(1)
    acc = (model.forward(best.x_adv).argmax(1) == label).reshape(3, -1).mean(1)
    np.testing.assert_allclose(best.accuracy, acc)
    acc_first = (model.forward(one[0].x_adv).argmax(1) == label).reshape(3, -1).mean(1)
    assert np.all(acc <= acc_first)


# --- SEA selection over confusion matrices ---

def _member_cms(m, n, c, seed):
    rng = np.random.default_rng(seed)
    cms = np.zeros((m, n, c, c), np.int64)
    for a, b in np.ndindex(m, n):
        gt = rng.integers(0, c, 60)
        pred = np.where(rng.random(60) < rng.random(), gt, rng.integers(0, c, 60))
        cms[a, b] = confusion_matrix(gt, pred, c)
    return cms


def test_worst_by_accuracy_is_the_per_image_minimum():
    cms = _member_cms(3, 6, 4, 0)
    acc = np.trace(cms, axis1=2, axis2=3) / cms.sum((2, 3))
    np.testing.assert_array_equal(worst_by_accuracy(cms), acc.argmin(0))


@pytest.mark.parametrize("seed", range(4))
def test_greedy_selection_against_brute_force(seed):
    cms = _member_cms(3, 5, 4, seed)
    sel = greedy_miou_selection(cms, seed=seed)

    def miou(choice):
        return mean_iou(sum(cms[c, n] for n, c in enumerate(choice)))

    assert sel.miou == pytest.approx(miou(sel.choice))
    assert sel.miou <= sel.start_miou == pytest.approx(miou([0] * 5))
    brute = min(miou(ch) for ch in itertools.product(range(3), repeat=5))
    assert brute <= sel.miou + 1e-12
    # a local minimum: no single image switch lowers the mIoU further
    for n, m in itertools.product(range(5), range(3)):
        alt = sel.choice.copy()
        alt[n] = m
        assert miou(alt) >= sel.miou - 1e-12
    again = greedy_miou_selection(cms, seed=seed)
    np.testing.assert_array_equal(again.choice, sel.choice)
    assert sel.rounds >= 1 and sel.seed == seed


def test_greedy_selection_stops_at_max_rounds():
    cms = _member_cms(3, 8, 4, 9)
    assert greedy_miou_selection(cms, max_rounds=1).rounds == 1


def test_sea_takes_the_member_of_lowest_accuracy_per_image():
    model, x = TanhConvModel(seed=31), _x((3, 3, 6, 6), seed=32)
    combined, members = sea(model, x, 4, iterations=15, class_weights=np.full(4, 0.25),
                            clip_to_image=None)
    label = model.forward(x).argmax(1)
    accs = np.stack([m.accuracy for m in members.values()])
    np.testing.assert_allclose(combined.accuracy, accs.min(0))
    measured = (model.forward(combined.x_adv).argmax(1) == label).reshape(3, -1).mean(1)
    np.testing.assert_allclose(combined.accuracy, measured)


def test_pixel_accuracy_counts_only_non_void_pixels():
    from caffe_attacks.strong_attacks.common import per_image_accuracy
    rng = np.random.default_rng(3)
    scores = rng.normal(size=(3, 4, 5, 6))
    labels = rng.integers(0, 4, size=(3, 5, 6))
    labels[rng.random(labels.shape) < 0.3] = 255
    labels[2] = 255                      # an image with no labelled pixel: accuracy 0
    want = []
    for n in range(3):
        cells = [(i, j) for i in range(5) for j in range(6) if labels[n, i, j] != 255]
        hits = sum(scores[n, :, i, j].argmax() == labels[n, i, j] for i, j in cells)
        want.append(hits / len(cells) if cells else 0.0)
    np.testing.assert_allclose(per_image_accuracy(scores, labels), want)
