"""Caffe's layer semantics in PyTorch, one builder per layer type.

``make_op(layer)`` turns one parsed prototxt layer (a dict from
``caffe_geometry.parse_prototxt``) into a function ``op(bottoms, blobs) -> tops``
of torch tensors; autograd then gives the same backward pass Caffe computes.
Where PyTorch's built-in differs from Caffe, the op says how it is made equal:

* Pooling: Caffe's ceil-mode extent (the last window must start inside the
  padded input) is PyTorch's ``ceil_mode=True`` rule when ``pad > 0``; with
  ``pad == 0`` Caffe keeps a window that starts past the input where PyTorch
  drops it, so every output size is checked against Caffe's formula and a
  mismatch raises instead of computing something else.  AVE divides by the
  window clipped to the padded bounds (``count_include_pad=True``), MAX
  ignores padding (PyTorch pads with -inf); the mask top is PyTorch's
  ``return_indices`` (flat ``row * W + col`` of the input plane, as Caffe's).
* Eltwise MAX: Caffe routes the gradient to one bottom (the later of two
  equal ones for the first pair, the earlier afterwards); ``torch.maximum``
  would split it, so the op selects with ``torch.where`` in Caffe's order.
* Output sizes and windows come from ``caffe_geometry``, as in the zoo's
  shape inference and the Python layers; the Python layers' numpy modules
  (``layers.bn``, ``layers.meanfield``) import without pycaffe.
  ``MultiStageMeanfield`` runs the project's numpy/numba permutohedral
  lattice on the CPU inside a custom ``autograd.Function`` (tensors on a GPU
  are copied to the host and back).

``initial_blobs(layer, param_shapes)`` gives the blobs a layer holds before
any weights are loaded (Caffe's fillers: constant and bilinear exactly,
random fillers with numpy's generator, so not Caffe's numbers).
"""
import math

import numpy as np
import torch
import torch.nn.functional as F

from caffe_attacks.caffe_geometry import (INTERP_KEYS, UPSAMPLE_KEYS, check_interp_params,
                                          conv_window, crop_offsets, crop_output_shape,
                                          interp_output_size, last, parse_param_str,
                                          pool_output_hw, pool_window, python_param_str,
                                          upsample_output_size)
from caffe_attacks.layers import bn, meanfield

# Enum values as integers, for prototxts written by old tools.
POOL_METHODS = {0: "MAX", 1: "AVE", 2: "STOCHASTIC"}
ELTWISE_OPS = {0: "PROD", 1: "SUM", 2: "MAX"}


# --------------------------------------------------------------------- BVLC

def _convolution(layer, transposed):
    cp = last(layer, "convolution_param", {})
    _, stride, pad, dilation = conv_window(cp)
    group = last(cp, "group", 1)

    def op(bottoms, blobs):
        bias = blobs[1] if len(blobs) > 1 else None
        if transposed:
            return [F.conv_transpose2d(bottoms[0], blobs[0], bias, stride, pad, 0, group,
                                       dilation)]
        return [F.conv2d(bottoms[0], blobs[0], bias, stride, pad, dilation, group)]
    return op


def _pooling(layer, ntop):
    pp = last(layer, "pooling_param", {})
    method = last(pp, "pool", "MAX")
    method = POOL_METHODS.get(method, method)
    if method not in ("MAX", "AVE"):
        raise NotImplementedError("Pooling %s is not supported" % method)
    if ntop > 1 and method != "MAX":
        raise ValueError("only MAX pooling has a mask top")
    is_global = last(pp, "global_pooling", False)
    fixed = None if is_global else pool_window(pp)
    name = last(layer, "name")

    def op(bottoms, blobs):
        x = bottoms[0]
        window = pool_window(pp, tuple(x.shape[2:])) if is_global else fixed
        k, s, p = window.kernel, window.stride, window.pad
        if any(pi > ki // 2 for pi, ki in zip(p, k)):
            raise NotImplementedError("layer %r: pad %s over half the kernel %s" % (name, p, k))
        expected = pool_output_hw(tuple(x.shape[2:]), window)
        if method == "MAX":
            outs = F.max_pool2d(x, k, s, p, ceil_mode=True, return_indices=ntop > 1)
            outs = list(outs) if ntop > 1 else [outs]
        else:
            outs = [F.avg_pool2d(x, k, s, p, ceil_mode=True, count_include_pad=True)]
        if tuple(outs[0].shape[2:]) != expected:
            # a last window starting past the input: Caffe drops it only when the layer
            # pads, torch always
            raise NotImplementedError("layer %r: Caffe pools to %s, torch to %s"
                                      % (name, expected, tuple(outs[0].shape[2:])))
        return outs
    return op


def _eltwise(layer):
    ep = last(layer, "eltwise_param", {})
    operation = last(ep, "operation", "SUM")
    operation = ELTWISE_OPS.get(operation, operation)
    coeffs = ep.get("coeff", [])

    def op(bottoms, blobs):
        if operation == "SUM":
            if coeffs and len(coeffs) != len(bottoms):
                raise ValueError("Eltwise has %d coeffs for %d bottoms"
                                 % (len(coeffs), len(bottoms)))
            terms = [x if not coeffs or coeffs[i] == 1 else x * coeffs[i]
                     for i, x in enumerate(bottoms)]
            out = terms[0]
            for t in terms[1:]:
                out = out + t
            return [out]
        if operation == "PROD":
            out = bottoms[0]
            for x in bottoms[1:]:
                out = out * x
            return [out]
        if operation == "MAX":
            # Caffe: a > b ? a : b for the first pair, then b > top ? b : top
            out = torch.where(bottoms[0] > bottoms[1], bottoms[0], bottoms[1])
            for x in bottoms[2:]:
                out = torch.where(x > out, x, out)
            return [out]
        raise NotImplementedError("Eltwise operation %s" % operation)
    return op


def _crop(layer):
    cp = last(layer, "crop_param", {})

    def op(bottoms, blobs):
        x, like = bottoms
        crop_output_shape(tuple(x.shape), tuple(like.shape), cp)   # raises where Caffe CHECK-fails
        axis, offsets = crop_offsets(cp, x.dim())
        index = [slice(None)] * axis
        index += [slice(off, off + like.shape[d]) for d, off in zip(range(axis, x.dim()), offsets)]
        return [x[tuple(index)]]
    return op


def _concat(layer):
    cp = last(layer, "concat_param", {})
    axis = last(cp, "axis", last(cp, "concat_dim", 1))
    return lambda bottoms, blobs: [torch.cat(bottoms, dim=axis)]


def _relu(layer):
    slope = last(last(layer, "relu_param", {}), "negative_slope", 0.0)
    if slope:
        return lambda bottoms, blobs: [F.leaky_relu(bottoms[0], slope)]
    return lambda bottoms, blobs: [F.relu(bottoms[0])]


def _batch_norm(layer):
    bp = last(layer, "batch_norm_param", {})
    eps = last(bp, "eps", 1e-5)
    global_stats = last(bp, "use_global_stats", True)   # TEST phase default

    def op(bottoms, blobs):
        x = bottoms[0]
        shape = (1, -1) + (1,) * (x.dim() - 2)
        if global_stats:
            # Caffe: scale_factor = 0 if blobs[2] == 0 else 1 / blobs[2]
            factor = torch.where(blobs[2][0] == 0, torch.zeros_like(blobs[2][0]),
                                 1 / blobs[2][0])
            mean, var = blobs[0] * factor, blobs[1] * factor
        else:
            dims = [0] + list(range(2, x.dim()))
            mean, var = x.mean(dim=dims), x.var(dim=dims, unbiased=False)
        return [(x - mean.view(shape)) / torch.sqrt(var.view(shape) + eps)]
    return op


def _scale(layer):
    sp = last(layer, "scale_param", {})
    axis = last(sp, "axis", 1)
    bias_term = last(sp, "bias_term", False)

    def op(bottoms, blobs):
        x = bottoms[0]
        factor = bottoms[1] if len(bottoms) > 1 else blobs[0]
        ax = axis % x.dim()
        shape = (1,) * ax + tuple(factor.shape) + (1,) * (x.dim() - ax - factor.dim())
        y = x * factor.reshape(shape)
        if bias_term:
            y = y + blobs[-1].reshape(shape)
        return [y]
    return op


def _softmax(layer):
    axis = last(last(layer, "softmax_param", {}), "axis", 1)
    return lambda bottoms, blobs: [F.softmax(bottoms[0], dim=axis)]


# ------------------------------------------------------------ Python layers

def _interp(layer):
    params = parse_param_str(python_param_str(layer), INTERP_KEYS, "Interp")
    check_interp_params(params)
    pad_beg, pad_end = params.get("pad_beg", 0), params.get("pad_end", 0)

    def op(bottoms, blobs):
        x = bottoms[0]
        h, w = x.shape[-2:]
        h_eff, w_eff, h_out, w_out = interp_output_size(h, w, params)
        x = x[..., -pad_beg:h + pad_end, -pad_beg:w + pad_end]
        if (h_eff, w_eff) == (h_out, w_out):
            return [x]
        # align_corners=True computes Caffe's float32 ratio (n_src-1)/(n_out-1)
        # and taps; the numpy reference agrees to rounding (tested)
        return [F.interpolate(x, size=(h_out, w_out), mode="bilinear", align_corners=True)]
    return op


def _channel_view(v, x):
    return v.reshape((1, -1) + (1,) * (x.dim() - 2))


def _psp_bn(layer):
    eps = parse_param_str(python_param_str(layer), {"eps": float}, "PSPBN").get("eps", bn.PSP_BN_EPS)

    def op(bottoms, blobs):
        x = bottoms[0]
        slope, bias, mean, var = (_channel_view(b, x) for b in blobs)
        return [(x - mean) * (slope / torch.sqrt(var + eps)) + bias]
    return op


def _scale_shift_bn(layer):
    parse_param_str(python_param_str(layer), {}, "ScaleShiftBN")

    def op(bottoms, blobs):
        x = bottoms[0]
        return [_channel_view(blobs[0], x) * x + _channel_view(blobs[1], x)]
    return op


def unpool(x, mask, out_h, out_w):
    """Max-unpooling with layers.upsample.unpool_forward's rule: the last writer wins.

    x : (N, C, h, w) tensor; mask : (N, C, h, w) flat indices into (out_h, out_w)
    """
    n, c, h, w = x.shape
    idx = mask.reshape(n, c, h * w).long()
    order = torch.arange(h * w, device=x.device).expand(n, c, h * w)
    owner = torch.full((n, c, out_h * out_w), -1, dtype=torch.long, device=x.device)
    owner = owner.scatter_reduce(2, idx, order, reduce="amax")
    wins = (owner.gather(2, idx) == order).to(x.dtype)
    # scatter_add of x * wins: losers add an exact 0 and get no gradient
    y = torch.zeros((n, c, out_h * out_w), dtype=x.dtype, device=x.device)
    y = y.scatter_add(2, idx, x.reshape(n, c, h * w) * wins)
    return y.reshape(n, c, out_h, out_w)


def _upsample(layer):
    params = parse_param_str(python_param_str(layer), UPSAMPLE_KEYS, "Upsample")
    upsample_output_size(2, 2, params)   # fail early on bad keys

    def op(bottoms, blobs):
        x, mask = bottoms
        if x.shape != mask.shape:
            raise ValueError("Upsample data %s and mask %s shapes differ"
                             % (tuple(x.shape), tuple(mask.shape)))
        out_h, out_w = upsample_output_size(x.shape[2], x.shape[3], params)
        if mask.numel() and (int(mask.min()) < 0 or int(mask.max()) >= out_h * out_w):
            raise ValueError("Upsample mask index out of range [0, %d)" % (out_h * out_w))
        return [unpool(x, mask.detach(), out_h, out_w)]
    return op


class _Meanfield(torch.autograd.Function):
    """MeanfieldInference (numpy/numba, CPU) as an autograd function.

    No gradient reaches ``data`` or the blobs, as the Caffe layer's backward
    leaves the features constant and the attack needs only dL/dx.
    """

    @staticmethod
    def forward(ctx, unary, q0, image, inference, blobs):
        dtype = np.float64 if unary.dtype == torch.float64 else np.float32
        arrays = [t.detach().cpu().numpy().astype(dtype, copy=False) for t in (unary, q0, image)]
        out = inference.forward(*arrays, [b.detach().cpu().numpy().astype(dtype) for b in blobs])
        # the inference object keeps one tape; save ours in case another forward follows
        ctx.inference, ctx.tape = inference, inference._tape
        return torch.from_numpy(out).to(device=unary.device, dtype=unary.dtype)

    @staticmethod
    def backward(ctx, grad):
        ctx.inference._tape = ctx.tape
        top = grad.detach().cpu().numpy()
        d_unary, d_q0, _ = ctx.inference.backward(top)
        to = dict(device=grad.device, dtype=grad.dtype)
        return (torch.from_numpy(d_unary).to(**to), torch.from_numpy(d_q0).to(**to),
                None, None, None)


def _meanfield(layer):
    params = meanfield.parse_meanfield_params(python_param_str(layer))
    inference = meanfield.MeanfieldInference(params)

    def op(bottoms, blobs):
        unary, q0, image = bottoms
        if unary.dtype not in (torch.float32, torch.float64):
            unary, q0 = unary.float(), q0.float()
        return [_Meanfield.apply(unary, q0, image, inference, list(blobs))]
    return op


PYTHON_LAYERS = {
    "caffe_attacks.layers.interp.Interp": _interp,
    "caffe_attacks.layers.bn.PSPBN": _psp_bn,
    "caffe_attacks.layers.bn.ScaleShiftBN": _scale_shift_bn,
    "caffe_attacks.layers.upsample.Upsample": _upsample,
    "caffe_attacks.layers.meanfield.MultiStageMeanfield": _meanfield,
}

_IDENTITY = lambda bottoms, blobs: [bottoms[0]]   # noqa: E731

BUILDERS = {
    "Convolution": lambda layer: _convolution(layer, transposed=False),
    "Deconvolution": lambda layer: _convolution(layer, transposed=True),
    "Pooling": lambda layer: _pooling(layer, len(layer.get("top", []))),
    "ReLU": _relu,
    "PReLU": lambda layer: (lambda bottoms, blobs: [F.prelu(bottoms[0], blobs[0])]),
    "Eltwise": _eltwise,
    "Crop": _crop,
    "Concat": _concat,
    "Split": lambda layer: (lambda bottoms, blobs: [bottoms[0]] * len(layer.get("top", []))),
    "Dropout": lambda layer: _IDENTITY,   # identity at TEST (Caffe scales while training)
    "Softmax": _softmax,
    "BatchNorm": _batch_norm,
    "Scale": _scale,
}

SUPPORTED_TYPES = tuple(BUILDERS) + ("Input",) + tuple("Python:" + k for k in PYTHON_LAYERS)


def make_op(layer, ltype):
    """The torch function of one layer.

    Parameters
    ----------
    layer : dict, a parsed ``layer { ... }`` message
    ltype : str, its type as ``caffe_geometry.layer_type`` gives it
        ("Convolution", "Python:caffe_attacks.layers.interp.Interp", ...)

    Returns
    -------
    op(bottoms: list of Tensor, blobs: list of Tensor) -> list of Tensor (one per top)
    """
    if ltype.startswith("Python:"):
        builder = PYTHON_LAYERS.get(ltype.split(":", 1)[1])
    else:
        builder = BUILDERS.get(ltype)
    if builder is None:
        raise NotImplementedError("layer %r: type %r has no torch implementation (supported: %s)"
                                  % (last(layer, "name"), ltype, ", ".join(SUPPORTED_TYPES)))
    return builder(layer)


# -------------------------------------------------------------- fillers

def _fill(filler, shape, rng):
    """Caffe's FillerParameter on a blob of `shape` (float32 numpy)."""
    kind = last(filler, "type", "constant")
    if kind == "constant":
        return np.full(shape, last(filler, "value", 0.0), np.float32)
    if kind == "bilinear":
        # Caffe's BilinearFiller: the same 2-D kernel in every (out, in) slice
        kh, kw = shape[-2:]
        f = math.ceil(kw / 2.0)
        c = (2 * f - 1 - f % 2) / (2.0 * f)
        y, x = np.mgrid[:kh, :kw]
        kernel = (1 - np.abs(x / f - c)) * (1 - np.abs(y / f - c))
        return np.broadcast_to(kernel, shape).astype(np.float32)
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    if kind == "gaussian":
        value = rng.normal(last(filler, "mean", 0.0), last(filler, "std", 1.0), shape)
        return value.astype(np.float32)
    if kind == "uniform":
        value = rng.uniform(last(filler, "min", 0.0), last(filler, "max", 1.0), shape)
        return value.astype(np.float32)
    if kind == "xavier":
        limit = math.sqrt(3.0 / fan_in)
        return rng.uniform(-limit, limit, shape).astype(np.float32)
    if kind == "msra":
        return rng.normal(0.0, math.sqrt(2.0 / fan_in), shape).astype(np.float32)
    raise NotImplementedError("filler type %r" % kind)


def initial_blobs(layer, ltype, param_shapes, rng):
    """The blobs a layer holds before weights are loaded, as Caffe sets them up.

    Parameters
    ----------
    layer : dict, the parsed layer; ltype : str as for make_op
    param_shapes : list of tuples, from zoo.shapes.infer
    rng : np.random.Generator, for random fillers

    Returns
    -------
    list of float32 arrays
    """
    if not param_shapes:
        return []
    constant = lambda value: {"type": ["constant"], "value": [value]}   # noqa: E731
    if ltype in ("Convolution", "Deconvolution"):
        cp = last(layer, "convolution_param", {})
        fillers = [last(cp, "weight_filler", {}), last(cp, "bias_filler", {})]
    elif ltype == "PReLU":
        fillers = [last(last(layer, "prelu_param", {}), "filler", constant(0.25))]
    elif ltype == "Scale":
        sp = last(layer, "scale_param", {})
        fillers = [last(sp, "filler", constant(1.0)), last(sp, "bias_filler", {})]
        if len(param_shapes) == 1 and last(sp, "bias_term", False):
            fillers = fillers[1:]   # the scale comes from a second bottom
    elif ltype == "Python:caffe_attacks.layers.bn.PSPBN":
        fillers = [constant(v) for v in (1.0, 0.0, 0.0, 1.0)]
    elif ltype == "Python:caffe_attacks.layers.bn.ScaleShiftBN":
        fillers = [constant(v) for v in (1.0, 0.0)]
    elif ltype == "Python:caffe_attacks.layers.meanfield.MultiStageMeanfield":
        params = meanfield.parse_meanfield_params(python_param_str(layer))
        channels = param_shapes[0][-1]
        return [b.reshape(s) for b, s in zip(meanfield.initial_blobs(channels, params),
                                               param_shapes)]
    else:   # BatchNorm and anything else: zeros, as Caffe's blobs start
        fillers = [{}] * len(param_shapes)
    return [_fill(f, s, rng) for f, s in zip(fillers, param_shapes)]

