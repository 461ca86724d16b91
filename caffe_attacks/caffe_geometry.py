"""Caffe net definitions as text, and Caffe's layer geometry, without Caffe.

Two things every part of the toolkit needs and that must agree everywhere:

* **prototxt text.** :func:`parse_prototxt` reads protobuf text format into
  nested dicts (enough for net definitions, including the custom fields of the
  PSPNet / DeepLab / SegNet / CRF-RNN forks that BVLC's ``caffe_pb2`` rejects);
  :func:`parse_param_str` reads the JSON ``param_str`` of our Python layers.
* **output sizes.** Convolution divides as C++ does (towards zero), Deconvolution
  is ``s (i - 1) + d (k - 1) + 1 - 2 p``, Pooling ceils and then drops a last
  window that starts in the padding, Crop takes the reference's size at an
  offset, and the forks' Interp and Upsample follow their own rules.  The
  rules are those of BVLC/caffe ``src/caffe/layers/{conv,deconv,pooling,
  crop}_layer.cpp``, hszhao/PSPNet ``src/caffe/layers/interp_layer.cpp``
  (identical in deeplab-public-ver2) and alexgkendall/caffe-segnet
  ``src/caffe/layers/upsample_layer.cpp``.

The zoo's generators and shape inference (``zoo.shapes``), the torch engine
and the Python layers take their sizes from here, and both engines read
definitions with it (pycaffe then applies the same rules itself; the tests
compare).  This module imports nothing of the project, nor caffe or torch.

Examples
--------
>>> net = parse_prototxt('layer { name: "p" type: "Pooling" '
...     'pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }')
>>> window = pool_window(last(net["layer"][0], "pooling_param"))
>>> pool_output_hw((6, 7), window)
(4, 4)
"""
import json
import numbers
import os
import re
from typing import NamedTuple, Tuple

# ------------------------------------------------------------ prototxt text

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

    Parameters
    ----------
    text : str, the text itself (see :func:`read_prototxt` for a path)

    Returns
    -------
    dict
        ``{field: [value, ...]}``; message values are dicts of the same form,
        scalars are int / float / bool / str (enums as their name).

    Raises
    ------
    ValueError on text that is not protobuf text format.
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
            if pos < len(tokens) and tokens[pos] == ("punct", ":"):
                pos += 1
            if pos >= len(tokens):
                raise ValueError("field %r has no value" % name)
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


def read_net_definition(path_or_text):
    """A net definition (file path or text) parsed by :func:`parse_prototxt`.

    Raises
    ------
    ValueError naming the definition when it does not parse.
    """
    text = read_prototxt(path_or_text)
    try:
        return parse_prototxt(text)
    except ValueError as err:
        raise ValueError("cannot parse net definition %.80s: %s" % (path_or_text, err)) from None


def last(msg, key, default=None):
    """The last value of a (repeated) field; protobuf keeps the last of a repeated scalar."""
    values = (msg or {}).get(key)
    return values[-1] if values else default


def layer_type(layer):
    """Type name of a parsed layer; a Python layer as ``Python:<module>.<class>``."""
    ltype = last(layer, "type")
    if ltype == "Python":
        pp = last(layer, "python_param", {})
        return "Python:%s.%s" % (last(pp, "module"), last(pp, "layer"))
    return ltype


def python_param_str(layer):
    """The ``param_str`` of a parsed Python layer ("" when absent)."""
    return last(last(layer, "python_param", {}), "param_str", "") or ""


def net_inputs(net):
    """Legacy ``input:`` fields of a parsed net -> {blob: shape} (Input layers not included)."""
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


# ------------------------------------------------------------ param_str (JSON)

_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true/false"}


def parse_param_str(param_str, allowed, layer_type_name):
    """The keys present in a Python layer's JSON ``param_str``, type-checked.

    The original layers read protobuf messages, where a field is either absent
    or present, and Interp and Upsample branch on presence; so only the given
    keys are returned and each caller applies its own defaults.  Never eval.

    Parameters
    ----------
    param_str : str, JSON object text; empty or whitespace means no keys
    allowed : dict mapping key -> int | float | bool, the accepted keys and types
    layer_type_name : str, for error messages (e.g. "Interp")

    Returns
    -------
    dict of the present keys; ints for int keys, floats for float keys

    Raises
    ------
    ValueError on malformed JSON, a non-object, an unknown key, or a wrong type
    """
    text = (param_str or "").strip()
    if not text:
        return {}
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError("%s param_str is not valid JSON (%s): %r"
                         % (layer_type_name, err, param_str)) from err
    if not isinstance(raw, dict):
        raise ValueError("%s param_str must be a JSON object, got %r" % (layer_type_name, param_str))
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise ValueError("%s param_str has unknown key(s) %s; accepted: %s"
                         % (layer_type_name, ", ".join(unknown),
                            ", ".join(sorted(allowed)) or "(none)"))
    return {key: _checked(key, value, allowed[key], layer_type_name)
            for key, value in raw.items()}


def _checked(key, value, kind, layer_type_name):
    # bool is a subclass of int in Python, so test it explicitly both ways.
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    else:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not ok:
        raise ValueError("%s param_str key %r must be %s, got %r"
                         % (layer_type_name, key, _TYPE_NAMES[kind], value))
    return kind(value)


# ------------------------------------------------------------ windows

class Window(NamedTuple):
    """A 2-D sliding window; each field is an (h, w) pair of ints."""
    kernel: Tuple[int, int]
    stride: Tuple[int, int]
    pad: Tuple[int, int]
    dilation: Tuple[int, int] = (1, 1)


def _hw_field(param, stem, plain, default, what, split_required):
    """(h, w) of kernel / stride / pad from ``<stem>_h``/``<stem>_w`` or ``plain``.

    ``plain`` given once applies to both axes, twice gives (h, w) (repeated in
    ConvolutionParameter).  ``split_required``: the ``_h``/``_w`` form must name
    both axes (else the missing one takes ``default``, as Convolution's pad_h).
    """
    split = [k for k in (stem + "_h", stem + "_w") if k in param]
    if split:
        if plain in param:
            raise ValueError("%s: give %s or %s_h and %s_w, not both" % (what, plain, stem, stem))
        if split_required and len(split) != 2:
            raise ValueError("%s: %s_h and %s_w must be given together" % (what, stem, stem))
        return last(param, stem + "_h", default), last(param, stem + "_w", default)
    values = param.get(plain, [])
    if not values:
        return default, default
    if len(values) > 2:
        raise ValueError("%s: %s given %d times; once, or once per spatial axis"
                         % (what, plain, len(values)))
    return values[0], values[-1]


def conv_window(conv_param):
    """Kernel, stride, pad and dilation of a parsed ``convolution_param``.

    Raises
    ------
    ValueError where Caffe's BaseConvolutionLayer::LayerSetUp CHECK-fails
    (no kernel, a zero stride or dilation, a field repeated more than twice).
    """
    cp = conv_param or {}
    what = "convolution_param"
    kernel = _hw_field(cp, "kernel", "kernel_size", None, what, split_required=True)
    stride = _hw_field(cp, "stride", "stride", 1, what, split_required=True)
    pad = _hw_field(cp, "pad", "pad", 0, what, split_required=False)
    dilation = _hw_field(cp, "dilation", "dilation", 1, what, split_required=True)
    if None in kernel or min(kernel) < 1:
        raise ValueError("%s needs kernel_size or kernel_h and kernel_w (>= 1), got %s"
                         % (what, kernel))
    if min(stride) < 1 or min(dilation) < 1 or min(pad) < 0:
        raise ValueError("%s: stride and dilation must be >= 1 and pad >= 0, got %s, %s, %s"
                         % (what, stride, dilation, pad))
    return Window(kernel, stride, pad, dilation)


def pool_window(pooling_param, input_hw=None):
    """Kernel, stride and pad of a parsed ``pooling_param``.

    Parameters
    ----------
    pooling_param : dict, parsed ``pooling_param`` message
    input_hw : (int, int), the bottom's (H, W); needed for ``global_pooling``,
        whose window is the whole input (stride 1, pad 0)

    Raises
    ------
    ValueError where Caffe's PoolingLayer::LayerSetUp CHECK-fails.
    """
    pp = pooling_param or {}
    what = "pooling_param"
    if last(pp, "global_pooling", False):
        if any(k in pp for k in ("kernel_size", "kernel_h", "kernel_w")):
            raise ValueError("%s: global_pooling takes no kernel size" % what)
        if input_hw is None:
            raise ValueError("%s: global_pooling needs the input size" % what)
        return Window(tuple(input_hw), (1, 1), (0, 0))
    kernel = _hw_field(pp, "kernel", "kernel_size", None, what, split_required=True)
    stride = _hw_field(pp, "stride", "stride", 1, what, split_required=True)
    pad = _hw_field(pp, "pad", "pad", 0, what, split_required=True)
    if None in kernel or min(kernel) < 1:
        raise ValueError("%s needs kernel_size or kernel_h and kernel_w (>= 1), got %s"
                         % (what, kernel))
    if min(stride) < 1 or min(pad) < 0:
        raise ValueError("%s: stride must be >= 1 and pad >= 0, got %s, %s" % (what, stride, pad))
    if pad[0] >= kernel[0] or pad[1] >= kernel[1]:
        raise ValueError("%s: pad %s must be smaller than the kernel %s" % (what, pad, kernel))
    return Window(kernel, stride, pad)


# ------------------------------------------------------------ output sizes

def _trunc_div(a, b):
    """C++ integer division (rounds towards zero; Python's // floors)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def conv_output_size(size, kernel, stride=1, pad=0, dilation=1):
    """Convolution output length along one axis: ``(i + 2p - (d (k-1) + 1)) / s + 1``.

    The division is C++'s, which truncates towards zero: an input one short of
    the dilated kernel still gives one output when the stride exceeds 1.
    """
    return _trunc_div(size + 2 * pad - (dilation * (kernel - 1) + 1), stride) + 1


def deconv_output_size(size, kernel, stride=1, pad=0, dilation=1):
    """Deconvolution output length along one axis: ``s (i - 1) + d (k - 1) + 1 - 2p``."""
    return stride * (size - 1) + dilation * (kernel - 1) + 1 - 2 * pad


def _ceil_div(a, b):
    return -(-a // b)


def pool_output_size(size, kernel, stride=1, pad=0, padded=None):
    """Pooled length along one axis, as PoolingLayer::Reshape computes it.

    ``ceil((i + 2p - k) / s) + 1``; then, when the layer pads (on any axis:
    ``padded``, default ``pad > 0``), a last window that would start at or past
    ``i + p`` (wholly in the padding) is dropped.  Without padding a window
    starting past the input is kept.
    """
    padded = pad > 0 if padded is None else padded
    out = _ceil_div(size + 2 * pad - kernel, stride) + 1
    if padded and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def pool_output_hw(input_hw, window):
    """Pooled (H, W) of an ``input_hw`` bottom under ``window`` (from :func:`pool_window`).

    Caffe tests for a last window in the padding on both axes as soon as
    either axis pads.
    """
    padded = window.pad[0] > 0 or window.pad[1] > 0
    return tuple(pool_output_size(i, k, s, p, padded) for i, k, s, p in
                 zip(input_hw, window.kernel, window.stride, window.pad))


def conv_output_hw(input_hw, window, transposed=False):
    """(H, W) after a Convolution (or Deconvolution when ``transposed``) with ``window``."""
    size = deconv_output_size if transposed else conv_output_size
    return tuple(size(i, k, s, p, d) for i, k, s, p, d in
                 zip(input_hw, window.kernel, window.stride, window.pad, window.dilation))


def crop_offsets(crop_param, ndim):
    """First cropped axis and the offset of every axis from it, as CropLayer reads them.

    Parameters
    ----------
    crop_param : dict, parsed ``crop_param`` (axis default 2, offset default 0)
    ndim : int, number of axes of the bottom

    Returns
    -------
    axis : int, canonical (non-negative)
    offsets : tuple of ints, one per axis from ``axis`` on
    """
    axis = last(crop_param, "axis", 2)
    if not -ndim <= axis < ndim:
        raise ValueError("Crop axis %d out of range for %d axes" % (axis, ndim))
    axis %= ndim
    given = (crop_param or {}).get("offset", [])
    count = ndim - axis
    if len(given) not in (0, 1, count):
        raise ValueError("Crop needs 0, 1 or %d offsets from axis %d, got %d"
                         % (count, axis, len(given)))
    if len(given) <= 1:
        return axis, tuple(given or [0]) * count
    return axis, tuple(given)


def crop_output_shape(shape, like, crop_param):
    """Top shape of a Crop of ``shape`` to ``like`` (axes before ``axis`` kept).

    Raises ValueError when an offset window leaves the bottom.
    """
    axis, offsets = crop_offsets(crop_param, len(shape))
    if len(like) != len(shape):
        raise ValueError("Crop bottoms have %d and %d axes" % (len(shape), len(like)))
    out = tuple(shape[:axis]) + tuple(like[axis:])
    for d, off in zip(range(axis, len(shape)), offsets):
        if off < 0 or off + out[d] > shape[d]:
            raise ValueError("Crop axis %d: offset %d + size %d exceeds %d"
                             % (d, off, out[d], shape[d]))
    return out


# The param_str keys of the Python Interp and Upsample layers: the fields of
# the forks' InterpParameter and UpsampleParameter, under the same names.
INTERP_KEYS = {"zoom_factor": int, "shrink_factor": int, "height": int, "width": int,
               "pad_beg": int, "pad_end": int}
UPSAMPLE_KEYS = {"scale": int, "scale_h": int, "scale_w": int, "pad_out_h": bool,
                 "pad_out_w": bool, "upsample_h": int, "upsample_w": int}


def check_interp_params(params):
    """Raise ValueError where the original Interp would CHECK-fail at set-up.

    params : dict of the present keys (as :func:`parse_param_str` returns them)
    """
    for key in ("pad_beg", "pad_end"):
        if params.get(key, 0) > 0:
            raise ValueError("Interp %s must be <= 0 (only cropping is supported), got %d"
                             % (key, params[key]))
    for key in ("zoom_factor", "shrink_factor", "height", "width"):
        if key in params and params[key] < 1:
            raise ValueError("Interp %s must be >= 1, got %d" % (key, params[key]))
    has = set(params)
    if not ({"shrink_factor", "zoom_factor"} & has or {"height", "width"} <= has):
        raise ValueError("Interp needs shrink_factor and/or zoom_factor, or both height and "
                         "width; got keys %s" % sorted(has))


def interp_output_size(h_in, w_in, params):
    """Effective (cropped) input size and output size of Interp.

    Parameters
    ----------
    h_in, w_in : int, bottom height and width
    params : dict of the present keys (see check_interp_params); presence
        matters, as ``has_*()`` does in the original

    Returns
    -------
    (h_eff, w_eff, h_out, w_out) : ints; h_eff = h_in + pad_beg + pad_end
    """
    check_interp_params(params)
    pad = params.get("pad_beg", 0) + params.get("pad_end", 0)
    h_eff, w_eff = h_in + pad, w_in + pad
    if h_eff < 1 or w_eff < 1:
        raise ValueError("Interp crops a %dx%d input to nothing (pad_beg + pad_end = %d)"
                         % (h_in, w_in, pad))
    shrink, zoom = params.get("shrink_factor"), params.get("zoom_factor")
    # the original's if/else chain on has_*(): shrink alone, zoom alone,
    # height and width, then shrink followed by zoom
    if shrink is not None and zoom is None:
        h_out, w_out = (h_eff - 1) // shrink + 1, (w_eff - 1) // shrink + 1
    elif zoom is not None and shrink is None:
        h_out, w_out = h_eff + (h_eff - 1) * (zoom - 1), w_eff + (w_eff - 1) * (zoom - 1)
    elif "height" in params and "width" in params:
        h_out, w_out = params["height"], params["width"]
    else:
        h_out, w_out = (h_eff - 1) // shrink + 1, (w_eff - 1) // shrink + 1
        h_out, w_out = h_out + (h_out - 1) * (zoom - 1), w_out + (w_out - 1) * (zoom - 1)
    return h_eff, w_eff, h_out, w_out


def upsample_output_size(h, w, params):
    """Output (H, W) of Upsample (max-unpooling) for an (h, w) input.

    Parameters
    ----------
    h, w : int, data (and mask) height and width
    params : dict of the present keys: upsample_h and upsample_w fix the size;
        else scale (default 2) or scale_h and scale_w multiply it, less one
        where pad_out_h / pad_out_w (scale 2 only)

    Returns
    -------
    (out_h, out_w) : ints
    """
    has = set(params)
    if not ({"upsample_h", "upsample_w"} <= has
            or ("scale" not in has and {"scale_h", "scale_w"} <= has)
            or not {"scale_h", "scale_w"} & has):
        raise ValueError("Upsample needs upsample_h and upsample_w, or scale, or scale_h and "
                         "scale_w (not scale); got keys %s" % sorted(has))
    if {"upsample_h", "upsample_w"} <= has:
        out_h, out_w = params["upsample_h"], params["upsample_w"]
        if out_h <= 1 or out_w <= 1:
            raise ValueError("Upsample upsample_h and upsample_w must be > 1, got %d, %d"
                             % (out_h, out_w))
        return out_h, out_w
    if "scale_h" in has:
        scale_h, scale_w = params["scale_h"], params["scale_w"]
    else:
        scale_h = scale_w = params.get("scale", 2)
    if scale_h <= 1 or scale_w <= 1:
        raise ValueError("Upsample scale must be > 1, got %d x %d" % (scale_h, scale_w))
    pad_h, pad_w = params.get("pad_out_h", False), params.get("pad_out_w", False)
    if (pad_h and scale_h != 2) or (pad_w and scale_w != 2):
        raise ValueError("Upsample pad_out_h / pad_out_w require a scale of 2")
    return h * scale_h - int(pad_h), w * scale_w - int(pad_w)


def flat_message(msg):
    """A parsed message as ``{field: last value}`` (e.g. a fork's interp_param,
    for :func:`interp_output_size`)."""
    return {k: v[-1] for k, v in (msg or {}).items()}
