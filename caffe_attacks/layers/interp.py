"""``Interp``: bilinear resizing of PSPNet, ICNet and DeepLab v2.

The original (``src/caffe/layers/interp_layer.cpp``, identical in
hszhao/PSPNet and deeplab-public-ver2; sizes in caffe_geometry) first crops
the input by ``-pad_beg`` / ``-pad_end`` (pads are <= 0), then resizes with
align_corners=True bilinear weights computed in float32.  Bilinear resizing is
separable, so forward applies a 2-tap 1-D interpolation along W, then along H,
each as a sparse matrix; backward applies the transposed matrices, the exact
adjoint (every tap's weight sent back to its source).

param_str keys (JSON; presence matters, as ``has_*`` does in the original):
``zoom_factor``, ``shrink_factor``, ``height``, ``width`` (ints >= 1) and
``pad_beg``, ``pad_end`` (ints <= 0, default 0).
"""
import functools

import numpy as np
import scipy.sparse

from caffe_attacks.caffe_geometry import (INTERP_KEYS, check_interp_params, interp_output_size,
                                          parse_param_str)

try:
    import caffe
    _Layer = caffe.Layer
except ImportError:  # the numpy functions below stay usable without pycaffe
    _Layer = object


def axis_weights(n_src, n_out):
    """The two taps of 1-D align_corners bilinear resizing, in float32 as the original.

    Parameters
    ----------
    n_src, n_out : int, source and output lengths along one axis

    Returns
    -------
    i0, i1 : (n_out,) int64 source indices (non-decreasing; i1 = i0 + 1 or i0 at the end)
    w0, w1 : (n_out,) float32 weights, w0 = 1 - lambda, w1 = lambda
    """
    # float32 throughout: the original computes rheight, h1r and lambdas in float.
    ratio = np.float32(n_src - 1) / np.float32(n_out - 1) if n_out > 1 else np.float32(0)
    pos = np.float32(ratio) * np.arange(n_out, dtype=np.float32)
    i0 = pos.astype(np.int64)  # truncation == floor: pos >= 0
    i1 = i0 + (i0 < n_src - 1)
    w1 = (pos - i0.astype(np.float32)).astype(np.float32)
    w0 = (np.float32(1) - w1).astype(np.float32)
    return i0, i1, w0, w1


@functools.lru_cache(maxsize=64)
def axis_matrices(n_src, n_out):
    """The 1-D resize as a sparse (n_out, n_src) float32 matrix, and its transpose.

    Returns (None, None) for n_src == n_out: the original copies, and so do we.
    """
    if n_src == n_out:
        return None, None
    i0, i1, w0, w1 = axis_weights(n_src, n_out)
    rows = np.arange(n_out)
    forward = scipy.sparse.csr_matrix((np.concatenate([w0, w1]), (np.concatenate([rows, rows]),
                                       np.concatenate([i0, i1]))), shape=(n_out, n_src))
    return forward, forward.T.tocsr()


def _apply_planes(x, rows, cols):
    """rows @ plane @ cols.T for every plane of x (..., H, W); None means identity.

    A sparse product per plane: each output pixel reads two taps per axis, so
    this is O(output size), unlike dense matrices, and it keeps the original's
    order of arithmetic (along W first, then along H).
    """
    planes = x.reshape((-1,) + x.shape[-2:])
    out_h = planes.shape[1] if rows is None else rows.shape[0]
    out_w = planes.shape[2] if cols is None else cols.shape[0]
    out = np.empty((planes.shape[0], out_h, out_w), dtype=x.dtype)
    for p, plane in enumerate(planes):
        if cols is not None:
            plane = (cols @ plane.T).T
        out[p] = plane if rows is None else rows @ plane
    return out.reshape(x.shape[:-2] + (out_h, out_w))


def interp_forward(x, out_h, out_w, pad_beg=0, pad_end=0):
    """Crop, then align_corners=True bilinear resize of the last two axes.

    Parameters
    ----------
    x : (..., H, W) float array, e.g. (N, C, H, W)
    out_h, out_w : int, output size
    pad_beg, pad_end : int <= 0, the crop (offset -pad_beg, size H + pad_beg + pad_end)

    Returns
    -------
    y : (..., out_h, out_w), a new array of x's dtype
    """
    h_in, w_in = x.shape[-2:]
    crop = x[..., -pad_beg:h_in + pad_end, -pad_beg:w_in + pad_end]
    rows, _ = axis_matrices(crop.shape[-2], out_h)
    cols, _ = axis_matrices(crop.shape[-1], out_w)
    return _apply_planes(crop, rows, cols)


def interp_backward(dy, in_h, in_w, pad_beg=0, pad_end=0):
    """The transpose of interp_forward: dL/dx from dL/dy.

    Parameters
    ----------
    dy : (..., out_h, out_w) float array
    in_h, in_w : int, the forward input's size (before the crop)
    pad_beg, pad_end : int <= 0, as in forward

    Returns
    -------
    dx : (..., in_h, in_w), zero outside the cropped window
    """
    h_eff, w_eff = in_h + pad_beg + pad_end, in_w + pad_beg + pad_end
    _, rows = axis_matrices(h_eff, dy.shape[-2])
    _, cols = axis_matrices(w_eff, dy.shape[-1])
    g = _apply_planes(dy, rows, cols)
    dx = np.zeros(dy.shape[:-2] + (in_h, in_w), dtype=dy.dtype)
    dx[..., -pad_beg:in_h + pad_end, -pad_beg:in_w + pad_end] = g
    return dx


class Interp(_Layer):
    """Caffe Python layer: one bottom (N, C, H, W) -> one top (N, C, H_out, W_out)."""

    def setup(self, bottom, top):
        if len(bottom) != 1 or len(top) != 1:
            raise ValueError("Interp takes one bottom and one top, got %d and %d"
                             % (len(bottom), len(top)))
        self.params = parse_param_str(self.param_str, INTERP_KEYS, "Interp")
        check_interp_params(self.params)
        self.pad_beg = self.params.get("pad_beg", 0)
        self.pad_end = self.params.get("pad_end", 0)

    def reshape(self, bottom, top):
        n, c, h, w = bottom[0].data.shape
        _, _, h_out, w_out = interp_output_size(h, w, self.params)
        self.in_hw, self.out_hw = (h, w), (h_out, w_out)
        top[0].reshape(n, c, h_out, w_out)

    def forward(self, bottom, top):
        top[0].data[...] = interp_forward(bottom[0].data, *self.out_hw,
                                          pad_beg=self.pad_beg, pad_end=self.pad_end)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = interp_backward(top[0].diff, *self.in_hw,
                                                  pad_beg=self.pad_beg, pad_end=self.pad_end)
