"""Metrics against brute-force set computations and a hand-worked case."""
import numpy as np
import pytest

from caffe_attacks.metrics import (confidence_entropy_sums, confusion_matrix, iou_ratio,
                                   mean_iou, per_class_iou, pixel_accuracy)


def _brute_force_miou(gts, preds, num_classes):
    ious = []
    for c in range(num_classes):
        inter = union = 0
        for gt, pred in zip(gts, preds):
            valid = gt != 255
            g, p = (gt == c) & valid, (pred == c) & valid
            inter += int(np.sum(g & p))
            union += int(np.sum(g | p))
        if union:
            ious.append(inter / union)
    return np.mean(ious)


@pytest.mark.parametrize("seed", range(5))
def test_dataset_miou_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    c = 6
    gts, preds = [], []
    cm = np.zeros((c, c), np.int64)
    for _ in range(4):
        shape = tuple(rng.integers(3, 20, 2))
        gt = rng.integers(0, c - 1, shape)       # class c-1 never in the ground truth
        gt[rng.random(shape) < 0.2] = 255
        pred = rng.integers(0, c, shape)
        gts.append(gt)
        preds.append(pred)
        cm += confusion_matrix(gt, pred, c)
    assert cm.dtype == np.int64
    assert mean_iou(cm) == pytest.approx(_brute_force_miou(gts, preds, c), abs=1e-12)
    assert per_class_iou(cm)[c - 1] == 0.0


def test_hand_worked_case_with_void_and_absent_but_predicted_class():
    gt = np.array([[0, 0, 1, 255],
                   [0, 1, 1, 255]])
    pred = np.array([[0, 2, 1, 1],
                     [0, 1, 0, 2]])
    cm = confusion_matrix(gt, pred, 4)
    # class 0: TP 2, FP 1 (gt 1 -> 0), FN 1 (-> 2): 2/4
    # class 1: TP 2, FP 0, FN 1: 2/3; class 2: predicted once, never true: 0
    # class 3: absent everywhere: left out of the mean
    iou = per_class_iou(cm)
    np.testing.assert_allclose(iou[:3], [0.5, 2 / 3, 0.0])
    assert np.isnan(iou[3])
    assert mean_iou(cm) == pytest.approx((0.5 + 2 / 3 + 0) / 3)
    assert pixel_accuracy(cm) == pytest.approx(4 / 6)
    assert cm.sum() == 6


def test_errors_and_ratio():
    with pytest.raises(ValueError):
        confusion_matrix(np.array([0, 5]), np.array([0, 1]), 3)
    with pytest.raises(ValueError):
        confusion_matrix(np.array([0, 1]), np.array([0, 1, 2]), 3)
    assert iou_ratio(0.3, 0.6) == pytest.approx(0.5)


def test_confidence_and_entropy():
    prob = np.zeros((3, 1, 2))
    prob[:, 0, 0] = [1, 0, 0]
    prob[:, 0, 1] = [1 / 3, 1 / 3, 1 / 3]
    conf, ent, n = confidence_entropy_sums(prob)
    assert n == 2
    assert conf == pytest.approx(1 + 1 / 3)
    assert ent == pytest.approx(np.log(3))
    conf, ent, n = confidence_entropy_sums(prob, mask=np.array([[True, False]]))
    assert (conf, ent, n) == (pytest.approx(1.0), pytest.approx(0.0), 1)
