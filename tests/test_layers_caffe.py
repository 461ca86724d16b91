"""Caffe tier for the Python layers: each layer inside a tiny pycaffe net.

Checks forward against independent references (BVLC MAX pooling masks, the
per-pixel Interp definition, the BN formulas), the gradient of the whole net
to its input by central finite differences (force_backward), variable input
sizes through reshape, and that Net.copy_from fills the Python layers' blobs
by layer name from a caffemodel written as the original forks wrote them.
"""
import json

import numpy as np
import pytest

from tests.conftest import requires_caffe
from tests.gradcheck import assert_gradient_close, numeric_gradient
from tests.test_layers import interp_reference

pytestmark = requires_caffe


@pytest.fixture(scope="module")
def caffe():
    import caffe as caffe_module
    caffe_module.set_mode_cpu()
    return caffe_module


def python_layer(name, cls, bottoms, tops, params=None):
    module = {"Interp": "interp", "PSPBN": "bn", "ScaleShiftBN": "bn", "Upsample": "upsample"}[cls]
    text = json.dumps(json.dumps(params or {}))  # JSON inside a prototxt string literal
    return ('layer { name: "%s" type: "Python" %s %s python_param { module: "caffe_attacks.layers.%s" '
            'layer: "%s" param_str: %s } }\n'
            % (name, " ".join('bottom: "%s"' % b for b in bottoms),
               " ".join('top: "%s"' % t for t in tops), module, cls, text))


def make_net(caffe, tmp_path, shape, body):
    """A TEST-phase net: Input "data" of `shape`, then the layer text `body`."""
    text = ("force_backward: true\n"
            'layer { name: "data" type: "Input" top: "data" input_param { shape { %s } } }\n'
            % " ".join("dim: %d" % d for d in shape)) + body
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    return caffe.Net(str(path), caffe.TEST)


def check_input_gradient(net, out_blob, x, skip=None, seed=0):
    """Analytic d<out, G>/d data from net.backward vs central differences (Caffe rules)."""
    g = None

    def objective(z):
        net.blobs["data"].data[...] = z
        net.forward()
        return np.vdot(net.blobs[out_blob].data.astype(np.float64), g)

    net.blobs["data"].data[...] = x
    net.forward()
    g = np.random.default_rng(seed).standard_normal(net.blobs[out_blob].data.shape)
    objective(x)
    net.blobs[out_blob].diff[...] = g
    net.backward()
    analytic = net.blobs["data"].diff.copy()
    assert np.abs(analytic).max() > 0
    numeric = numeric_gradient(objective, x.astype(np.float32), step=1e-2)
    assert_gradient_close(analytic, numeric, threshold=1e-2, skip=skip)
    return analytic


# ---------------------------------------------------------------- Interp

INTERP_CASES = [
    ((1, 2, 4, 5), {"zoom_factor": 2}, (7, 9)),
    ((1, 2, 9, 11), {"shrink_factor": 2}, (5, 6)),
    ((1, 3, 1, 1), {"height": 6, "width": 6}, (6, 6)),
    ((2, 2, 7, 6), {"zoom_factor": 3, "shrink_factor": 2}, (10, 7)),
    ((1, 2, 8, 8), {"height": 5, "width": 11, "pad_beg": -1, "pad_end": -2}, (5, 11)),
]


@pytest.mark.parametrize("shape, params, out_hw", INTERP_CASES, ids=lambda v: str(v).replace(" ", ""))
def test_interp_in_net_forward_and_gradient(caffe, tmp_path, shape, params, out_hw):
    net = make_net(caffe, tmp_path, shape, python_layer("interp", "Interp", ["data"], ["out"], params))
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    net.blobs["data"].data[...] = x
    net.forward()
    assert net.blobs["out"].data.shape == shape[:2] + out_hw
    pb, pe = params.get("pad_beg", 0), params.get("pad_end", 0)
    crop = x[..., -pb:shape[2] + pe, -pb:shape[3] + pe].astype(np.float64)
    np.testing.assert_allclose(net.blobs["out"].data, interp_reference(crop, *out_hw), atol=2e-6)
    analytic = check_input_gradient(net, "out", x)
    if pb or pe:  # cropped-away pixels get no gradient
        assert not analytic[..., :-pb, :].any() and not analytic[..., shape[2] + pe:, :].any()


def test_interp_follows_input_size(caffe, tmp_path):
    net = make_net(caffe, tmp_path, (1, 1, 3, 3), python_layer("interp", "Interp", ["data"], ["out"],
                                                               {"zoom_factor": 8}))
    for h, w in [(3, 3), (4, 7), (60, 60)]:
        net.blobs["data"].reshape(1, 1, h, w)
        net.reshape()
        x = np.random.default_rng(h).standard_normal((1, 1, h, w)).astype(np.float32)
        net.blobs["data"].data[...] = x
        net.forward()
        assert net.blobs["out"].data.shape == (1, 1, 8 * h - 7, 8 * w - 7)
        np.testing.assert_array_equal(net.blobs["out"].data[..., ::8, ::8], x)


def test_interp_rejects_unknown_key(caffe, tmp_path):
    with pytest.raises(ValueError, match="zoom"):
        make_net(caffe, tmp_path, (1, 1, 3, 3), python_layer("interp", "Interp", ["data"], ["out"], {"zoom": 2}))


# ---------------------------------------------------------------- BN

def _bn_values(rng, c, count):
    vals = [rng.uniform(0.5, 2.0, c), rng.standard_normal(c), rng.standard_normal(c), rng.uniform(0.1, 3.0, c)]
    return [v.astype(np.float32).reshape(1, c, 1, 1) for v in vals[:count]]


@pytest.mark.parametrize("in_place", [True, False], ids=["in-place", "separate-top"])
@pytest.mark.parametrize("cls", ["PSPBN", "ScaleShiftBN"])
def test_bn_in_net_forward_and_gradient(caffe, tmp_path, cls, in_place):
    top = "data" if in_place else "out"
    net = make_net(caffe, tmp_path, (2, 3, 4, 5), python_layer("bn", cls, ["data"], [top]))
    layer = net.layer_dict["bn"]
    rng = np.random.default_rng(3)
    values = _bn_values(rng, 3, 4 if cls == "PSPBN" else 2)
    assert [b.data.shape for b in layer.blobs] == [(1, 3, 1, 1)] * len(values)
    for blob, v in zip(layer.blobs, values):
        blob.data[...] = v
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    net.blobs["data"].data[...] = x
    net.forward()
    p = [v.astype(np.float64) for v in values]
    if cls == "PSPBN":
        want = p[0] * (x - p[2]) / np.sqrt(p[3] + 1e-5) + p[1]
    else:
        want = p[0] * x + p[1]
    np.testing.assert_allclose(net.blobs[top].data, want, rtol=1e-5, atol=1e-5)
    check_input_gradient(net, top, x)
    for blob in layer.blobs:  # frozen: no parameter gradient
        assert not blob.diff.any()


def test_psp_bn_eps_from_param_str(caffe, tmp_path):
    net = make_net(caffe, tmp_path, (1, 1, 1, 2), python_layer("bn", "PSPBN", ["data"], ["out"], {"eps": 0.25}))
    net.layer_dict["bn"].blobs[3].data[...] = 0.0
    net.blobs["data"].data[...] = 1.0
    net.forward()
    np.testing.assert_allclose(net.blobs["out"].data, 2.0)  # 1 / sqrt(0 + 0.25)


def _write_caffemodel(caffe, path, layer_name, layer_type, arrays, legacy_dims):
    """A caffemodel holding one layer's blobs, encoded as the original forks saved them."""
    from caffe.proto import caffe_pb2
    model = caffe_pb2.NetParameter()
    layer = model.layer.add()
    layer.name, layer.type = layer_name, layer_type
    for a in arrays:
        blob = layer.blobs.add()
        if legacy_dims:  # pre-2015 caffemodels (e.g. SegNet era): num/channels/height/width
            blob.num, blob.channels, blob.height, blob.width = a.shape
        else:
            blob.shape.dim.extend(a.shape)
        blob.data.extend(a.reshape(-1).tolist())
    path.write_bytes(model.SerializeToString())


@pytest.mark.parametrize("cls, orig_type, name, legacy", [
    ("PSPBN", "BN", "conv1_1_3x3_s2_bn", False),
    ("ScaleShiftBN", "BN", "conv1_1_bn", True),
    ("ScaleShiftBN", "BN", "bn0_1", False),
])
def test_bn_blobs_filled_by_copy_from(caffe, tmp_path, cls, orig_type, name, legacy):
    values = _bn_values(np.random.default_rng(5), 4, 4 if cls == "PSPBN" else 2)
    weights = tmp_path / "w.caffemodel"
    _write_caffemodel(caffe, weights, name, orig_type, values, legacy)
    net = make_net(caffe, tmp_path, (1, 4, 2, 3), python_layer(name, cls, ["data"], ["data"]))
    # checked first: Caffe aborts the process (LOG(FATAL)) on a shape mismatch
    assert [b.data.shape for b in net.layer_dict[name].blobs] == [v.shape for v in values]
    net.copy_from(str(weights))
    for blob, v in zip(net.layer_dict[name].blobs, values):
        np.testing.assert_array_equal(blob.data, v)
    # and the loaded blobs are the ones forward uses
    x = np.random.default_rng(6).standard_normal((1, 4, 2, 3)).astype(np.float32)
    net.blobs["data"].data[...] = x
    net.forward()
    p = [v.astype(np.float64) for v in values]
    want = p[0] * (x - p[2]) / np.sqrt(p[3] + 1e-5) + p[1] if cls == "PSPBN" else p[0] * x + p[1]
    np.testing.assert_allclose(net.blobs["data"].data, want, rtol=1e-5, atol=1e-5)


def test_bn_blobs_survive_save_and_reload(caffe, tmp_path):
    body = python_layer("bn", "PSPBN", ["data"], ["data"])
    net = make_net(caffe, tmp_path, (1, 2, 2, 2), body)
    values = _bn_values(np.random.default_rng(7), 2, 4)
    for blob, v in zip(net.layer_dict["bn"].blobs, values):
        blob.data[...] = v
    net.save(str(tmp_path / "saved.caffemodel"))
    fresh = make_net(caffe, tmp_path, (1, 2, 2, 2), body)
    fresh.copy_from(str(tmp_path / "saved.caffemodel"))
    for blob, v in zip(fresh.layer_dict["bn"].blobs, values):
        np.testing.assert_array_equal(blob.data, v)


# ---------------------------------------------------------------- Upsample

def pool_unpool_net(caffe, tmp_path, shape, params):
    body = ('layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" top: "pool_mask" '
            'pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n'
            + python_layer("upsample", "Upsample", ["pool", "pool_mask"], ["up"], params))
    return make_net(caffe, tmp_path, shape, body)


def separated_values(shape, seed):
    """Distinct values at least 0.05 apart: no max tie within a difference step."""
    rng = np.random.default_rng(seed)
    return (rng.permutation(int(np.prod(shape))) * 0.05 - 1.0).reshape(shape).astype(np.float32)


def window_maxima(x):
    keep = np.zeros(x.shape, bool)
    for i in range(0, x.shape[2], 2):
        for j in range(0, x.shape[3], 2):
            win = x[:, :, i:i + 2, j:j + 2]
            keep[:, :, i:i + 2, j:j + 2] = win == win.max(axis=(2, 3), keepdims=True)
    return keep


@pytest.mark.parametrize("shape, params", [
    ((2, 3, 4, 6), {"scale": 2}),
    ((1, 2, 5, 7), {"upsample_h": 5, "upsample_w": 7}),   # odd: ceil pooling, explicit size
], ids=["even-scale2", "odd-upsample_hw"])
def test_upsample_unpools_bvlc_max_pooling(caffe, tmp_path, shape, params):
    net = pool_unpool_net(caffe, tmp_path, shape, params)
    x = separated_values(shape, seed=4)
    net.blobs["data"].data[...] = x
    net.forward()
    np.testing.assert_array_equal(net.blobs["up"].data, np.where(window_maxima(x), x, 0))
    net.blobs["pool_mask"].diff[...] = np.nan
    check_input_gradient(net, "up", x)
    assert not net.blobs["pool_mask"].diff.any()  # the mask gets a zero gradient


def test_upsample_follows_input_size(caffe, tmp_path):
    net = pool_unpool_net(caffe, tmp_path, (1, 1, 4, 4), {"scale": 2})
    for h, w in [(6, 8), (2, 10)]:
        net.blobs["data"].reshape(1, 1, h, w)
        net.reshape()
        x = separated_values((1, 1, h, w), seed=h)
        net.blobs["data"].data[...] = x
        net.forward()
        np.testing.assert_array_equal(net.blobs["up"].data, np.where(window_maxima(x), x, 0))
