"""Blob and parameter shapes of a Caffe net definition, without Caffe.

A small reader of protobuf text format (enough for prototxt, including the
custom fields of the PSPNet/DeepLab/SegNet/CRF-RNN forks that BVLC's
``caffe_pb2`` cannot parse) and Caffe's shape rules for the layer types the
zoo uses. It lets tests compare our generated nets with the original deploy
definitions, and count parameters, for 500 MB nets at 900x900 in
milliseconds.

Shape rules (Caffe): convolution floors, pooling ceils (and drops a last
window that starts in the padding), deconvolution
``s*(i-1) + d*(k-1) + 1 - 2p``. Non-BVLC rules follow ZOO.md section 1.

Examples
--------
>>> net = parse_prototxt('layer { name: "c" type: "Convolution" bottom: "data" '
...     'top: "c" convolution_param { num_output: 8 kernel_size: 3 } }')
>>> infer(net, {"data": (1, 3, 10, 10)})[0].top_shapes
[(1, 8, 8, 8)]
"""
import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import List, Tuple

_TOKEN = re.compile(r"""
    \s+ | \#[^\n]* |                          # whitespace, comments
    (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*') |
    (?P<punct>[{}:<>;,\[\]]) |
    (?P<word>[^\s{}:<>;,\[\]"'\#]+)
""", re.VERBOSE | re.DOTALL)

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "'": "'", '"': '"', "\\": "\\"}


def _tokens(text):
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ValueError("cannot tokenise prototxt at %r" % text[pos:pos + 30])
        pos = m.end()
        if m.group("str") is not None:
            body = m.group("str")[1:-1]
            yield ("str", re.sub(r"\\(.)", lambda e: _ESCAPES.get(e.group(1), e.group(1)), body))
        elif m.group("punct") is not None:
            yield ("punct", m.group("punct"))
        elif m.group("word") is not None:
            yield ("word", m.group("word"))


def _scalar(kind, value):
    if kind == "str":
        return value
    if value in ("true", "True"):
        return True
    if value in ("false", "False"):
        return False
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return float(value)
    except ValueError:
        return value     # enum identifier, e.g. MAX


def read_prototxt(path_or_text):
    """The text of a prototxt given as a file path, or the text itself."""
    if os.path.exists(str(path_or_text)):
        with open(path_or_text) as f:
            return f.read()
    return str(path_or_text)


def parse_prototxt(text):
    """Parse protobuf text format into nested dicts of lists.

    Returns
    -------
    dict
        ``{field: [value, ...]}``; message values are dicts of the same form,
        scalars are int / float / bool / str (enums as their name).
    """
    tokens = list(_tokens(text))
    pos = 0

    def message(closing):
        nonlocal pos
        msg = {}
        while pos < len(tokens):
            kind, tok = tokens[pos]
            if kind == "punct" and tok in (";", ","):
                pos += 1
                continue
            if kind == "punct" and tok == closing:
                pos += 1
                return msg
            if kind != "word":
                raise ValueError("expected a field name, got %r" % tok)
            name = tok
            pos += 1
            if tokens[pos] == ("punct", ":"):
                pos += 1
            kind, tok = tokens[pos]
            if kind == "punct" and tok in ("{", "<"):
                pos += 1
                value = message("}" if tok == "{" else ">")
            else:
                pos += 1
                value = _scalar(kind, tok)
            msg.setdefault(name, []).append(value)
        if closing is not None:
            raise ValueError("unterminated message in prototxt")
        return msg

    return message(None)


def _one(msg, key, default=None):
    values = msg.get(key)
    return values[-1] if values else default


@dataclass
class LayerShapes:
    """Shapes that one layer produces and holds."""
    name: str
    type: str                      # as written; Python layers as "Python:<module>.<class>"
    bottoms: List[str]
    tops: List[str]
    top_shapes: List[Tuple[int, ...]]
    param_shapes: List[Tuple[int, ...]] = field(default_factory=list)


def net_inputs(net):
    """Legacy ``input:`` fields and Input layers -> {blob: shape}."""
    inputs = {}
    names = net.get("input", [])
    dims = net.get("input_dim", [])
    shapes = net.get("input_shape", [])
    for i, name in enumerate(names):
        if shapes:
            inputs[name] = tuple(shapes[i]["dim"])
        else:
            inputs[name] = tuple(dims[4 * i:4 * i + 4])
    return inputs


def layer_type(layer):
    """Type name; a Python layer as ``Python:<module>.<class>``."""
    ltype = _one(layer, "type")
    if ltype == "Python":
        pp = _one(layer, "python_param", {})
        return "Python:%s.%s" % (_one(pp, "module"), _one(pp, "layer"))
    return ltype


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
            shapes = [tuple(s["dim"]) for s in _one(layer, "input_param")["shape"]]
            if len(shapes) == 1 and len(tops) > 1:
                shapes = shapes * len(tops)
            shapes = [tuple(overrides.get(t, s)) for t, s in zip(tops, shapes)]
            params = []
        else:
            try:
                in_shapes = [blobs[b] for b in bottoms]
            except KeyError as err:
                raise ValueError("layer %r: unknown bottom %s" % (_one(layer, "name"), err))
            shapes, params = _rule(ltype, layer, in_shapes, len(tops), bn_blobs)
        for top, shape in zip(tops, shapes):
            blobs[top] = shape
        result.append(LayerShapes(_one(layer, "name"), ltype, bottoms, tops,
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

def _hw(param, stem, plain, default):
    if (stem + "_h") in param:
        return _one(param, stem + "_h"), _one(param, stem + "_w")
    values = param.get(plain, [])
    if not values:
        return default, default
    return (values[0], values[-1]) if len(values) <= 2 else (values[0], values[1])


def _conv_geometry(cp):
    kh, kw = _hw(cp, "kernel", "kernel_size", None)
    sh, sw = _hw(cp, "stride", "stride", 1)
    ph, pw = _hw(cp, "pad", "pad", 0)
    dil = cp.get("dilation", [1])
    dh, dw = dil[0], dil[-1]
    return (kh, kw), (sh, sw), (ph, pw), (dh, dw)


def _convolution(layer, shape, transposed):
    cp = _one(layer, "convolution_param", {})
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = _conv_geometry(cp)
    nout = _one(cp, "num_output")
    group = _one(cp, "group", 1)
    n, c, h, w = shape
    if transposed:
        oh = sh * (h - 1) + dh * (kh - 1) + 1 - 2 * ph
        ow = sw * (w - 1) + dw * (kw - 1) + 1 - 2 * pw
        weight = (c, nout // group, kh, kw)
    else:
        oh = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
        ow = (w + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
        weight = (nout, c // group, kh, kw)
    if oh < 1 or ow < 1:
        raise ValueError("layer %r: empty output %dx%d" % (_one(layer, "name"), oh, ow))
    params = [weight] + ([(nout,)] if _one(cp, "bias_term", True) else [])
    return (n, nout, oh, ow), params


def _pool_extent(size, k, s, p):
    out = int(math.ceil((size + 2 * p - k) / s)) + 1
    if p and (out - 1) * s >= size + p:
        out -= 1     # Caffe: the last window must start inside the image
    return out


def _pooling(layer, shape):
    pp = _one(layer, "pooling_param", {})
    n, c, h, w = shape
    if _one(pp, "global_pooling", False):
        return (n, c, 1, 1)
    kh, kw = _hw(pp, "kernel", "kernel_size", None)
    sh, sw = _hw(pp, "stride", "stride", 1)
    ph, pw = _hw(pp, "pad", "pad", 0)
    return (n, c, _pool_extent(h, kh, sh, ph), _pool_extent(w, kw, sw, pw))


def interp_shape(shape, params):
    """Output shape of PSPNet/DeepLab ``Interp`` (ZOO.md 1.1); ``params`` keys
    present = fields set."""
    n, c, h, w = shape
    pad = params.get("pad_beg", 0) + params.get("pad_end", 0)
    h_eff, w_eff = h + pad, w + pad
    has = {k for k in ("shrink_factor", "zoom_factor", "height", "width") if k in params}
    shrink, zoom = params.get("shrink_factor", 1), params.get("zoom_factor", 1)
    if "shrink_factor" in has and "zoom_factor" not in has:
        oh, ow = (h_eff - 1) // shrink + 1, (w_eff - 1) // shrink + 1
    elif "zoom_factor" in has and "shrink_factor" not in has:
        oh, ow = h_eff + (h_eff - 1) * (zoom - 1), w_eff + (w_eff - 1) * (zoom - 1)
    elif "height" in has and "width" in has:
        oh, ow = params["height"], params["width"]
    elif "shrink_factor" in has and "zoom_factor" in has:
        oh, ow = (h_eff - 1) // shrink + 1, (w_eff - 1) // shrink + 1
        oh, ow = oh + (oh - 1) * (zoom - 1), ow + (ow - 1) * (zoom - 1)
    else:
        raise ValueError("Interp needs shrink_factor, zoom_factor or height and width")
    return (n, c, oh, ow)


def upsample_shape(shape, params):
    """Output shape of SegNet/ENet ``Upsample`` (ZOO.md 1.4)."""
    n, c, h, w = shape
    if "upsample_h" in params and "upsample_w" in params:
        return (n, c, params["upsample_h"], params["upsample_w"])
    scale = params.get("scale", 2)
    sh, sw = params.get("scale_h", scale), params.get("scale_w", scale)
    oh = h * sh - (1 if params.get("pad_out_h", False) else 0)
    ow = w * sw - (1 if params.get("pad_out_w", False) else 0)
    return (n, c, oh, ow)


def _flat(msg):
    """A custom *_param message as a plain dict of its last values."""
    return {k: v[-1] for k, v in (msg or {}).items()}


def _guess_bn_blobs(layer):
    bp = _one(layer, "bn_param", {})
    psp_keys = {"slope_filler", "bias_filler", "momentum", "frozen", "eps"}
    return 4 if psp_keys & set(bp) else 2


def _rule(ltype, layer, in_shapes, ntop, bn_blobs):
    name = _one(layer, "name")
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
        shared = _one(_one(layer, "prelu_param", {}), "channel_shared", False)
        return [first], [(1,) if shared else (first[1],)]
    if ltype == "BatchNorm":
        return [first], [(first[1],), (first[1],), (1,)]
    if ltype == "Scale":
        sp = _one(layer, "scale_param", {})
        params = [] if len(in_shapes) > 1 else [(first[1],)]
        if _one(sp, "bias_term", False):
            params.append((first[1],))
        return [first], params
    if ltype == "Eltwise":
        if any(s != first for s in in_shapes):
            raise ValueError("layer %r: Eltwise of unequal shapes %s" % (name, in_shapes))
        return [first], []
    if ltype == "Concat":
        cp = _one(layer, "concat_param", {})
        axis = _one(cp, "axis", _one(cp, "concat_dim", 1))
        out = list(first)
        out[axis] = sum(s[axis] for s in in_shapes)
        for s in in_shapes:
            if s[:axis] + s[axis + 1:] != first[:axis] + first[axis + 1:]:
                raise ValueError("layer %r: Concat of mismatched shapes %s" % (name, in_shapes))
        return [tuple(out)], []
    if ltype == "Split":
        return [first] * ntop, []
    if ltype == "Crop":
        cp = _one(layer, "crop_param", {})
        axis = _one(cp, "axis", 2)
        offsets = cp.get("offset", [0])
        out = tuple(first[:axis]) + tuple(in_shapes[1][axis:])
        for i, d in enumerate(range(axis, len(first))):
            off = offsets[i] if len(offsets) > 1 else offsets[0]
            if off + out[d] > first[d]:
                raise ValueError("layer %r: crop %d+%d exceeds %d" % (name, off, out[d], first[d]))
        return [out], []
    if ltype in ("SoftmaxWithLoss", "EuclideanLoss"):
        return [()], []
    if ltype == "Interp":
        return [interp_shape(first, _flat(_one(layer, "interp_param")))], []
    if ltype == "BN":
        count = bn_blobs or _guess_bn_blobs(layer)
        return [first], [per_channel] * count
    if ltype == "Upsample":
        return [upsample_shape(first, _flat(_one(layer, "upsample_param")))], []
    if ltype == "MultiStageMeanfield":
        return [first], [(1, 1, first[1], first[1])] * 3
    if ltype.startswith("Python:"):
        params = json.loads(_one(_one(layer, "python_param"), "param_str", "") or "{}")
        kind = ltype.split(":", 1)[1]
        if kind == "caffe_attacks.layers.interp.Interp":
            return [interp_shape(first, params)], []
        if kind == "caffe_attacks.layers.bn.PSPBN":
            return [first], [per_channel] * 4
        if kind == "caffe_attacks.layers.bn.ScaleShiftBN":
            return [first], [per_channel] * 2
        if kind == "caffe_attacks.layers.upsample.Upsample":
            if in_shapes[1] != first:
                raise ValueError("layer %r: Upsample mask shape %s != %s" % (name, in_shapes[1], first))
            return [upsample_shape(first, params)], []
        if kind == "caffe_attacks.layers.meanfield.MultiStageMeanfield":
            return [first], [(1, 1, first[1], first[1])] * 3
    raise ValueError("layer %r: no shape rule for type %r" % (name, ltype))
