"""Small NetSpec helpers shared by the zoo's family generators.

Generators are straight-line NetSpec code in the style of FCN's ``net.py``:
attribute, top blob and layer share one name (``n.conv1_1, n.relu1_1 =
conv_relu(n.data, 64, pad=100)``). Where an original definition gives a
layer a name different from its top (``score-fr`` -> ``score``), pass
``name=`` to the helper.

``L``, ``P`` and :func:`net_spec` stand for pycaffe's ``caffe.layers``,
``caffe.params`` and ``caffe.NetSpec``; they import caffe on first use so
that the zoo registry (and ``python -m caffe_attacks.zoo list``) works
without a Caffe build.

The non-BVLC layers of the original forks are Python layers of
``caffe_attacks.layers`` (docs/DESIGN.md): :func:`interp`, :func:`psp_bn`,
:func:`scale_shift_bn`, :func:`upsample`, :func:`meanfield`.
"""
import importlib
import json


class _LazyCaffe:
    """``caffe.<attr>`` resolved on first attribute access."""

    def __init__(self, attr):
        self._attr = attr

    def __getattr__(self, name):
        caffe = importlib.import_module("caffe")
        return getattr(getattr(caffe, self._attr), name)


L = _LazyCaffe("layers")
P = _LazyCaffe("params")


def net_spec():
    """A fresh ``caffe.NetSpec``."""
    return importlib.import_module("caffe").NetSpec()


def caffe_pb2():
    """pycaffe's ``caffe.proto.caffe_pb2`` (the NetParameter message classes)."""
    return importlib.import_module("caffe.proto.caffe_pb2")


def net_parameter(text):
    """A ``caffe_pb2.NetParameter`` from prototxt text (BVLC fields only)."""
    text_format = importlib.import_module("google.protobuf.text_format")
    net = caffe_pb2().NetParameter()
    text_format.Merge(text, net)
    return net


def net_text(net):
    """Prototxt text of a ``caffe_pb2.NetParameter``, as protobuf writes it."""
    return importlib.import_module("google.protobuf.text_format").MessageToString(net)


# param specs as in the original deploys: weights lr 1, biases lr 2 / no decay
LEARNED = [dict(lr_mult=1, decay_mult=1), dict(lr_mult=2, decay_mult=0)]
LEARNED_NO_BIAS = [dict(lr_mult=1, decay_mult=1)]
FROZEN = [dict(lr_mult=0)]     # e.g. fixed bilinear deconvolutions

INTERP_MODULE = "caffe_attacks.layers.interp"
BN_MODULE = "caffe_attacks.layers.bn"
UPSAMPLE_MODULE = "caffe_attacks.layers.upsample"
MEANFIELD_MODULE = "caffe_attacks.layers.meanfield"


def channels(n, width_mult=1.0):
    """``n`` channels scaled by a test-only ``width_mult`` (at least 1)."""
    return n if width_mult == 1.0 else max(1, int(round(n * width_mult)))


def data_input(input_hw, num_channels=3, name="input"):
    """Input layer for a ``1 x num_channels x H x W`` blob (assign to ``n.data``)."""
    height, width = input_hw
    return L.Input(shape=dict(dim=[1, num_channels, int(height), int(width)]), name=name)


def conv(bottom, nout, ks=3, stride=1, pad=0, dilation=1, group=1, bias=True,
         param=None, **kwargs):
    """Convolution. ``ks``/``stride``/``pad`` may be ints or ``(h, w)`` pairs.

    Extra keyword arguments go to the layer (``name=``) or to
    ``convolution_param`` (``weight_filler=`` ...).
    """
    cp = dict(num_output=int(nout))
    cp.update(_hw_fields("kernel", ks, "kernel_size"))
    if stride != 1:
        cp.update(_hw_fields("stride", stride, "stride"))
    if pad != 0:
        cp.update(_hw_fields("pad", pad, "pad"))
    if dilation != 1:
        cp["dilation"] = int(dilation)
    if group != 1:
        cp["group"] = int(group)
    if not bias:
        cp["bias_term"] = False
    filler = kwargs.pop("weight_filler", None)
    if filler is not None:
        cp["weight_filler"] = filler
    if param is None:
        param = LEARNED if bias else LEARNED_NO_BIAS
    return L.Convolution(bottom, convolution_param=cp, param=param, **kwargs)


def _hw_fields(stem, value, plain):
    if isinstance(value, (tuple, list)):
        return {stem + "_h": int(value[0]), stem + "_w": int(value[1])}
    return {plain: int(value)}


def conv_relu(bottom, nout, ks=3, stride=1, pad=1, dilation=1, **kwargs):
    """Convolution followed by an in-place ReLU; returns ``(conv, relu)``."""
    c = conv(bottom, nout, ks=ks, stride=stride, pad=pad, dilation=dilation, **kwargs)
    return c, L.ReLU(c, in_place=True)


def relu(bottom, **kwargs):
    return L.ReLU(bottom, in_place=True, **kwargs)


def dropout(bottom, ratio=0.5, **kwargs):
    """In-place Dropout (identity in the TEST phase; kept for layer-name fidelity)."""
    return L.Dropout(bottom, dropout_param=dict(dropout_ratio=ratio), in_place=True, **kwargs)


def max_pool(bottom, ks=2, stride=2, pad=0, ntop=1, **kwargs):
    """MAX Pooling (ceil-mode, Caffe's rule); ``ntop=2`` adds the argmax mask top."""
    pp = dict(pool=P.Pooling.MAX, kernel_size=ks, stride=stride)
    if pad:
        pp["pad"] = pad
    return L.Pooling(bottom, pooling_param=pp, ntop=ntop, **kwargs)


def deconv(bottom, nout, ks, stride, group=1, bias=False, param=None, **kwargs):
    """Deconvolution (bias-free and frozen, i.e. fixed bilinear, by default)."""
    cp = dict(num_output=int(nout), kernel_size=ks, stride=stride)
    if group != 1:
        cp["group"] = int(group)
    if not bias:
        cp["bias_term"] = False
    for key in ("pad", "weight_filler"):
        if key in kwargs:
            cp[key] = kwargs.pop(key)
    if param is None:
        param = FROZEN
    return L.Deconvolution(bottom, convolution_param=cp, param=param, **kwargs)


def crop(bottom, like, offset, axis=2, **kwargs):
    """BVLC Crop of ``bottom`` to the spatial size of ``like`` at ``offset``."""
    return L.Crop(bottom, like, crop_param=dict(axis=axis, offset=offset), **kwargs)


def eltwise_sum(*bottoms, **kwargs):
    return L.Eltwise(*bottoms, eltwise_param=dict(operation=P.Eltwise.SUM), **kwargs)


def python_layer(module, cls, params, bottoms, ntop=1, **kwargs):
    """A Caffe ``Python`` layer whose ``param_str`` is ``params`` as JSON.

    Parameters
    ----------
    module, cls : str
        e.g. ``"caffe_attacks.layers.interp"``, ``"Interp"``.
    params : dict
        JSON-serialisable layer parameters; keys are written sorted so that
        regeneration is byte-stable. Only keys that are *present* are written:
        several original layers (Interp) switch on field presence.
    bottoms : sequence of NetSpec tops
    ntop : int
    """
    pp = dict(module=module, layer=cls)
    if params:
        pp["param_str"] = json.dumps(params, sort_keys=True)
    return L.Python(*bottoms, python_param=pp, ntop=ntop, **kwargs)


def _layer_kwargs(name, in_place):
    kwargs = {}
    if name is not None:
        kwargs["name"] = name
    if in_place:
        kwargs["in_place"] = True
    return kwargs


def interp(bottom, name=None, **params):
    """PSPNet/DeepLab ``Interp`` (keys: zoom_factor, shrink_factor, height, width,
    pad_beg, pad_end; only the given ones are written)."""
    return python_layer(INTERP_MODULE, "Interp", params, [bottom], **_layer_kwargs(name, False))


def psp_bn(bottom, name=None, in_place=False, **params):
    """PSPNet/ICNet 4-blob ``BN`` (slope, bias, mean, var; ``eps`` default 1e-5)."""
    return python_layer(BN_MODULE, "PSPBN", params, [bottom], **_layer_kwargs(name, in_place))


def scale_shift_bn(bottom, name=None, in_place=False):
    """SegNet/ENet 2-blob ``BN`` in INFERENCE mode (``y = scale * x + shift``)."""
    return python_layer(BN_MODULE, "ScaleShiftBN", {}, [bottom], **_layer_kwargs(name, in_place))


def upsample(bottom, mask, name=None, **params):
    """SegNet/ENet max-unpooling ``Upsample`` (keys: scale, upsample_h, upsample_w)."""
    return python_layer(UPSAMPLE_MODULE, "Upsample", params, [bottom, mask],
                        **_layer_kwargs(name, False))


def meanfield(unary, q0, image, name=None, **params):
    """CRF-RNN ``MultiStageMeanfield`` over (unary, Q0, image)."""
    return python_layer(MEANFIELD_MODULE, "MultiStageMeanfield", params, [unary, q0, image],
                        **_layer_kwargs(name, False))
