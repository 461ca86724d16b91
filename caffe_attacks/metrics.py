"""Segmentation metrics: one confusion matrix per dataset, IoU from it.

Conventions (FCN's score.py, Cityscapes, mmsegmentation): ground-truth label
255 is ignored; per-class IoU = TP / (TP + FP + FN); a class predicted but
absent from the ground truth has IoU 0; a class absent from both is left out
of the mean.
"""
import numpy as np

IGNORE_LABEL = 255


def confusion_matrix(gt, pred, num_classes, ignore_label=IGNORE_LABEL):
    """(C, C) int64 counts, rows = ground truth, columns = prediction.

    gt, pred: integer arrays of one shape; gt pixels equal to ignore_label are
    skipped. A prediction outside [0, C) is an error (it cannot be scored).
    """
    gt = np.asarray(gt).ravel()
    pred = np.asarray(pred).ravel()
    if gt.shape != pred.shape:
        raise ValueError("gt and prediction differ in size: %d vs %d" % (gt.size, pred.size))
    keep = gt != ignore_label
    gt, pred = gt[keep].astype(np.int64), pred[keep].astype(np.int64)
    if gt.size and (gt.min() < 0 or gt.max() >= num_classes):
        raise ValueError("ground-truth label outside [0, %d) and not %d"
                         % (num_classes, ignore_label))
    if pred.size and (pred.min() < 0 or pred.max() >= num_classes):
        raise ValueError("prediction outside [0, %d)" % num_classes)
    return np.bincount(num_classes * gt + pred,
                       minlength=num_classes ** 2).reshape(num_classes, num_classes)


def per_class_iou(cm):
    """IoU per class (C,) float64; NaN for classes absent from gt and prediction."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)


def mean_iou(cm):
    """Mean of per_class_iou over the classes present in gt or prediction."""
    iou = per_class_iou(cm)
    return float(np.nanmean(iou)) if np.any(~np.isnan(iou)) else float("nan")


def pixel_accuracy(cm):
    cm = np.asarray(cm)
    total = cm.sum()
    return float(np.trace(cm) / total) if total else float("nan")


def iou_ratio(adversarial_miou, clean_miou):
    """IoU Ratio = mIoU under attack / clean mIoU (the paper's robustness measure)."""
    return float(adversarial_miou) / float(clean_miou)


def confidence_entropy_sums(prob, mask=None):
    """Per-pixel confidence and entropy, summed, for dataset-level means.

    prob: (C, H, W) softmax probabilities on the label grid.
    mask: optional (H, W) bool, pixels to count (default all).
    Returns (sum of max_c p, sum of -sum_c p log p, number of pixels); the
    dataset mean is the sum over images divided by the total count.
    """
    prob = np.asarray(prob, dtype=np.float64)
    conf = prob.max(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.where(prob > 0, prob * np.log(prob), 0.0).sum(axis=0)
    if mask is not None:
        conf, ent = conf[mask], ent[mask]
    return float(conf.sum()), float(ent.sum()), int(conf.size)
