"""``Upsample``: max-unpooling of SegNet and ENet (``upsample_layer.cpp`` of
alexgkendall/caffe-segnet and TimoSaemann/caffe-enet).

Bottoms are [data, mask], both (N, C, h, w); the mask is the second top of a
MAX Pooling layer and holds, per cell, the flat index ``row * W_out + col`` of
the maximum in the pre-pooling plane.  The output is zero except that each
input cell is written to the place its mask names.  When two cells name the
same place (possible only with overlapping pooling windows) the later one, in
row-major order, wins, as in the original's sequential loop; the gradient then
flows to that cell only, which is the derivative of what forward computed.

param_str keys (JSON; defaults as caffe.proto's UpsampleParameter):
``scale`` (2), ``scale_h``, ``scale_w`` (ints > 1), ``pad_out_h``, ``pad_out_w``
(bools, default false, only with scale 2), ``upsample_h``, ``upsample_w``
(ints > 1; when both are given they fix the output size).
"""
import numpy as np

from caffe_attacks.caffe_geometry import UPSAMPLE_KEYS, parse_param_str, upsample_output_size

try:
    import caffe
    _Layer = caffe.Layer
except ImportError:  # the numpy functions below stay usable without pycaffe
    _Layer = object


def _targets(mask, out_h, out_w):
    """Flat output positions of every input cell, and which cells survive.

    Parameters
    ----------
    mask : (N, C, h, w) float array of plane indices
    out_h, out_w : int, output plane size

    Returns
    -------
    where : (N*C*h*w,) int64 flat indices into the (N, C, out_h, out_w) output
    wins : (N*C*h*w,) bool, False for a cell overwritten by a later one
    """
    n, c, h, w = mask.shape
    plane = out_h * out_w
    # truncation, as the original's static_cast<int>; masks hold exact integers
    idx = mask.reshape(n * c, h * w).astype(np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= plane):
        raise ValueError("Upsample mask index out of range [0, %d): check that the scale matches "
                         "the pooling layer that made the mask" % plane)
    where = (idx + np.arange(n * c, dtype=np.int64)[:, None] * plane).reshape(-1)
    order = np.arange(where.size, dtype=np.int64)
    owner = np.full(n * c * plane, -1, dtype=np.int64)
    owner[where] = order
    wins = owner[where] == order
    if not wins.all():
        # Repeated targets: numpy leaves the winner of a repeated fancy assignment
        # unspecified, so find the last writer explicitly (ufunc.at runs in order).
        owner[:] = -1
        np.maximum.at(owner, where, order)
        wins = owner[where] == order
    return where, wins


def unpool_forward(x, mask, out_h, out_w):
    """Max-unpooling: y[n, c].flat[mask[n, c, i, j]] = x[n, c, i, j], zero elsewhere.

    Parameters
    ----------
    x : (N, C, h, w) float array
    mask : (N, C, h, w) float array of flat indices into an (out_h, out_w) plane
    out_h, out_w : int

    Returns
    -------
    y : (N, C, out_h, out_w) array of x's dtype
    """
    if mask.shape != x.shape:
        raise ValueError("Upsample data %s and mask %s shapes differ" % (x.shape, mask.shape))
    where, wins = _targets(mask, out_h, out_w)
    y = np.zeros(x.shape[:2] + (out_h, out_w), dtype=x.dtype)
    y.reshape(-1)[where[wins]] = x.reshape(-1)[wins]
    return y


def unpool_backward(dy, mask):
    """dL/dx of unpool_forward: dx[n, c, i, j] = dy[n, c].flat[mask[n, c, i, j]] for survivors.

    dy : (N, C, out_h, out_w); mask : (N, C, h, w). Returns dx : (N, C, h, w).
    """
    where, wins = _targets(mask, *dy.shape[2:])
    dx = dy.reshape(-1)[where]
    dx[~wins] = 0
    return dx.reshape(mask.shape)


class Upsample(_Layer):
    """Caffe Python layer: bottoms [data, mask] (N, C, h, w) -> top (N, C, H, W). No blobs."""

    def setup(self, bottom, top):
        if len(bottom) != 2 or len(top) != 1:
            raise ValueError("Upsample takes bottoms [data, mask] and one top, got %d and %d"
                             % (len(bottom), len(top)))
        self.params = parse_param_str(self.param_str, UPSAMPLE_KEYS, "Upsample")
        upsample_output_size(2, 2, self.params)  # fail at set-up on bad keys

    def reshape(self, bottom, top):
        data, mask = bottom[0].data, bottom[1].data
        if data.ndim != 4 or data.shape != mask.shape:
            raise ValueError("Upsample needs 4-D data and mask of one shape, got %s and %s"
                             % (data.shape, mask.shape))
        # recomputed on every reshape, so inputs of any size work
        self.out_hw = upsample_output_size(data.shape[2], data.shape[3], self.params)
        top[0].reshape(data.shape[0], data.shape[1], *self.out_hw)

    def forward(self, bottom, top):
        top[0].data[...] = unpool_forward(bottom[0].data, bottom[1].data, *self.out_hw)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = unpool_backward(top[0].diff, bottom[1].data)
        if propagate_down[1]:
            bottom[1].diff[...] = 0  # the mask is an index, not a value: no gradient
