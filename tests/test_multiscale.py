"""Multiscale nets (caffe_attacks.zoo.multiscale).

Tiers: pure Python (naming, Interp factors, member addressing, and the full
size DeepLab v2 ResNet-101 MSC definition checked by shape inference against
the single-scale net and the published DeepLab v2 facts); Caffe, on small nets with random
weights (scores against a numpy reference built from separately run
single-scale nets, finite-difference input gradients, MAX routing, weight
sharing through a caffemodel).
"""
import numpy as np
import pytest

from caffe_attacks import zoo
from caffe_attacks.caffe_geometry import interp_output_size, parse_prototxt
from caffe_attacks.preprocess import resize_chw
from caffe_attacks.zoo import multiscale as M
from caffe_attacks.zoo import shapes
from tests.conftest import requires_caffe
from tests.gradcheck import assert_gradient_close, sample_indices

MSC = "deeplabv2_resnet101_msc_voc"
SINGLE = "deeplabv2_resnet101_voc"


# ------------------------------------------------------------------ pure Python

@pytest.mark.parametrize("scale, suffix, factors", [
    (1.0, "", {"shrink_factor": 1}),
    (0.75, "_res075", {"shrink_factor": 4, "zoom_factor": 3}),
    (0.5, "_res05", {"shrink_factor": 2}),
    (0.25, "_res025", {"shrink_factor": 4}),
])
def test_scale_names_and_interp_factors(scale, suffix, factors):
    assert M.scale_suffix(scale) == suffix
    assert M.scale_factors(scale) == factors


@pytest.mark.parametrize("bad", [0, -0.5, 1.5])
def test_bad_scales_are_refused(bad):
    with pytest.raises(ValueError):
        M.scale_factors(bad)


@pytest.mark.parametrize("src, dst, expected", [
    ((33, 33), (65, 65), {"zoom_factor": 2}),                       # DeepLab 50 %
    ((49, 49), (65, 65), {"zoom_factor": 4, "shrink_factor": 3}),   # DeepLab 75 %
    ((250, 250), (500, 500), {"height": 500, "width": 500}),        # no exact factor
])
def test_score_resize_params_land_on_the_grid(src, dst, expected):
    params = M._resize_params(src, dst)
    assert params == expected
    assert interp_output_size(*src, params)[2:] == dst


def test_member_addressing():
    m = M.parse_member(MSC + "@0.75")
    assert (m.zoo_name, m.base, m.scales, m.fuse_blob) == (MSC, SINGLE, (0.75,), "fc1_voc12")
    m = M.parse_member("fcn8s_vgg_voc_authors@avg")
    assert (m.base, m.scales, m.fusion) == ("fcn8s_vgg_voc_authors", M.SCALES, "avg")
    assert not M.parse_member(MSC).generated
    for bad in ("no_such_net@0.5", SINGLE + "@2", SINGLE + "@mean", SINGLE + "@0.3333"):
        with pytest.raises(ValueError):
            M.parse_member(bad)


def test_registry_has_the_msc_model():
    spec = zoo.get(MSC)
    assert (spec.family, spec.score_blob, spec.reference_input) == \
        ("multiscale", "fc1_interp", (513, 513))
    assert zoo.prototxt_path(MSC).exists(), "run `python -m caffe_attacks.zoo write prototxt`"


def _layers(name):
    text = zoo.prototxt_path(name).read_text()
    return text, shapes.infer(parse_prototxt(text))


def test_full_size_msc_conforms_to_the_single_scale_net_and_zoo_md():
    """Layer names, parameter shapes and sharing, resize sizes and fusion (DeepLab v2 MSC)."""
    text, msc = _layers(MSC)
    _, single = _layers(SINGLE)
    by_name = {l.name: l for l in msc}
    trunk = [l for l in single if l.type != "Input" and l.name != "fc1_interp"]
    for suffix in ("", "_res075", "_res05"):
        for ref in trunk:
            ours = by_name[ref.name + suffix]
            assert ours.type == ref.type and ours.param_shapes == ref.param_shapes, ours.name
    # the 100 % copy is the single-scale net, blob for blob, at 513 x 513
    for ref in trunk:
        assert by_name[ref.name].top_shapes == ref.top_shapes, ref.name
        assert by_name[ref.name].tops == ref.tops, ref.name
    sizes = {l.name: l.top_shapes[0][2:] for l in msc}
    assert sizes["data_res075"] == (385, 385) and sizes["data_res05"] == (257, 257)
    assert sizes["fc1_voc12"] == (65, 65)
    assert sizes["fc1_voc12_res075"] == (49, 49) and sizes["fc1_voc12_res05"] == (33, 33)
    assert sizes["fc1_voc12_res075_interp"] == sizes["fc1_voc12_res05_interp"] == (65, 65)
    fusion = by_name["fc_fusion"]
    assert fusion.type == "Eltwise" and fusion.bottoms == [
        "fc1_voc12", "fc1_voc12_res075_interp", "fc1_voc12_res05_interp"]
    assert "MAX" in text.split('name: "fc_fusion"', 1)[1].split("layer {", 1)[0]
    assert msc[-1].name == "fc1_interp" and msc[-1].bottoms == ["fc_fusion"]
    assert msc[-1].top_shapes == [(1, 21, 513, 513)]
    # one copy of the weights: 44,153,980 = 168.43 MiB, the count of DrSleep's
    # single-scale deploy computed independently (Table A4: 168.4)
    assert M.shared_param_count(text) == 44153980
    assert shapes.param_count(text) == 3 * 44153980


def test_every_copy_names_its_params_after_the_owner():
    net = parse_prototxt(zoo.prototxt_path(MSC).read_text())
    names = {}
    for layer in net["layer"]:
        names[layer["name"][0]] = [p.get("name", [None])[0] for p in layer.get("param", [])]
    for lname, pnames in names.items():
        for suffix in ("_res075", "_res05"):
            if lname.endswith(suffix) and pnames:
                owner = lname[:-len(suffix)]
                assert pnames == names[owner] and all(pnames), lname


# ------------------------------------------------------------------ Caffe: helpers

def _net(text, score_blob):
    from caffe_attacks.caffe_net import CaffeNet
    return CaffeNet(text, input_blob="data", score_blob=score_blob)


def _randomize(net, rng, scale=0.3):
    """Random weights in the owner copies (the others share them)."""
    for name, blobs in net.params.items():
        for blob in blobs:
            blob.data[...] = rng.normal(0, scale, blob.data.shape)


def _text(ms):
    from google.protobuf import text_format
    return text_format.MessageToString(ms.net)


HW = (20, 28)


def _tiny_msc(fusion, scales=M.SCALES, seed=0):
    ms = M.multiscale_net("tiny_synthetic", HW, scales=scales, fusion=fusion)
    model = _net(_text(ms), ms.score_blob)
    _randomize(model.net, np.random.default_rng(seed))
    return ms, model


def _single_scale_reference(model, x, scales, fusion):
    """Fused scores from separately built single-scale tiny nets and numpy resizing."""
    per_scale = []
    for scale in scales:
        hw = x.shape[2:] if scale == 1.0 else interp_output_size(
            *x.shape[2:], M.scale_factors(scale))[2:]
        single = _net(zoo.build("tiny_synthetic", input_hw=hw), "score")
        for name, blobs in single.net.params.items():   # same weights as the MSC owner copy
            for k, blob in enumerate(blobs):
                blob.data[...] = model.net.params[name][k].data
        xs = resize_chw(x[0], hw, "corners")[None]
        scores = single.forward(xs)[0]
        per_scale.append(resize_chw(scores, x.shape[2:], "corners"))
    stack = np.stack(per_scale).astype(np.float64)
    return stack, (stack.max(0) if fusion == "max" else stack.mean(0))


# ------------------------------------------------------------------ Caffe: tests

@requires_caffe
@pytest.mark.parametrize("fusion", M.FUSIONS)
def test_scores_equal_fused_single_scale_nets(fusion):
    ms, model = _tiny_msc(fusion)
    x = np.random.default_rng(1).normal(0, 20, (1, 3) + HW).astype(np.float32)
    scores = model.forward(x)[0]
    per_scale, expected = _single_scale_reference(model, x, M.SCALES, fusion)
    # the scales really differ, so a wrong fusion could not pass
    assert np.abs(per_scale[0] - per_scale[2]).max() > 0.1 * np.abs(per_scale).max()
    np.testing.assert_allclose(scores, expected, rtol=1e-4,
                               atol=1e-4 * np.abs(expected).max())
    for blob, ref in zip(ms.scale_blobs, per_scale):
        np.testing.assert_allclose(model.net.blobs[blob].data[0], ref, rtol=1e-4,
                                   atol=1e-4 * np.abs(ref).max())


@requires_caffe
def test_a_one_scale_member_at_100_percent_is_the_base_net():
    ms, model = _tiny_msc("max", scales=(1.0,))
    base = _net(zoo.build("tiny_synthetic", input_hw=HW), "score")
    for name, blobs in base.net.params.items():
        for k, blob in enumerate(blobs):
            blob.data[...] = model.net.params[name][k].data
    x = np.random.default_rng(2).normal(0, 20, (1, 3) + HW).astype(np.float32)
    np.testing.assert_array_equal(model.forward(x), base.forward(x))


@requires_caffe
@pytest.mark.parametrize("scale", [0.75, 0.5])
def test_a_one_scale_member_matches_its_reference(scale):
    _, model = _tiny_msc("max", scales=(scale,))
    x = np.random.default_rng(3).normal(0, 20, (1, 3) + HW).astype(np.float32)
    _, expected = _single_scale_reference(model, x, (scale,), "max")
    np.testing.assert_allclose(model.forward(x)[0], expected, rtol=1e-4,
                               atol=1e-4 * np.abs(expected).max())


def _smooth_net(hw, classes=3):
    """conv 3x3 -> TanH -> conv 3x3 -> TanH -> conv 1x1 (no kinks but the fusion's)."""
    layers = ['layer { name: "input" type: "Input" top: "data" '
              'input_param { shape { dim: 1 dim: 3 dim: %d dim: %d } } }' % hw]
    bottom = "data"
    for i, (nout, ks) in enumerate([(6, 3), (6, 3), (classes, 1)]):
        top = "score" if i == 2 else "conv%d" % i
        layers.append('layer { name: "%s" type: "Convolution" bottom: "%s" top: "%s" '
                      'convolution_param { num_output: %d kernel_size: %d pad: %d } }'
                      % (top, bottom, top, nout, ks, ks // 2))
        if i < 2:
            layers.append('layer { name: "tanh%d" type: "TanH" bottom: "%s" top: "%s" }'
                          % (i, top, top))
        bottom = top
    return "\n".join(layers)


@requires_caffe
@pytest.mark.parametrize("fusion", M.FUSIONS)
def test_input_gradient_matches_finite_differences(fusion):
    hw = (12, 16)
    ms = M.wrap(_smooth_net(hw), "data", "score", fusion=fusion)
    model = _net(_text(ms), ms.score_blob)
    rng = np.random.default_rng(4)
    _randomize(model.net, rng, scale=0.5)
    x = rng.normal(0, 1, (1, 3) + hw).astype(np.float32)
    r = rng.normal(0, 1, model.forward(x).shape).astype(np.float32)
    g = model.input_gradient(x, r)
    assert np.abs(g).max() > 0

    net = model.net
    winners = []

    def objective(v):
        out = float(np.sum(r.astype(np.float64) * model.forward(v.astype(np.float32))))
        winners.append(np.argmax(np.stack([net.blobs[b].data.copy() for b in ms.scale_blobs]),
                                 axis=0))
        return out

    idx = sample_indices(x.shape, 60, seed=5)
    numeric = np.full(x.shape, np.nan)
    skip = np.zeros(x.shape, bool)
    flat = x.reshape(-1)
    for i in idx:
        winners.clear()
        orig = flat[i]
        xp = x.copy().reshape(-1)
        xp[i] = orig + 1e-2
        up = objective(xp.reshape(x.shape))
        xp[i] = orig - 1e-2
        down = objective(xp.reshape(x.shape))
        numeric.reshape(-1)[i] = (up - down) / 2e-2
        # Caffe's rule: skip a point within a step of a kink (a MAX winner switch)
        skip.reshape(-1)[i] = fusion == "max" and not np.array_equal(*winners)
    assert (~skip.reshape(-1)[idx]).sum() >= 40
    assert_gradient_close(g, numeric, threshold=1e-2, skip=skip)


@requires_caffe
def test_max_fusion_routes_the_gradient_to_the_winning_scale_only():
    ms, model = _tiny_msc("max")
    rng = np.random.default_rng(6)
    x = rng.normal(0, 20, (1, 3) + HW).astype(np.float32)
    scores = model.forward(x)
    r = rng.normal(0, 1, scores.shape).astype(np.float32)
    model.input_gradient(x, r)
    stack = np.stack([model.net.blobs[b].data[0].copy() for b in ms.scale_blobs])
    win = np.argmax(stack, axis=0)          # Caffe takes the first maximum on ties
    counts = [(win == s).sum() for s in range(len(ms.scales))]
    assert min(counts) > 0, "every scale should win somewhere for this test to bite"
    for s, blob in enumerate(ms.scale_blobs):
        diff = model.net.blobs[blob].diff[0]
        np.testing.assert_array_equal(diff[win == s], r[0][win == s])
        assert np.all(diff[win != s] == 0)


@requires_caffe
def test_avg_fusion_sends_a_third_to_every_scale():
    ms, model = _tiny_msc("avg")
    rng = np.random.default_rng(7)
    x = rng.normal(0, 20, (1, 3) + HW).astype(np.float32)
    r = rng.normal(0, 1, model.forward(x).shape).astype(np.float32)
    model.input_gradient(x, r)
    for blob in ms.scale_blobs:
        np.testing.assert_allclose(model.net.blobs[blob].diff, r / 3, rtol=1e-6)


@requires_caffe
def test_a_single_scale_caffemodel_loads_into_every_copy(tmp_path):
    base = _net(zoo.build("tiny_synthetic", input_hw=HW), "score")
    _randomize(base.net, np.random.default_rng(8))
    path = str(tmp_path / "single.caffemodel")
    base.net.save(path)
    ms = M.multiscale_net("tiny_synthetic", HW)
    from caffe_attacks.caffe_net import CaffeNet
    model = CaffeNet(_text(ms), path, input_blob="data", score_blob=ms.score_blob)
    for name, blobs in base.net.params.items():
        for suffix in ("", "_res075", "_res05"):
            for k, blob in enumerate(blobs):
                np.testing.assert_array_equal(model.net.params[name + suffix][k].data, blob.data)


@requires_caffe
@requires_caffe
def test_reduced_width_deeplab_msc_loads_and_fuses_at_65():
    """The real generator path (ResNet-101 trunk, named params) at a small width."""
    text = zoo.build(MSC, input_hw=(65, 65), width_mult=1 / 16)
    model = _net(text, "fc1_interp")
    blobs = model.net.blobs
    assert blobs["data_res075"].data.shape[2:] == (49, 49)
    assert blobs["fc1_voc12_res075"].data.shape[2:] == (7, 7)
    assert blobs["fc_fusion"].data.shape[2:] == blobs["fc1_voc12"].data.shape[2:] == (9, 9)
    assert blobs["fc1_interp"].data.shape[2:] == (65, 65)
    # shared: one blob in memory for conv1 and its copies
    model.net.params["conv1"][0].data[...] = 0.5
    assert np.all(model.net.params["conv1_res05"][0].data == 0.5)


BN_NET = """
layer { name: "input" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 16 dim: 16 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "bn_conv1" type: "BatchNorm" bottom: "conv1" top: "conv1"
  batch_norm_param { use_global_stats: true }
  param { lr_mult: 0 } param { lr_mult: 0 } param { lr_mult: 0 } }
layer { name: "score" type: "Convolution" bottom: "conv1" top: "score"
  convolution_param { num_output: 3 kernel_size: 1 } }
"""


def test_batchnorm_statistics_are_shared_after_loading_a_single_scale_model(tmp_path):
    """Caffe clears 3-spec BatchNorm sharing on load; CaffeNet restores it from the owner."""
    pytest.importorskip("caffe")
    from caffe_attacks.caffe_net import CaffeNet
    single = _net(BN_NET, "score")
    rng = np.random.default_rng(0)
    _randomize(single.net, rng)
    single.net.params["bn_conv1"][1].data[...] = rng.uniform(0.5, 2.0, 4)   # variances
    single.net.params["bn_conv1"][2].data[...] = 1.0                        # scale factor
    weights = str(tmp_path / "single.caffemodel")
    single.net.save(weights)

    ms = M.wrap(BN_NET, "data", "score", fusion="max")
    path = tmp_path / "ms.prototxt"
    path.write_text(_text(ms))
    model = CaffeNet(str(path), weights, score_blob=ms.score_blob)
    copies = [n for n in model.net.params if n.startswith("bn_conv1") and n != "bn_conv1"]
    assert copies, "the multiscale net has BatchNorm copies"
    for name in copies:
        for dst, src in zip(model.net.params[name], single.net.params["bn_conv1"]):
            np.testing.assert_array_equal(dst.data, src.data)
    # the 100% member equals the single-scale net
    x = rng.normal(0, 30, (1, 3, 16, 16)).astype(np.float32)
    one = M.wrap(BN_NET, "data", "score", scales=(1.0,), fusion="max")
    path1 = tmp_path / "one.prototxt"
    path1.write_text(_text(one))
    np.testing.assert_allclose(CaffeNet(str(path1), weights, score_blob=one.score_blob).forward(x),
                               single.forward(x), rtol=1e-5, atol=1e-5)


def test_torch_engine_restores_the_same_batchnorm_sharing(tmp_path):
    pytest.importorskip("caffe")
    pytest.importorskip("torch")
    from caffe_attacks.caffe_net import CaffeNet
    from caffe_attacks.torch_net import TorchNet
    single = _net(BN_NET, "score")
    rng = np.random.default_rng(1)
    _randomize(single.net, rng)
    single.net.params["bn_conv1"][1].data[...] = rng.uniform(0.5, 2.0, 4)
    single.net.params["bn_conv1"][2].data[...] = 1.0
    weights = str(tmp_path / "single.caffemodel")
    single.net.save(weights)
    ms = M.wrap(BN_NET, "data", "score", fusion="avg")
    text = _text(ms)
    x = rng.normal(0, 30, (1, 3, 16, 16)).astype(np.float32)
    ref = CaffeNet(text, weights, score_blob=ms.score_blob).forward(x)
    ours = TorchNet(text, weights, input_blob="data", score_blob=ms.score_blob).forward(x)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)
