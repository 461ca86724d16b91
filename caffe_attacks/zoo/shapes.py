"""Blob and parameter shapes of a Caffe net definition, without Caffe.

Runs Caffe's shape rules (:mod:`caffe_attacks.caffe_geometry`) over every
layer of a parsed definition and adds the parameter blob shapes each layer
type holds.  It lets tests compare our generated nets with the original
deploy definitions, and count parameters, for 500 MB nets at 900x900 in
milliseconds; the torch engine builds its graph on it.

Examples
--------
>>> net = parse_prototxt('input: "data" input_shape { dim: 1 dim: 3 dim: 10 dim: 10 } '
...     'layer { name: "c" type: "Convolution" bottom: "data" '
...     'top: "c" convolution_param { num_output: 8 kernel_size: 3 } }')
>>> infer(net)[0].top_shapes
[(1, 8, 8, 8)]
>>> infer(net, {"data": (1, 3, 20, 12)})[0].top_shapes
[(1, 8, 18, 10)]
"""
import math
from dataclasses import dataclass, field
from typing import List, Tuple

from caffe_attacks.caffe_geometry import (INTERP_KEYS, UPSAMPLE_KEYS, conv_output_hw, conv_window,
                                          crop_output_shape, flat_message, interp_output_size,
                                          last, layer_type, net_inputs, parse_param_str,
                                          parse_prototxt, pool_output_hw, pool_window,
                                          python_param_str, upsample_output_size)


@dataclass
class LayerShapes:
    """Shapes that one layer produces and holds."""
    name: str
    type: str                      # as written; Python layers as "Python:<module>.<class>"
    bottoms: List[str]
    tops: List[str]
    top_shapes: List[Tuple[int, ...]]
    param_shapes: List[Tuple[int, ...]] = field(default_factory=list)


def infer(net, input_shapes=None, bn_blobs=None):
    """Infer every layer's top and parameter shapes.

    Parameters
    ----------
    net : dict
        From :func:`parse_prototxt`.
    input_shapes : dict, optional
        ``{blob: (N, C, H, W)}`` overriding the definition's input sizes.
    bn_blobs : int, optional
        Blob count of the fork-specific ``BN`` type (4 PSPNet, 2 SegNet/ENet);
        guessed from its ``bn_param`` when None.

    Returns
    -------
    list of LayerShapes, in definition order.
    """
    blobs = dict(net_inputs(net))
    overrides = dict(input_shapes or {})
    blobs.update({k: tuple(v) for k, v in overrides.items() if k in blobs})
    result = []
    for layer in net.get("layer", []):
        ltype = layer_type(layer)
        tops = list(layer.get("top", []))
        bottoms = list(layer.get("bottom", []))
        if ltype == "Input":
            shapes = [tuple(s["dim"]) for s in last(layer, "input_param")["shape"]]
            if len(shapes) == 1 and len(tops) > 1:
                shapes = shapes * len(tops)
            shapes = [tuple(overrides.get(t, s)) for t, s in zip(tops, shapes)]
            params = []
        else:
            try:
                in_shapes = [blobs[b] for b in bottoms]
            except KeyError as err:
                raise ValueError("layer %r: unknown bottom %s" % (last(layer, "name"), err))
            try:
                shapes, params = _rule(ltype, layer, in_shapes, len(tops), bn_blobs)
            except ValueError as err:
                raise ValueError("layer %r: %s" % (last(layer, "name"), err)) from None
        for top, shape in zip(tops, shapes):
            blobs[top] = shape
        result.append(LayerShapes(last(layer, "name"), ltype, bottoms, tops,
                                  [tuple(s) for s in shapes], [tuple(p) for p in params]))
    return result


def param_count(prototxt, bn_blobs=None):
    """Number of stored parameters (scalars in all layer blobs) of a definition.

    Parameters
    ----------
    prototxt : str
        Text-format net definition (file contents, not a path).

    Returns
    -------
    int
        Multiply by 4 / 2**20 for Table A4's MiB.
    """
    layers = infer(parse_prototxt(prototxt), bn_blobs=bn_blobs)
    return sum(math.prod(p) for layer in layers for p in layer.param_shapes)


# ---------------------------------------------------------------- shape rules

def _convolution(layer, shape, transposed):
    cp = last(layer, "convolution_param", {})
    window = conv_window(cp)
    nout = last(cp, "num_output")
    group = last(cp, "group", 1)
    n, c, h, w = shape
    oh, ow = _nonempty(conv_output_hw((h, w), window, transposed))
    kh, kw = window.kernel
    weight = (c, nout // group, kh, kw) if transposed else (nout, c // group, kh, kw)
    params = [weight] + ([(nout,)] if last(cp, "bias_term", True) else [])
    return (n, nout, oh, ow), params


def _pooling(layer, shape):
    pp = last(layer, "pooling_param", {})
    n, c, h, w = shape
    return (n, c) + _nonempty(pool_output_hw((h, w), pool_window(pp, (h, w))))


def _nonempty(hw):
    if min(hw) < 1:
        raise ValueError("empty output %dx%d" % hw)
    return hw


def _interp(shape, params):
    n, c, h, w = shape
    return (n, c) + interp_output_size(h, w, params)[2:]


def _upsample(shape, params):
    n, c, h, w = shape
    return (n, c) + upsample_output_size(h, w, params)


def _guess_bn_blobs(layer):
    bp = last(layer, "bn_param", {})
    psp_keys = {"slope_filler", "bias_filler", "momentum", "frozen", "eps"}
    return 4 if psp_keys & set(bp) else 2


def _rule(ltype, layer, in_shapes, ntop, bn_blobs):
    first = in_shapes[0] if in_shapes else None
    per_channel = (1, first[1], 1, 1) if first else None
    if ltype == "Convolution":
        shape, params = _convolution(layer, first, transposed=False)
        return [shape], params
    if ltype == "Deconvolution":
        shape, params = _convolution(layer, first, transposed=True)
        return [shape], params
    if ltype == "Pooling":
        return [_pooling(layer, first)] * ntop, []
    if ltype in ("ReLU", "Dropout", "Softmax", "Sigmoid", "TanH"):
        return [first], []
    if ltype == "PReLU":
        shared = last(last(layer, "prelu_param", {}), "channel_shared", False)
        return [first], [(1,) if shared else (first[1],)]
    if ltype == "BatchNorm":
        return [first], [(first[1],), (first[1],), (1,)]
    if ltype == "Scale":
        sp = last(layer, "scale_param", {})
        params = [] if len(in_shapes) > 1 else [(first[1],)]
        if last(sp, "bias_term", False):
            params.append((first[1],))
        return [first], params
    if ltype == "Eltwise":
        if any(s != first for s in in_shapes):
            raise ValueError("Eltwise of unequal shapes %s" % (in_shapes,))
        return [first], []
    if ltype == "Concat":
        cp = last(layer, "concat_param", {})
        axis = last(cp, "axis", last(cp, "concat_dim", 1))
        out = list(first)
        out[axis] = sum(s[axis] for s in in_shapes)
        for s in in_shapes:
            if s[:axis] + s[axis + 1:] != first[:axis] + first[axis + 1:]:
                raise ValueError("Concat of mismatched shapes %s" % (in_shapes,))
        return [tuple(out)], []
    if ltype == "Split":
        return [first] * ntop, []
    if ltype == "Crop":
        return [crop_output_shape(first, in_shapes[1], last(layer, "crop_param", {}))], []
    if ltype in ("SoftmaxWithLoss", "EuclideanLoss"):
        return [()], []
    if ltype == "Interp":
        return [_interp(first, flat_message(last(layer, "interp_param")))], []
    if ltype == "BN":
        count = bn_blobs or _guess_bn_blobs(layer)
        return [first], [per_channel] * count
    if ltype == "Upsample":
        return [_upsample(first, flat_message(last(layer, "upsample_param")))], []
    if ltype == "MultiStageMeanfield":
        return [first], [(1, 1, first[1], first[1])] * 3
    if ltype.startswith("Python:"):
        kind = ltype.split(":", 1)[1]
        if kind == "caffe_attacks.layers.interp.Interp":
            params = parse_param_str(python_param_str(layer), INTERP_KEYS, "Interp")
            return [_interp(first, params)], []
        if kind == "caffe_attacks.layers.bn.PSPBN":
            return [first], [per_channel] * 4
        if kind == "caffe_attacks.layers.bn.ScaleShiftBN":
            return [first], [per_channel] * 2
        if kind == "caffe_attacks.layers.upsample.Upsample":
            if in_shapes[1] != first:
                raise ValueError("Upsample mask shape %s != %s" % (in_shapes[1], first))
            params = parse_param_str(python_param_str(layer), UPSAMPLE_KEYS, "Upsample")
            return [_upsample(first, params)], []
        if kind == "caffe_attacks.layers.meanfield.MultiStageMeanfield":
            return [first], [(1, 1, first[1], first[1])] * 3
    raise ValueError("no shape rule for type %r" % ltype)
