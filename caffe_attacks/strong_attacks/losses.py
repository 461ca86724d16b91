"""Per-pixel segmentation losses of the strong attacks, with dL/dscores.

Every loss here is the mean over the label grid of a per-pixel term (as the
SegPGD, CosPGD and SEA references average over pixels), returned per image,
together with its exact gradient w.r.t. the scores, in float64 so that finite
differences can check it. Pixels whose label is ``ignore_label`` add neither
loss nor gradient.

The SegPGD, CosPGD and masked (MCE) losses multiply the cross-entropy by
per-pixel weights that the references compute without gradient
(``stopgrad``): ``weighted_cross_entropy`` takes those weights as constants,
and the ``*_weights`` functions compute them.

Shapes: scores (N, C, h, w) logits; labels (N, h, w) integers; weights
(N, h, w); per-image losses (N,); dscores (N, C, h, w) float64.
"""
import numpy as np

IGNORE_LABEL = 255


def _log_softmax(scores):
    s = np.asarray(scores, np.float64)
    shifted = s - s.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _valid_and_index(labels, num_classes, ignore_label):
    labels = np.asarray(labels)
    valid = labels != ignore_label if ignore_label is not None else np.ones(labels.shape, bool)
    index = np.where(valid, labels, 0).astype(np.int64)
    if valid.any() and (index[valid].min() < 0 or index[valid].max() >= num_classes):
        raise ValueError("labels outside [0, %d) that are not the ignore label" % num_classes)
    return valid, index


def _check_shapes(scores, labels):
    n, _, h, w = np.shape(scores)
    if np.shape(labels) != (n, h, w):
        raise ValueError("labels shape %s does not match scores %s"
                         % (np.shape(labels), np.shape(scores)))


def correct_pixels(scores, labels):
    """(N, h, w) bool: argmax of the scores equals the label."""
    return np.asarray(scores).argmax(axis=1) == np.asarray(labels)


def weighted_cross_entropy(scores, labels, weights, ignore_label=IGNORE_LABEL):
    """mean over pixels of weights * CE, per image, and its gradient.

    The weights are constants (no gradient flows through them).
    Returns (loss (N,), dscores (N, C, h, w) float64) where dscores is the
    gradient of loss.sum().
    """
    _check_shapes(scores, labels)
    logp = _log_softmax(scores)
    n, c, h, w = logp.shape
    valid, index = _valid_and_index(labels, c, ignore_label)
    wt = np.asarray(weights, np.float64) * valid
    ce = -np.take_along_axis(logp, index[:, None], axis=1)[:, 0]
    loss = (wt * ce).reshape(n, -1).sum(axis=1) / (h * w)
    d = np.exp(logp)
    np.put_along_axis(d, index[:, None], np.take_along_axis(d, index[:, None], axis=1) - 1.0,
                      axis=1)
    return loss, d * (wt / (h * w))[:, None]


def cross_entropy(scores, labels, ignore_label=IGNORE_LABEL):
    """Plain per-pixel cross-entropy, mean over pixels, per image."""
    return weighted_cross_entropy(scores, labels, np.ones(np.shape(labels)), ignore_label)


def segpgd_weights(scores, labels, t, steps):
    """SegPGD (Gu et al. 2022): (1 - lambda) on correct pixels, lambda on wrong ones.

    lambda = t / (2 steps) at iteration t = 0 .. steps - 1.
    """
    lam = t / (2.0 * steps)
    return np.where(correct_pixels(scores, labels), 1.0 - lam, lam)


def cospgd_weights(scores, labels, num_classes=None):
    """CosPGD (Agnihotri & Keuper 2024): cos(softmax(z), onehot(y)) = p_y / ||p||_2.

    Labels outside [0, C) (the ignore label) are clamped to C - 1 as the
    reference does; ``weighted_cross_entropy`` zeroes those pixels anyway.
    """
    logp = _log_softmax(scores)
    c = logp.shape[1] if num_classes is None else num_classes
    index = np.clip(np.asarray(labels), None, c - 1).astype(np.int64)
    p = np.exp(logp)
    p_y = np.take_along_axis(p, index[:, None], axis=1)[:, 0]
    return p_y / np.sqrt((p * p).sum(axis=1))


def masked_weights(scores, labels, class_weights=None):
    """MCE: 1 on correctly classified pixels, 0 elsewhere; MCE-Bal: times w[y]."""
    mask = correct_pixels(scores, labels).astype(np.float64)
    if class_weights is None:
        return mask
    cw = np.asarray(class_weights, np.float64)
    index = np.clip(np.asarray(labels), 0, cw.size - 1)
    return mask * cw[index]


def masked_cross_entropy(scores, labels, class_weights=None, ignore_label=IGNORE_LABEL):
    """MCE (or MCE-Bal with class_weights): CE of the correctly classified pixels."""
    return weighted_cross_entropy(scores, labels, masked_weights(scores, labels, class_weights),
                                  ignore_label)


def jensen_shannon(scores, labels, ignore_label=IGNORE_LABEL):
    """JS(p || e_y) = 1/2 KL(p || m) + 1/2 KL(e_y || m), m = (p + e_y) / 2, mean per image.

    With a one-hot e_y the divergence depends on p_y alone:
    JS = 1/2 [(1 - p_y) log 2 + p_y log(2 p_y / (1 + p_y)) + log(2 / (1 + p_y))],
    dJS/dp_y = 1/2 log(p_y / (1 + p_y)), and through the softmax
    dJS/dz_k = dJS/dp_y * p_y (1{k = y} - p_k).
    """
    _check_shapes(scores, labels)
    logp = _log_softmax(scores)
    n, c, h, w = logp.shape
    valid, index = _valid_and_index(labels, c, ignore_label)
    log_py = np.take_along_axis(logp, index[:, None], axis=1)[:, 0]
    py = np.exp(log_py)
    log1p_py = np.log1p(py)
    # p_y log(2 p_y / (1 + p_y)) written with log p_y so that p_y -> 0 stays finite.
    js = 0.5 * ((1.0 - py) * np.log(2.0) + py * (np.log(2.0) + log_py - log1p_py)
                + np.log(2.0) - log1p_py)
    loss = (js * valid).reshape(n, -1).sum(axis=1) / (h * w)
    dpy = 0.5 * (log_py - log1p_py) * py              # dJS/dp_y * p_y
    onehot = np.zeros_like(logp)
    np.put_along_axis(onehot, index[:, None], 1.0, axis=1)
    d = (dpy * valid / (h * w))[:, None] * (onehot - np.exp(logp))
    return loss, d
