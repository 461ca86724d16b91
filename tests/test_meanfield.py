"""MultiStageMeanfield: finite differences of the whole layer, an explicit
dense-matrix reference, pydensecrf2, and (with pycaffe) the Python layer in
a net, including blob binding by the name ``inference1``."""
import json
import os
import tempfile

import numpy as np
import pytest

from caffe_attacks.layers.meanfield import (DEFAULTS, MeanfieldInference, bilateral_features,
                                           deeplab_crf_layer, initial_blobs,
                                           parse_meanfield_params, softmax_rows,
                                           spatial_features)
from tests.conftest import requires_caffe
from tests.gradcheck import assert_gradient_close, numeric_gradient, sample_indices


def make_case(height=7, width=8, channels=4, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    image = rng.uniform(-100, 100, (1, 3, height, width))
    image[:, :, :, : width // 2] = 20.0          # a flat region next to a noisy one
    unary = rng.normal(scale=2.0, size=(1, channels, height, width))
    q0 = rng.normal(scale=2.0, size=unary.shape)
    return image.astype(dtype), unary.astype(dtype), q0.astype(dtype)


def small_params(**changes):
    params = dict(DEFAULTS, theta_alpha=4.0, theta_beta=30.0, theta_gamma=2.0)
    params.update(changes)
    return params


def random_blobs(channels, seed=1):
    """Non-symmetric, non-diagonal blobs: they expose any transposed product."""
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(1, 1, channels, channels)) for _ in range(3)]


# ---------------------------------------------------------------- numpy tier

def test_matches_dense_matrix_reference():
    """The iteration written out in (C, P) layout with explicit kernel matrices."""
    image, unary, q0 = make_case()
    params = small_params(num_iterations=4)
    blobs = random_blobs(4)
    ours = MeanfieldInference(params).forward(unary, q0, image, blobs)

    from caffe_attacks.lattice import PermutohedralLattice
    c, p = 4, 56
    ks = PermutohedralLattice(spatial_features(7, 8, 2.0)).filter(np.eye(p))
    kb = PermutohedralLattice(bilateral_features(image[0], 4.0, 30.0)).filter(np.eye(p))
    ws, wb, mu = (b[0, 0] for b in blobs)
    u = unary[0].reshape(c, p)
    prev = q0[0].reshape(c, p)
    for _ in range(4):
        q = np.exp(prev) / np.exp(prev).sum(axis=0)
        s = (q @ ks.T) / (ks.sum(axis=1) + 1e-20)     # S[c, i] = sum_j K_ij Q[c, j] / (K 1)_i
        b = (q @ kb.T) / (kb.sum(axis=1) + 1e-20)
        prev = u - mu @ (ws @ s + wb @ b)
    np.testing.assert_allclose(ours[0].reshape(c, p), prev, rtol=1e-9, atol=1e-9)


def test_zero_weights_return_the_unary():
    image, unary, q0 = make_case()
    blobs = [np.zeros((1, 1, 4, 4)), np.zeros((1, 1, 4, 4)), -np.eye(4)[None, None]]
    out = MeanfieldInference(small_params()).forward(unary, q0, image, blobs)
    np.testing.assert_array_equal(out, unary)


def test_backward_matches_finite_differences():
    image, unary, q0 = make_case()
    params = small_params(num_iterations=3)
    blobs = random_blobs(4)
    weights = np.random.default_rng(7).normal(size=unary.shape)
    inference = MeanfieldInference(params)

    def loss(u=unary, q=q0, b=blobs):
        return float((inference.forward(u, q, image, b) * weights).sum())

    loss()
    d_unary, d_q0, d_blobs = inference.backward(weights)
    idx = sample_indices(unary.shape, 40)
    num_u = numeric_gradient(lambda x: loss(u=x), unary, step=1e-4, indices=idx)
    num_q = numeric_gradient(lambda x: loss(q=x), q0, step=1e-4, indices=idx)
    # float64 throughout, so a tighter threshold than Caffe's float32 1e-2.
    assert_gradient_close(d_unary, num_u, threshold=1e-5)
    assert_gradient_close(d_q0, num_q, threshold=1e-5)
    for k in range(3):
        def loss_k(x, k=k):
            return loss(b=[x if i == k else blobs[i] for i in range(3)])
        num_b = numeric_gradient(loss_k, blobs[k], step=1e-4)
        assert_gradient_close(d_blobs[k].reshape(blobs[k].shape), num_b, threshold=1e-5)


def test_float32_gradient_under_caffe_rules():
    image, unary, q0 = make_case(dtype=np.float32)
    inference = MeanfieldInference(small_params(num_iterations=10))
    blobs = [b.astype(np.float32) for b in initial_blobs(4, DEFAULTS)]
    weights = np.random.default_rng(8).normal(size=unary.shape).astype(np.float32)

    def loss(u):
        return float((inference.forward(u, q0, image, blobs).astype(np.float64) * weights).sum())

    loss(unary)
    d_unary, _, _ = inference.backward(weights)
    numeric = numeric_gradient(loss, unary, step=1e-2, indices=sample_indices(unary.shape, 30))
    assert_gradient_close(d_unary, numeric, threshold=1e-2)


def test_changing_the_image_rebuilds_the_bilateral_lattice():
    image, unary, q0 = make_case()
    other = image[:, :, ::-1, :].copy()
    blobs = initial_blobs(4, DEFAULTS)
    reused = MeanfieldInference(small_params())
    reused.forward(unary, q0, image, blobs)
    again = reused.forward(unary, q0, other, blobs)
    fresh = MeanfieldInference(small_params()).forward(unary, q0, other, blobs)
    first = MeanfieldInference(small_params()).forward(unary, q0, image, blobs)
    np.testing.assert_array_equal(again, fresh)
    assert np.abs(again - first).max() > 1e-3     # the image does matter


def test_variable_sizes_and_batches():
    params = small_params()
    inference = MeanfieldInference(params)
    for height, width in [(5, 6), (9, 4), (5, 6)]:
        image, unary, q0 = make_case(height, width, seed=height)
        batch = inference.forward(np.concatenate([unary, unary[:, ::-1]]),
                                  np.concatenate([q0, q0]),
                                  np.concatenate([image, image[:, ::-1]]),
                                  initial_blobs(4, params))
        single = MeanfieldInference(params).forward(unary, q0, image, initial_blobs(4, params))
        np.testing.assert_array_equal(batch[:1], single)
        assert batch.shape == (2, 4, height, width)


def test_params_parsing():
    params = parse_meanfield_params('{"num_iterations": 5, "theta_alpha": 80}')
    assert params["num_iterations"] == 5 and params["theta_alpha"] == 80.0
    assert params["theta_beta"] == 3.0 and params["compatibility"] == "potts"
    for bad in ['{"theta_alpha": 0}', '{"num_iterations": 1.5}', '{"unknown": 1}',
                '{"compatibility": "label"}', '[1]']:
        with pytest.raises(ValueError):
            parse_meanfield_params(bad)


def test_initial_blobs_are_the_originals():
    ws, wb, mu = initial_blobs(21, DEFAULTS)
    assert ws.shape == wb.shape == mu.shape == (1, 1, 21, 21)
    np.testing.assert_array_equal(ws[0, 0], 3 * np.eye(21))     # spatial.par: 21 x "3"
    np.testing.assert_array_equal(wb[0, 0], 5 * np.eye(21))     # bilateral.par: 21 x "5"
    np.testing.assert_array_equal(mu[0, 0], -np.eye(21))        # POTTS


def test_deeplab_crf_layer_settings():
    spec = deeplab_crf_layer(21)
    params = json.loads(spec["param_str"])
    assert parse_meanfield_params(spec["param_str"]) == spec["params"]
    assert (params["theta_alpha"], params["theta_beta"], params["theta_gamma"]) == (67, 3, 1)
    assert params["num_iterations"] == 10
    np.testing.assert_array_equal(spec["blobs"][0][0, 0], 3 * np.eye(21))   # pos_w
    np.testing.assert_array_equal(spec["blobs"][1][0, 0], 4 * np.eye(21))   # bi_w


@pytest.mark.parametrize("variant", ["crfrnn", "deeplab"])
def test_matches_pydensecrf(variant):
    """Same mean-field in Kraehenbuehl's C++ (pydensecrf2).

    Mapping: energy = -unary, Potts weights = diagonal W, NORMALIZE_AFTER
    (crfasrnn's 1 / (K 1 + eps)).  pydensecrf's Q_T equals softmax of our
    out_T: its Q_0 = softmax(unary) is our Q_1.  Observed max marginal
    difference 4e-5 (float32 in both); bound 2e-4.
    """
    dcrf = pytest.importorskip("pydensecrf.densecrf")
    height, width, channels = 20, 24, 5
    image, unary, _ = make_case(height, width, channels, seed=3, dtype=np.float32)
    if variant == "crfrnn":
        params = small_params(theta_alpha=8.0, theta_beta=20.0, theta_gamma=3.0)
    else:
        params = deeplab_crf_layer(channels)["params"]
    ours = MeanfieldInference(params).forward(unary, unary, image, initial_blobs(channels, params))
    ours = softmax_rows(ours[0].reshape(channels, -1).T).T

    crf = dcrf.DenseCRF(height * width, channels)
    crf.setUnaryEnergy(np.ascontiguousarray(-unary[0].reshape(channels, -1)))
    crf.addPairwiseEnergy(np.ascontiguousarray(spatial_features(height, width, params["theta_gamma"]).T),
                          compat=params["spatial_filter_weight"], kernel=dcrf.DIAG_KERNEL,
                          normalization=dcrf.NORMALIZE_AFTER)
    crf.addPairwiseEnergy(np.ascontiguousarray(
        bilateral_features(image[0], params["theta_alpha"], params["theta_beta"]).T),
        compat=params["bilateral_filter_weight"], kernel=dcrf.DIAG_KERNEL,
        normalization=dcrf.NORMALIZE_AFTER)
    theirs = np.array(crf.inference(params["num_iterations"]))
    assert np.abs(ours - theirs).max() < 2e-4
    # ...and the CRF did something: far from the unary's own softmax.
    assert np.abs(theirs - softmax_rows(unary[0].reshape(channels, -1).T).T).max() > 0.1


# ---------------------------------------------------------------- Caffe tier

def _net_text(channels, height, width, name="inference1", params=None):
    param_str = json.dumps(params or small_params()).replace('"', '\\"')
    return """name: "crf_test" force_backward: true
layer { name: "unary" type: "Input" top: "unary"
        input_param { shape { dim: 1 dim: %(c)d dim: %(h)d dim: %(w)d } } }
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 3 dim: %(h)d dim: %(w)d } } }
layer { name: "splitting" type: "Split" bottom: "unary" top: "u" top: "Q0" }
layer { name: "%(name)s" type: "Python" bottom: "u" bottom: "Q0" bottom: "data" top: "pred"
        python_param { module: "caffe_attacks.layers.meanfield" layer: "MultiStageMeanfield"
                       param_str: "%(ps)s" } }
""" % dict(c=channels, h=height, w=width, name=name, ps=param_str)


def _load(text, weights=None):
    import caffe
    caffe.set_mode_cpu()
    with tempfile.NamedTemporaryFile("w", suffix=".prototxt", delete=False) as f:
        f.write(text)
    try:
        if weights is None:
            return caffe.Net(f.name, caffe.TEST)
        return caffe.Net(f.name, caffe.TEST, weights=weights)
    finally:
        os.unlink(f.name)


@requires_caffe
def test_caffe_layer_forward_backward():
    image, unary, _ = make_case(dtype=np.float32)
    params = small_params(num_iterations=3)
    net = _load(_net_text(4, 7, 8, params=params))
    blobs = random_blobs(4)
    for blob, value in zip(net.params["inference1"], blobs):
        blob.data[...] = value
    net.blobs["unary"].data[...] = unary
    net.blobs["data"].data[...] = image
    net.forward()
    reference = MeanfieldInference(params)
    expected = reference.forward(unary, unary, image, [b.astype(np.float32) for b in blobs])
    np.testing.assert_allclose(net.blobs["pred"].data, expected, rtol=1e-5, atol=1e-5)

    top_diff = np.random.default_rng(9).normal(size=unary.shape).astype(np.float32)
    net.blobs["pred"].diff[...] = top_diff
    net.blobs["data"].diff[...] = 123.0     # must be overwritten: no gradient to the image
    net.backward(start="inference1")
    d_unary, d_q0, _ = reference.backward(top_diff)
    # The Split sums the two paths: unary and Q0 are the same blob.
    np.testing.assert_allclose(net.blobs["unary"].diff, d_unary + d_q0, rtol=1e-4, atol=1e-5)
    assert not net.blobs["data"].diff.any()


@requires_caffe
def test_caffe_blobs_bind_by_name_inference1():
    net = _load(_net_text(21, 5, 6))
    shapes = [b.data.shape for b in net.params["inference1"]]
    assert shapes == [(1, 1, 21, 21)] * 3                 # the public model's shapes
    np.testing.assert_array_equal(net.params["inference1"][2].data[0, 0], -np.eye(21))
    trained = random_blobs(21, seed=5)
    for blob, value in zip(net.params["inference1"], trained):
        blob.data[...] = value
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "crf.caffemodel")
        net.save(path)
        loaded = _load(_net_text(21, 5, 6), weights=path)
        other = _load(_net_text(21, 5, 6, name="crf_other"), weights=path)
    for blob, value in zip(loaded.params["inference1"], trained):
        np.testing.assert_allclose(blob.data, value.astype(np.float32))
    # A differently named layer keeps its initialisation (copy_from goes by name).
    np.testing.assert_array_equal(other.params["crf_other"][0].data[0, 0], 3 * np.eye(21))


def test_crf_variant_for_sweeps():
    from caffe_attacks.layers.meanfield import crf_variant
    learned = random_blobs(21, seed=11)
    same = crf_variant({}, learned)
    for a, b in zip(same["blobs"], learned):
        np.testing.assert_allclose(a, b.astype(np.float32))    # w2 = 3: the public model
    assert same["params"]["theta_alpha"] == 160.0
    scaled = crf_variant({"w2": 6, "theta_alpha": 1}, learned)
    np.testing.assert_allclose(scaled["blobs"][0], 2 * learned[0].astype(np.float32), rtol=1e-6)
    np.testing.assert_allclose(scaled["blobs"][1], learned[1].astype(np.float32))
    assert json.loads(scaled["param_str"])["theta_alpha"] == 1.0
    replaced = crf_variant({"w2": 5}, learned, w2_mode="replace_diagonal")
    np.testing.assert_array_equal(replaced["blobs"][0][0, 0], 5 * np.eye(21))
    with pytest.raises(ValueError):
        crf_variant({"theta_beta": -1})


def test_fused_kernels_match_numpy():
    from caffe_attacks.layers import meanfield
    rng = np.random.default_rng(12)
    x = rng.normal(scale=5, size=(50, 7))
    expected = np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(meanfield.softmax_rows(x), expected, rtol=1e-12)
    np.testing.assert_allclose(meanfield._softmax_rows_numpy(x), expected, rtol=1e-12)
    u, s, b = (rng.normal(size=(50, 7)) for _ in range(3))
    a1, a2 = rng.normal(size=(7, 7)), rng.normal(size=(7, 7))
    np.testing.assert_allclose(meanfield.pairwise_update(u, s, a1, b, a2),
                               u - s @ a1.T - b @ a2.T, rtol=1e-10, atol=1e-12)
    ds, db, g_s, g_b = meanfield.message_backward(u, s, b, a1, a2)
    for got, want in zip((ds, db, g_s, g_b), (-u @ a1, -u @ a2, u.T @ s, u.T @ b)):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    q = meanfield.softmax_rows(x)
    jacobian_product = np.einsum("pk,pkc->pc", s, np.einsum("pc,kc->pkc", q, np.eye(7))
                                 - np.einsum("pk,pc->pkc", q, q))
    np.testing.assert_allclose(meanfield.softmax_backward(q, s), jacobian_product, rtol=1e-10, atol=1e-12)


@requires_caffe
def test_caffe_backward_matches_finite_differences():
    image, unary, _ = make_case(dtype=np.float32)
    net = _load(_net_text(4, 7, 8, params=small_params(num_iterations=5)))
    net.blobs["data"].data[...] = image
    weights = np.random.default_rng(13).normal(size=unary.shape).astype(np.float32)

    def loss(u):
        net.blobs["unary"].data[...] = u
        net.forward()
        return float((net.blobs["pred"].data.astype(np.float64) * weights).sum())

    loss(unary)
    net.blobs["pred"].diff[...] = weights
    net.backward(start="inference1")
    analytic = net.blobs["unary"].diff.copy()
    numeric = numeric_gradient(loss, unary, step=1e-2, indices=sample_indices(unary.shape, 25))
    assert_gradient_close(analytic, numeric, threshold=1e-2)
