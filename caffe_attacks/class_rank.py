"""Per-pixel class choices of the paper authors' attack code: label and target.

The authors read the blob named by the model's ``target_blob`` (the logits, or
the Softmax output for the Dilation nets), take the label as its argmax and
the least-likely target as position C-1 of ``np.argsort(-blob, axis=0)``
(numpy's default sort). Where several classes share the smallest value
(probabilities that underflowed to 0) the target depends on how that sort
orders ties. numpy's scalar introsort, the one numpy used up to 1.24 and
still uses on CPUs without AVX2, orders them one way; numpy >= 1.26 on
AVX-512 CPUs and >= 2.0 on AVX2 CPUs dispatch float32 argsort to SIMD kernels
that order them another (docs/FIDELITY.md, "Least-likely target"). The
project fixes the scalar introsort's order, the authors' (numpy of 2018), on
every machine: numpy never dispatches long double sorts, and float32 ->
long double is exact and keeps the order.
"""
import numpy as np

TARGET_BLOBS = ("logits", "probabilities")


def predicted_labels(values):
    """Per-pixel argmax (first index among equals): (N, C, h, w) -> (N, h, w) int64."""
    return np.asarray(values).argmax(axis=1)


def least_likely_labels(values):
    """Position C-1 of numpy's scalar introsort of -values along the class axis.

    values : (N, C, h, w) float32 logits or probabilities
    Returns (N, h, w) int64. Where the smallest value is unique this is its
    index; where it is shared, the class the scalar introsort puts last.
    """
    values = np.asarray(values, dtype=np.float32)
    target = values.argmin(axis=1)
    smallest = np.take_along_axis(values, target[:, None], axis=1)
    tied = (values == smallest).sum(axis=1) > 1
    if tied.any():
        n_idx, h_idx, w_idx = np.nonzero(tied)
        columns = values[n_idx, :, h_idx, w_idx]          # (K, C)
        order = np.argsort(-columns.astype(np.longdouble), axis=1, kind="quicksort")
        target[n_idx, h_idx, w_idx] = order[:, -1]
    return target
