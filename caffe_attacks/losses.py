"""Per-pixel softmax cross-entropy on score maps, as Caffe's SoftmaxWithLoss.

The paper's attacks use ``SoftmaxWithLoss`` with ``normalize: false``: the loss
is *summed* over every pixel of the canvas, and pixels carrying the ignore
label contribute neither loss nor gradient.  Computing dL/dscores here and
injecting it with ``net.backward`` means deploy definitions need no loss layer.

The gradient is computed as Caffe computes it, in float32 and in Caffe's order
(``caffe_softmax``): where the top class wins by more than ~16.6 in the
logits the float32 probability is exactly 1 and the gradient entry exactly 0,
and ``np.sign`` keeps that 0 (docs/FIDELITY.md, "Loss gradient in float32").
The engines use Caffe's own layer (caffe_net) or the same arithmetic
(torch_net); this module is the reference for tests and for models that have
no ``loss_gradient`` of their own.
"""
import numpy as np

IGNORE_LABEL = 255


def softmax(scores, axis=1):
    """Numerically stable softmax over the class axis (float64 inside).

    For confidence and entropy; the attack gradient uses ``caffe_softmax``.
    scores: (N, C, H, W) float; returns float32 probabilities of the same shape.
    """
    shifted = scores - scores.max(axis=axis, keepdims=True)
    e = np.exp(shifted, dtype=np.float64)
    return (e / e.sum(axis=axis, keepdims=True)).astype(np.float32)


def caffe_softmax(scores):
    """Softmax over axis 1 in float32, in the order of Caffe's SoftmaxLayer.

    Caffe (CPU and GPU): subtract the per-pixel channel max, exp, sum over the
    channels, divide, every step rounded to float32.  The exp is taken in
    float64 and rounded once, which is glibc's correctly rounded ``expf`` (what
    Caffe calls) in all but rare halfway cases; numpy's own float32 exp
    differs from it by an ulp on some inputs.  The channel sum runs channel by
    channel, as Caffe's GPU kernel; the CPU path sums with a BLAS gemv whose
    blocking may group the additions differently (ulp-level residual,
    docs/FIDELITY.md).

    scores: (N, C, H, W) float32 logits; returns (N, C, H, W) float32.
    """
    s = np.asarray(scores, dtype=np.float32)
    shifted = s - s.max(axis=1, keepdims=True)
    e = np.exp(shifted.astype(np.float64)).astype(np.float32)
    total = e[:, 0].copy()
    for c in range(1, e.shape[1]):
        total += e[:, c]
    return e / total[:, None]


def _checked_labels(scores, labels, ignore_label):
    n, c, h, w = scores.shape
    if labels.shape != (n, h, w):
        raise ValueError("labels shape %s does not match scores %s" % (labels.shape, scores.shape))
    valid = np.ones(labels.shape, bool) if ignore_label is None else labels != ignore_label
    lab = np.where(valid, labels, 0).astype(np.int64)
    if valid.any() and (lab[valid].min() < 0 or lab[valid].max() >= c):
        raise ValueError("labels outside [0, %d) that are not the ignore label" % c)
    return valid, lab


def caffe_loss_gradient(prob, labels, ignore_label=IGNORE_LABEL):
    """dL/dscores of the summed loss from Caffe-order probabilities, as Caffe's backward.

    prob : (N, C, H, W) float32 from ``caffe_softmax``
    labels : (N, H, W) integer class map
    Returns (N, C, H, W) float32: prob, minus 1 at the label, 0 at ignored pixels.
    """
    prob = np.asarray(prob, dtype=np.float32)
    valid, lab = _checked_labels(prob, np.asarray(labels), ignore_label)
    grad = prob.copy()
    picked = np.take_along_axis(grad, lab[:, None], axis=1)
    np.put_along_axis(grad, lab[:, None], picked - np.float32(1), axis=1)
    grad *= valid[:, None]
    return grad


def softmax_cross_entropy(scores, labels, ignore_label=IGNORE_LABEL):
    """Summed per-pixel cross-entropy and its gradient w.r.t. the scores.

    Parameters
    ----------
    scores : (N, C, H, W) float32 logits
    labels : (N, H, W) integer class map; `ignore_label` pixels are skipped
    ignore_label : int or None

    Returns
    -------
    loss : float, sum over non-ignored pixels of -log softmax(scores)[label],
        in float64 (exact log-sum-exp; Caffe's own value clamps p at FLT_MIN)
    dscores : (N, C, H, W) float32, softmax - onehot(label), zero at ignored
        pixels, with Caffe's float32 arithmetic (``caffe_softmax``)
    """
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    valid, lab = _checked_labels(scores, labels, ignore_label)
    shifted = scores.astype(np.float64) - scores.max(axis=1, keepdims=True)
    log_z = np.log(np.exp(shifted).sum(axis=1))                       # (N, H, W)
    picked = np.take_along_axis(shifted, lab[:, None], axis=1)[:, 0]  # (N, H, W)
    loss = float(((log_z - picked) * valid).sum())
    grad = caffe_loss_gradient(caffe_softmax(scores), lab, None)
    grad *= valid[:, None]
    return loss, grad
