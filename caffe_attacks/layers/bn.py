"""The two inference-time ``BN`` layers of the zoo's forks (``bn_layer.cpp`` of
hszhao/PSPNet, alexgkendall/caffe-segnet and TimoSaemann/caffe-enet).

``PSPBN`` is hszhao/PSPNet's ``BN`` (also ICNet's bnnomerge nets): four blobs
slope, bias, moving mean, moving variance, each (1, C, 1, 1), and at test time
(or ``frozen: true``, as in every deploy) ``y = slope (x - mean) / sqrt(var + eps) + bias``.

``ScaleShiftBN`` is caffe-segnet's / caffe-enet's ``BN`` in ``bn_mode: INFERENCE``:
two blobs scale, shift, each (1, C, 1, 1), ``y = scale x + shift``; the data
statistics were folded into them offline.

Both are per-channel affine maps of the input, so dL/dx = dL/dy times the
per-channel factor.  Their blobs are frozen: no parameter gradient is computed
and the parameter diffs are left untouched (zero).
"""
import numpy as np

from caffe_attacks.caffe_geometry import parse_param_str

try:
    import caffe
    _Layer = caffe.Layer
except ImportError:  # the numpy functions below stay usable without pycaffe
    _Layer = object

PSP_BN_EPS = 1e-5


def _per_channel(v, ndim):
    """A (C,) or (1, C, 1, 1) vector shaped to broadcast along axis 1 of ndim dims."""
    v = np.asarray(v).reshape(-1)
    return v.reshape((1, v.size) + (1,) * (ndim - 2))


def psp_bn_forward(x, slope, bias, mean, var, eps=PSP_BN_EPS):
    """y = slope * (x - mean) / sqrt(var + eps) + bias per channel.

    Parameters
    ----------
    x : (N, C, ...) float array
    slope, bias, mean, var : (C,) or (1, C, 1, 1) arrays
    eps : float, added to the variance (the original's default 1e-5)

    Returns
    -------
    y : array of x's shape and dtype
    """
    # the divide is done once per channel, not per element (maps reach 2048 x 90 x 90)
    gain = _per_channel(slope, x.ndim) / np.sqrt(_per_channel(var, x.ndim) + eps)
    y = (x - _per_channel(mean, x.ndim)) * gain + _per_channel(bias, x.ndim)
    return y.astype(x.dtype, copy=False)


def psp_bn_backward(dy, slope, var, eps=PSP_BN_EPS):
    """dL/dx = dL/dy * slope / sqrt(var + eps) (statistics are constants at inference).

    dy : (N, C, ...) float array; slope, var : (C,) or (1, C, 1, 1)
    """
    gain = _per_channel(slope, dy.ndim) / np.sqrt(_per_channel(var, dy.ndim) + eps)
    return (dy * gain).astype(dy.dtype, copy=False)


def scale_shift_forward(x, scale, shift):
    """y = scale * x + shift per channel (SegNet/ENet BN, INFERENCE mode).

    x : (N, C, ...) float array; scale, shift : (C,) or (1, C, 1, 1)
    """
    y = _per_channel(scale, x.ndim) * x + _per_channel(shift, x.ndim)
    return y.astype(x.dtype, copy=False)


def scale_shift_backward(dy, scale):
    """dL/dx = dL/dy * scale per channel."""
    return (dy * _per_channel(scale, dy.ndim)).astype(dy.dtype, copy=False)


def _check_single(name, bottom, top):
    if len(bottom) != 1 or len(top) != 1:
        raise ValueError("%s takes one bottom and one top, got %d and %d"
                         % (name, len(bottom), len(top)))
    if bottom[0].data.ndim < 2:
        raise ValueError("%s needs a bottom with a channel axis, got shape %s"
                         % (name, bottom[0].data.shape))


def _add_channel_blobs(layer, name, channels, initial_values):
    """Add (1, C, 1, 1) blobs with constant initial values, unless already present.

    Caffe calls setup once per net; the blobs are then filled by copy_from.
    """
    if len(layer.blobs) == 0:
        for value in initial_values:
            layer.blobs.add_blob(1, channels, 1, 1)
            layer.blobs[len(layer.blobs) - 1].data[...] = value
    if len(layer.blobs) != len(initial_values):
        raise ValueError("%s expects %d blobs, has %d" % (name, len(initial_values), len(layer.blobs)))


def _check_channels(name, layer, bottom):
    channels = bottom[0].data.shape[1]
    if layer.blobs[0].data.size != channels:
        raise ValueError("%s blobs hold %d channels but the bottom has %d"
                         % (name, layer.blobs[0].data.size, channels))


class PSPBN(_Layer):
    """Caffe Python layer for PSPNet/ICNet ``BN``; may run in place (bottom == top).

    Blobs: [0] slope, [1] bias, [2] mean, [3] var, each (1, C, 1, 1).  Before
    copy_from they hold slope 1, bias 0, mean 0, var 1, so that an unloaded net
    is the identity up to eps rather than a x316 gain per layer.
    param_str: ``{"eps": 1e-5}`` (optional).
    """

    def setup(self, bottom, top):
        _check_single("PSPBN", bottom, top)
        params = parse_param_str(self.param_str, {"eps": float}, "PSPBN")
        self.eps = params.get("eps", PSP_BN_EPS)
        if self.eps < 0:
            raise ValueError("PSPBN eps must be >= 0, got %g" % self.eps)
        _add_channel_blobs(self, "PSPBN", bottom[0].data.shape[1], (1.0, 0.0, 0.0, 1.0))

    def reshape(self, bottom, top):
        _check_channels("PSPBN", self, bottom)
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        b = self.blobs
        top[0].data[...] = psp_bn_forward(bottom[0].data, b[0].data, b[1].data, b[2].data,
                                          b[3].data, self.eps)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = psp_bn_backward(top[0].diff, self.blobs[0].data,
                                                  self.blobs[3].data, self.eps)


class ScaleShiftBN(_Layer):
    """Caffe Python layer for SegNet/ENet ``BN`` (INFERENCE); may run in place.

    Blobs: [0] scale, [1] shift, each (1, C, 1, 1); before copy_from they hold
    the deploy fillers' constants, scale 1 and shift 0.  param_str: none.
    """

    def setup(self, bottom, top):
        _check_single("ScaleShiftBN", bottom, top)
        parse_param_str(self.param_str, {}, "ScaleShiftBN")
        _add_channel_blobs(self, "ScaleShiftBN", bottom[0].data.shape[1], (1.0, 0.0))

    def reshape(self, bottom, top):
        _check_channels("ScaleShiftBN", self, bottom)
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = scale_shift_forward(bottom[0].data, self.blobs[0].data, self.blobs[1].data)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = scale_shift_backward(top[0].diff, self.blobs[0].data)
