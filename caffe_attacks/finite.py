"""One check that keeps NaN and inf out of the engines and the results.

A non-finite activation is worse than a wrong number in Caffe: max pooling
never selects a NaN, leaves its argmax mask at -1, and its backward then
writes before the start of the bottom diff (heap corruption, "double free or
corruption", exit 134). So the engines refuse a non-finite input before the
forward pass and non-finite scores before any backward pass; the runner adds
the image id to the message.
"""
import numpy as np


class NonFiniteError(ValueError):
    """An input or a net's output holds NaN or inf."""


def require_finite(array, what):
    """Raise NonFiniteError naming `what` unless every value of `array` is finite."""
    array = np.asarray(array)
    if not np.isfinite(array).all():
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        raise NonFiniteError("%s holds %d NaN or infinite value(s) of %d" % (what, bad, array.size))
