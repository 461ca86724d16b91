"""Checks for the PSPNet-101, ICNet and ENet generators.

tests/test_zoo.py runs the generic checks for every zoo model, these four
included (header line, regeneration, strict BVLC protobuf, conformance.compare
against the deploys, Caffe's blob and parameter shapes equal to our shape
inference). Beyond those, per family:

- layer *semantics* against the original deploys: kernel, stride, pad,
  dilation, bias, pooling windows, Interp/Upsample fields, Eltwise/Concat
  order, Dropout ratio -- a wrong dilation with a matching pad keeps every
  shape, so shapes alone would not catch it (the mutation tests prove this
  comparison fails when it should);
- deploy parameter counts against an independent computation (another parser
  over the published deploys), and the
  Table A4 gaps (PSPNet auxiliary branch, ENet's decimal MB);
- the input-size rules (pyramid pooling windows, ICNet's cascade sizes,
  ENet's multiple of 8) in closed form and through shape inference;
- in pycaffe, at small sizes: the pyramid pooling outputs equal window means
  computed in numpy, and the input gradient satisfies Euler's identity
  <dL/dx, x> = L(x) (each net is positively homogeneous once its biases are
  zero), i.e. backward is the adjoint of forward through the whole net.

Tiers: pure Python on the committed prototxt (always), pycaffe (generation
and runs), full-size runs marked slow.
"""
import copy
import math
from pathlib import Path

import numpy as np
import pytest

from caffe_attacks import zoo
from caffe_attacks.engine_check import SMALL_INPUTS
from caffe_attacks.zoo import enet, icnet, pspnet
from caffe_attacks.caffe_geometry import parse_prototxt
from caffe_attacks.zoo.shapes import infer, param_count
from tests.conftest import requires_caffe

from tests.conftest import REFERENCE_PROTOTXT as REFERENCE_DIR  # noqa: E402
REFERENCES = {
    "pspnet101_voc": "pspnet101_voc2012_473.deploy.prototxt",
    "pspnet101_cityscapes": "pspnet101_cityscapes_713.deploy.prototxt",
    "icnet_cityscapes": "icnet_cityscapes.deploy.prototxt",
    "enet_cityscapes": "enet_cityscapes.deploy.prototxt",
}
MODELS = tuple(REFERENCES)
requires_reference = pytest.mark.skipif(
    not REFERENCE_DIR.is_dir(), reason="reference prototxt folder %s absent" % REFERENCE_DIR)

# Our Python layers stand for these original types.
ORIGINAL_TYPE = {
    "Python:caffe_attacks.layers.interp.Interp": "Interp",
    "Python:caffe_attacks.layers.bn.PSPBN": "BN",
    "Python:caffe_attacks.layers.bn.ScaleShiftBN": "BN",
    "Python:caffe_attacks.layers.upsample.Upsample": "Upsample",
}
MIB = 4.0 / 2 ** 20


def committed(name):
    return zoo.prototxt_path(name).read_text()


def reference(filename):
    return (REFERENCE_DIR / filename).read_text()


# --------------------------------------------------------------- semantics

def _last(msg, key, default=None):
    values = (msg or {}).get(key)
    return values[-1] if values else default


def _pair(msg, stem, plain, default):
    if stem + "_h" in msg:
        return (_last(msg, stem + "_h"), _last(msg, stem + "_w"))
    values = msg.get(plain, [])
    if not values:
        return (default, default)
    return (values[0], values[1] if len(values) > 1 else values[0])


def _custom_fields(layer, param_key):
    """Fields of an original custom layer's *_param, or of our JSON param_str."""
    import json
    if _last(layer, "type") == "Python":
        text = _last(_last(layer, "python_param"), "param_str", "") or "{}"
        return json.loads(text)
    return {k: v[-1] for k, v in (_last(layer, param_key) or {}).items()}


def semantics(layer):
    """What a layer computes, with Caffe's defaults filled in (hashable)."""
    ltype = _last(layer, "type")
    if ltype in ("Convolution", "Deconvolution"):
        cp = _last(layer, "convolution_param", {})
        dil = cp.get("dilation", [1])
        return (("num_output", _last(cp, "num_output")),
                ("kernel", _pair(cp, "kernel", "kernel_size", None)),
                ("stride", _pair(cp, "stride", "stride", 1)),
                ("pad", _pair(cp, "pad", "pad", 0)),
                ("dilation", (dil[0], dil[-1])),
                ("group", _last(cp, "group", 1)),
                ("bias_term", _last(cp, "bias_term", True)))
    if ltype == "Pooling":
        pp = _last(layer, "pooling_param", {})
        return (("pool", _last(pp, "pool", "MAX")),
                ("kernel", _pair(pp, "kernel", "kernel_size", None)),
                ("stride", _pair(pp, "stride", "stride", 1)),
                ("pad", _pair(pp, "pad", "pad", 0)),
                ("global", _last(pp, "global_pooling", False)))
    if ltype == "Eltwise":
        ep = _last(layer, "eltwise_param", {})
        return (("operation", _last(ep, "operation", "SUM")), ("coeff", tuple(ep.get("coeff", []))))
    if ltype == "Concat":
        return (("axis", _last(_last(layer, "concat_param", {}), "axis", 1)),)
    if ltype == "Dropout":
        return (("ratio", _last(_last(layer, "dropout_param", {}), "dropout_ratio", 0.5)),)
    if ltype == "PReLU":
        return (("shared", _last(_last(layer, "prelu_param", {}), "channel_shared", False)),)
    if ltype == "Scale":
        sp = _last(layer, "scale_param", {})
        return (("axis", _last(sp, "axis", 1)), ("num_axes", _last(sp, "num_axes", 1)),
                ("bias_term", _last(sp, "bias_term", False)))
    kind = ORIGINAL_TYPE.get("Python:%s.%s" % (
        _last(_last(layer, "python_param"), "module"),
        _last(_last(layer, "python_param"), "layer"))) if ltype == "Python" else ltype
    if kind == "Interp":
        return tuple(sorted(_custom_fields(layer, "interp_param").items()))
    if kind == "Upsample":
        return tuple(sorted(_custom_fields(layer, "upsample_param").items()))
    if kind == "BN":
        # PSPNet BN: only eps acts at test time (default 1e-5; the deploys never set
        # it); ENet BN: INFERENCE mode is what our ScaleShiftBN computes.
        fields = _custom_fields(layer, "bn_param")
        if ltype == "BN":
            fields = {"eps": fields["eps"]} if "eps" in fields else {}
        return tuple(sorted(fields.items()))
    return ()


def describe(net_text):
    """Per-layer (name, original type, bottoms, tops, top shapes, param shapes,
    semantics), Input layers left out (the references declare the input with
    the legacy ``input:`` fields or an Input layer)."""
    net = parse_prototxt(net_text)
    rows = []
    for layer, shapes in zip(net.get("layer", []), infer(net)):
        if shapes.type == "Input":
            continue
        rows.append((shapes.name, ORIGINAL_TYPE.get(shapes.type, shapes.type),
                     tuple(shapes.bottoms), tuple(shapes.tops), tuple(shapes.top_shapes),
                     tuple(shapes.param_shapes), semantics(layer)))
    return rows


def differences(ours, theirs, limit=5):
    """Human-readable differences between two :func:`describe` lists."""
    fields = ("name", "type", "bottoms", "tops", "top shapes", "param shapes", "semantics")
    names_a, names_b = [r[0] for r in ours], [r[0] for r in theirs]
    if names_a != names_b:
        missing = [n for n in names_b if n not in names_a]
        extra = [n for n in names_a if n not in names_b]
        first = next((i for i, (a, b) in enumerate(zip(names_a, names_b)) if a != b),
                     min(len(names_a), len(names_b)))
        return ["layer names differ from position %d (ours %d layers, original %d); "
                "missing %s, extra %s" % (first, len(names_a), len(names_b),
                                          missing[:limit], extra[:limit])]
    out = []
    for a, b in zip(ours, theirs):
        for field, x, y in zip(fields, a, b):
            if x != y:
                out.append("%s: %s ours %s, original %s" % (a[0], field, x, y))
    return out[:limit]


@requires_reference
@pytest.mark.parametrize("name", MODELS)
def test_layers_match_original_deploy(name):
    diffs = differences(describe(committed(name)), describe(reference(REFERENCES[name])))
    assert not diffs, "\n".join(diffs)


def _mutate(net, layer_name, edit):
    net = copy.deepcopy(net)
    for layer in net["layer"]:
        if _last(layer, "name") == layer_name:
            edit(layer)
            return net
    raise KeyError(layer_name)


def _to_text(net):
    """Parsed prototxt back to text (enough for the fields the zoo writes)."""
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            if v.isupper() and v.replace("_", "").isalpha():
                return v           # enum
            return '"%s"' % v.replace("\\", "\\\\").replace('"', '\\"')
        return repr(v)

    def message(msg, indent):
        lines = []
        for key, values in msg.items():
            for v in values:
                if isinstance(v, dict):
                    lines.append("%s%s {" % (indent, key))
                    lines.extend(message(v, indent + "  "))
                    lines.append("%s}" % indent)
                else:
                    lines.append("%s%s: %s" % (indent, key, value(v)))
        return lines
    return "\n".join(message(net, ""))


def _set_dilation_1(layer):
    # dilation 2 -> 1 with pad 2 -> 1: every blob and parameter shape is unchanged
    cp = layer["convolution_param"][0]
    cp["dilation"], cp["pad"] = [1], [1]


def _rename(layer):
    layer["name"] = ["conv4_7_1x1_reduce_bn"]


def _drop_block(net):
    net = copy.deepcopy(net)
    net["layer"] = [l for l in net["layer"] if not _last(l, "name").startswith("conv4_12")]
    # rewire conv4_13 onto conv4_11 so that shapes still infer
    for layer in net["layer"]:
        layer["bottom"] = ["conv4_11" if b == "conv4_12" else b for b in layer.get("bottom", [])]
    return net


@requires_reference
@pytest.mark.parametrize("mutation", ["dilation", "rename", "missing_block", "pyramid_order"])
def test_comparison_catches_mutations(mutation):
    """The conformance comparison must fail for plausible generator bugs."""
    ours = parse_prototxt(committed("pspnet101_voc"))
    if mutation == "dilation":
        bad = _mutate(ours, "conv4_5_3x3", _set_dilation_1)
    elif mutation == "rename":
        bad = _mutate(ours, "conv4_7_1x1_reduce/bn", _rename)
    elif mutation == "missing_block":
        bad = _drop_block(ours)
    else:
        bad = _mutate(ours, "conv5_3_concat",
                      lambda layer: layer["bottom"].__setitem__(
                          slice(1, 5), list(reversed(layer["bottom"][1:5]))))
    theirs = describe(reference(REFERENCES["pspnet101_voc"]))
    assert not differences(describe(_to_text(ours)), theirs)   # the round trip is faithful
    assert differences(describe(_to_text(bad)), theirs)


# ------------------------------------------------------- parameter counts

# Deploy parameter counts computed independently (another parser and shape rules)
# from the published deploys.
DEPLOY_PARAMS = {
    "pspnet101_voc": 65819349,
    "pspnet101_cityscapes": 65818323,
    "icnet_cityscapes": 6685718,
    "enet_cityscapes": 367687,
}


@pytest.mark.parametrize("name", MODELS)
def test_deploy_parameter_count(name):
    assert param_count(committed(name)) == DEPLOY_PARAMS[name]


@pytest.mark.parametrize("name", ["pspnet101_voc", "pspnet101_cityscapes", "icnet_cityscapes"])
def test_deploy_does_not_reach_table_a4(name):
    """These caffemodels store more than their deploys use (docs/FIDELITY.md)."""
    mib = param_count(committed(name)) * MIB
    assert zoo.get(name).table_a4_mib - mib > 4.0


def test_enet_table_a4_is_decimal_megabytes():
    params = param_count(committed("enet_cityscapes"))
    assert round(params * 4 / 1e6, 1) == zoo.get("enet_cityscapes").table_a4_mib == 1.5
    assert round(params * MIB, 2) == 1.40


@requires_caffe
def test_pspnet_cityscapes_auxiliary_branch_explains_table_a4():
    """Deploy + the training auxiliary classifier on conv4_23 = 260.10 MiB
    (Table A4: 260.2); for VOC the same branch gives 260.11 MiB = 272.74 MB."""
    for name, classes in (("pspnet101_cityscapes", 19), ("pspnet101_voc", 21)):
        text = zoo.build(name, aux_branch=True)
        with_aux = param_count(text)
        # 3x3 conv 1024->256 (no bias) + 4-blob BN + 1x1 conv 256->classes with bias
        assert with_aux - DEPLOY_PARAMS[name] == 1024 * 256 * 9 + 4 * 256 + 256 * classes + classes
    cityscapes = param_count(zoo.build("pspnet101_cityscapes", aux_branch=True)) * MIB
    assert round(cityscapes, 2) == 260.10
    # 260.0995 against the table's 260.2: one unit of the last digit short (the
    # deploy alone is 9.1 MiB short); see docs/FIDELITY.md
    assert 0.1 < zoo.get("pspnet101_cityscapes").table_a4_mib - cityscapes < 0.11
    voc_params = param_count(zoo.build("pspnet101_voc", aux_branch=True))
    assert zoo.get("pspnet101_voc").table_a4_mib - voc_params * MIB > 10   # not in MiB
    # ... but in decimal MB (ENet's unit in the same table) it prints as 272.7:
    # an arithmetic observation recorded in docs/FIDELITY.md, not a verified fact
    assert round(voc_params * 4 / 1e6, 1) == zoo.get("pspnet101_voc").table_a4_mib


# ------------------------------------------------------------ input sizes

def _inferred(text, input_hw=None):
    net = parse_prototxt(text)
    overrides = {"data": (1, 3) + tuple(input_hw)} if input_hw else None
    return {s.name: s for s in infer(net, overrides)}


@requires_reference
@pytest.mark.parametrize("name", ["pspnet101_voc", "pspnet101_cityscapes"])
def test_pspnet_feature_size_matches_reference(name):
    layers = _inferred(reference(REFERENCES[name]))
    hw = zoo.get(name).reference_input
    assert tuple(layers["conv5_3"].top_shapes[0][2:]) == tuple(pspnet.feature_size(s) for s in hw)


@pytest.mark.parametrize("bins", pspnet.PYRAMID_BINS)
def test_pyramid_windows_tile_the_feature_map(bins):
    for feature in range(bins, 200):
        kernel, stride = pspnet.pyramid_window(feature, bins)
        assert kernel >= stride >= 1
        assert kernel + (bins - 1) * stride == feature            # last window ends at the edge
        # Caffe's ceil rule gives exactly `bins` windows
        assert math.ceil((feature - kernel) / stride) + 1 == bins
        if feature % bins == 0:
            assert kernel == stride == feature // bins             # the original's choice


def test_pyramid_window_too_small():
    with pytest.raises(ValueError):
        pspnet.pyramid_window(5, 6)
    with pytest.raises(ValueError):
        pspnet.pyramid_geometry((33, 33))                          # 5x5 conv5_3


@requires_reference
def test_icnet_branch_sizes_match_reference():
    layers = _inferred(reference(REFERENCES["icnet_cityscapes"]))
    sizes = [icnet.branch_sizes(s) for s in (1025, 2049)]
    for blob in ("conv3_1", "conv5_3", "conv3_sub1"):
        assert tuple(layers[blob].top_shapes[0][2:]) == tuple(s[blob] for s in sizes)


@pytest.mark.parametrize("hw,ok", [((1025, 2049), True), ((161, 321), True), ((97, 129), True),
                                   ((1024, 2048), False), ((160, 320), False), ((161, 300), False)])
def test_icnet_input_rule(hw, ok):
    if ok:
        icnet.check_input(hw)
    else:
        with pytest.raises(ValueError):
            icnet.check_input(hw)


def test_icnet_uses_deploy_windows_only_at_reference_size():
    _, windows = icnet.pyramid_geometry((1025, 2049))
    assert windows == icnet.REFERENCE_PYRAMID
    # elsewhere the tiling rule; at 33x65 it would differ from the deploy in bin 3 only
    rule = {b: tuple(zip(pspnet.pyramid_window(33, b), pspnet.pyramid_window(65, b)))
            for b in icnet.PYRAMID_BINS}
    assert [b for b in icnet.PYRAMID_BINS if rule[b] != icnet.REFERENCE_PYRAMID[b]] == [3]


def test_enet_input_rule():
    enet.check_input((512, 1024))
    enet.check_input((24, 40))
    for hw in ((500, 1000), (512, 1020)):
        with pytest.raises(ValueError):
            enet.check_input(hw)


# Small sizes used below (engine_check.SMALL_INPUTS): PSPNet 41 = 8*5+1 (6x6
# conv5_3, the smallest for bin 6) and a non-divisible 57x65 (8x9 conv5_3);
# ICNet 161x193; ENet 32x64.
SMALL = {name: SMALL_INPUTS[name] for name in MODELS}


@requires_caffe
@pytest.mark.parametrize("name", MODELS)
def test_small_input_shapes(name):
    hw = SMALL[name]
    layers = _inferred(zoo.build(name, input_hw=hw))
    score = layers[zoo.get(name).score_blob].top_shapes[0]
    classes = zoo.get(name).num_classes
    if name.startswith("pspnet"):
        f = tuple(pspnet.feature_size(s) for s in hw)
        assert tuple(layers["conv5_3"].top_shapes[0][2:]) == f
        for b in pspnet.PYRAMID_BINS:
            assert layers["conv5_3_pool%d" % b].top_shapes[0][2:] == (b, b)
            assert layers["conv5_3_pool%d_interp" % b].top_shapes[0][2:] == f
        assert score == (1, classes, 8 * f[0] - 7, 8 * f[1] - 7)
    else:
        assert score == (1, classes) + hw
    if name == "icnet_cityscapes":
        for b in icnet.PYRAMID_BINS:
            assert layers["conv5_3_pool%d" % b].top_shapes[0][2:] == (b, b)
    if name == "enet_cityscapes":
        # asymmetric 5x1 / 1x5 convs with symmetric pad 1, as the original
        h8, w8 = hw[0] // 8, hw[1] // 8
        assert layers["conv2_3_1_a"].top_shapes[0][2:] == (h8 - 2, w8 + 2)
        assert layers["conv2_3_1"].top_shapes[0][2:] == (h8, w8)


@requires_caffe
@requires_reference
def test_icnet_bnnomerge_variant_matches_its_deploy():
    from google.protobuf import text_format
    net = icnet.build(zoo.get("icnet_cityscapes"), (1025, 2049), bn_merged=False)
    ours = describe(text_format.MessageToString(net))
    diffs = differences(ours, describe(reference("icnet_cityscapes_bnnomerge.deploy.prototxt")))
    assert not diffs, "\n".join(diffs)
    assert sum(math.prod(p) for row in ours for p in row[5]) == 6728534   # computed independently


@pytest.mark.parametrize("name,hw", [("icnet_cityscapes", (100, 100)), ("enet_cityscapes", (36, 64)),
                                     ("pspnet101_voc", (33, 200))])
def test_unsupported_sizes_raise(name, hw):
    with pytest.raises(ValueError):
        zoo.build(name, input_hw=hw)


# ------------------------------------------------------------ pycaffe runs

def _random_weights(net, rng):
    """Random weights that keep the net positively homogeneous, f(a x) = a f(x).

    Convolutions: He-style weights, zero biases. BN: random slope/variance
    (scale) with zero mean and bias (shift); PReLU and Scale: random positive
    factors. Activations stay of order one through 100+ layers.
    """
    for name, layer in zip(net._layer_names, net.layers):
        blobs = net.params[name] if name in net.params else []
        if layer.type in ("Convolution", "Deconvolution"):
            weight = blobs[0].data
            weight[...] = rng.normal(0.0, math.sqrt(1.0 / np.prod(weight.shape[1:])), weight.shape)
            for bias in blobs[1:]:
                bias.data[...] = 0.0
        elif len(blobs) == 4:          # PSPBN: slope, bias, mean, var
            blobs[0].data[...] = rng.uniform(0.5, 1.5, blobs[0].data.shape)
            blobs[1].data[...] = blobs[2].data[...] = 0.0
            blobs[3].data[...] = rng.uniform(0.5, 2.0, blobs[3].data.shape)
        elif len(blobs) == 2 and layer.type == "Python":     # ScaleShiftBN: scale, shift
            blobs[0].data[...] = rng.uniform(0.5, 1.5, blobs[0].data.shape)
            blobs[1].data[...] = 0.0
        elif layer.type in ("PReLU", "Scale"):
            blobs[0].data[...] = rng.uniform(0.1, 1.5, blobs[0].data.shape)


@pytest.fixture(scope="module")
def small_nets():
    """CaffeNet of each model at its SMALL size with random weights (built once)."""
    pytest.importorskip("caffe")
    from caffe_attacks.caffe_net import CaffeNet
    cache = {}

    def get(name):
        if name not in cache:
            spec = zoo.get(name)
            model = CaffeNet(zoo.build(name, input_hw=SMALL[name]),
                             input_blob=spec.input_blob, score_blob=spec.score_blob)
            _random_weights(model.net, np.random.default_rng(0))
            cache[name] = model
        return cache[name]
    return get


@requires_caffe
def test_pspnet_pyramid_pools_are_window_means(small_nets):
    """At 57x65 (8x9 conv5_3, bins not dividing it) each conv5_3_pool<b> is the
    mean over the tiling windows, computed here in numpy."""
    model = small_nets("pspnet101_voc")
    x = np.random.default_rng(1).normal(0, 40, model.input_shape).astype(np.float32)
    model.forward(x)
    feature = model.net.blobs["conv5_3"].data[0].astype(np.float64)
    _, windows = pspnet.pyramid_geometry(SMALL["pspnet101_voc"])
    for b in pspnet.PYRAMID_BINS:
        (kh, kw), (sh, sw) = windows[b]
        expected = np.array([[feature[:, i * sh:i * sh + kh, j * sw:j * sw + kw].mean(axis=(1, 2))
                              for j in range(b)] for i in range(b)]).transpose(2, 0, 1)
        np.testing.assert_allclose(model.net.blobs["conv5_3_pool%d" % b].data[0], expected,
                                   rtol=1e-4, atol=1e-5 * np.abs(feature).max())


@requires_caffe
@pytest.mark.parametrize("name", ["pspnet101_voc", "icnet_cityscapes", "enet_cityscapes"])
def test_input_gradient_satisfies_euler_identity(small_nets, name):
    """<dL/dx, x> = L(x) for L = sum(w * scores).

    With zero biases and zero BN means/shifts each of these nets is positively
    homogeneous of degree one (convolutions, BN scales, ReLU/PReLU, max and
    average pooling, Interp, Upsample by argmax mask, sums and concats), so
    Euler's identity holds exactly wherever the net is differentiable: the
    backward pass through the assembled net (in-place BN, Interp, Upsample,
    PReLU, dilated and asymmetric convs, every shortcut) must be the adjoint
    of its forward pass. Finite differences are no use here: float32 noise
    summed over the score map and ReLU kinks crossed along any direction
    leave them a few percent off, and ENet's unpooling jumps when an argmax
    flips.
    """
    model = small_nets(name)
    rng = np.random.default_rng(2)
    x = rng.normal(0, 40, model.input_shape).astype(np.float32)
    scores = model.forward(x).astype(np.float64)
    np.testing.assert_allclose(model.forward(2 * x), 2 * scores,
                               rtol=1e-5, atol=1e-5 * np.abs(scores).max())  # homogeneous
    weights = rng.normal(0, 1, scores.shape).astype(np.float32)
    grad = model.input_gradient(x, weights).astype(np.float64)
    loss = float(np.sum(weights * scores))
    euler = float(np.sum(grad * x))
    # tolerance relative to the magnitudes summed (float32 accumulation)
    assert abs(euler - loss) <= 1e-4 * float(np.sum(np.abs(weights * scores))), (loss, euler)


@requires_caffe
@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_full_size_forward_backward(name):
    """Each net at its deploy size: forward to the logits and back to the input."""
    from caffe_attacks.caffe_net import CaffeNet
    spec = zoo.get(name)
    model = CaffeNet(committed(name), input_blob=spec.input_blob, score_blob=spec.score_blob)
    _random_weights(model.net, np.random.default_rng(0))
    x = np.random.default_rng(1).normal(0, 40, model.input_shape).astype(np.float32)
    scores = model.forward(x)
    expected = _inferred(committed(name))[spec.score_blob].top_shapes[0]
    assert scores.shape == expected and np.isfinite(scores).all()
    grad = model.input_gradient(x, np.ones_like(scores))
    assert grad.shape == x.shape and np.isfinite(grad).all() and np.abs(grad).max() > 0
