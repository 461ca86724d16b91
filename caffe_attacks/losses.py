"""Per-pixel softmax cross-entropy on score maps, as Caffe's SoftmaxWithLoss.

The paper's attacks use ``SoftmaxWithLoss`` with ``normalize: false``: the loss
is *summed* over every pixel of the canvas, and pixels carrying the ignore
label contribute neither loss nor gradient.  Computing dL/dscores here and
injecting it with ``net.backward`` means deploy definitions need no loss layer.
"""
import numpy as np

IGNORE_LABEL = 255


def softmax(scores, axis=1):
    """Numerically stable softmax over the class axis.

    scores: (N, C, H, W) float; returns float32 probabilities of the same shape.
    """
    shifted = scores - scores.max(axis=axis, keepdims=True)
    e = np.exp(shifted, dtype=np.float64)
    return (e / e.sum(axis=axis, keepdims=True)).astype(np.float32)


def softmax_cross_entropy(scores, labels, ignore_label=IGNORE_LABEL):
    """Summed per-pixel cross-entropy and its gradient w.r.t. the scores.

    Parameters
    ----------
    scores : (N, C, H, W) float32 logits
    labels : (N, H, W) integer class map; `ignore_label` pixels are skipped
    ignore_label : int or None

    Returns
    -------
    loss : float, sum over non-ignored pixels of -log softmax(scores)[label]
    dscores : (N, C, H, W) float32, softmax - onehot(label), zero at ignored pixels
    """
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    n, c, h, w = scores.shape
    if labels.shape != (n, h, w):
        raise ValueError("labels shape %s does not match scores %s" % (labels.shape, scores.shape))
    valid = np.ones(labels.shape, bool) if ignore_label is None else labels != ignore_label
    lab = np.where(valid, labels, 0).astype(np.int64)
    if valid.any() and (lab[valid].min() < 0 or lab[valid].max() >= c):
        raise ValueError("labels outside [0, %d) that are not the ignore label" % c)

    shifted = scores.astype(np.float64) - scores.max(axis=1, keepdims=True)
    log_z = np.log(np.exp(shifted).sum(axis=1))                       # (N, H, W)
    picked = np.take_along_axis(shifted, lab[:, None], axis=1)[:, 0]  # (N, H, W)
    loss = float(((log_z - picked) * valid).sum())

    prob = np.exp(shifted - log_z[:, None])
    np.put_along_axis(prob, lab[:, None], np.take_along_axis(prob, lab[:, None], axis=1) - 1.0, axis=1)
    prob *= valid[:, None]
    return loss, prob.astype(np.float32)
