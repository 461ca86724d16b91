"""caffe_net.CaffeNet: input gradients through net.backward.

Checked against finite differences (Caffe GradientChecker rules) and against
a Caffe SoftmaxWithLoss layer (normalize: false, ignore_label 255) appended to
the same net.
"""
import numpy as np
import pytest

caffe = pytest.importorskip("caffe")

from caffe_attacks.caffe_net import CaffeNet  # noqa: E402
from caffe_attacks.losses import softmax_cross_entropy  # noqa: E402
from tests.gradcheck import assert_gradient_close, sample_indices  # noqa: E402

TRUNK = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 10 dim: 10 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "relu1" }
layer { name: "pool1" type: "Pooling" bottom: "relu1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "sq" type: "Python" bottom: "pool1" top: "sq"
  python_param { module: "tests.pylayers" layer: "Square" param_str: '{"scale": 0.5}' } }
layer { name: "up" type: "Deconvolution" bottom: "sq" top: "up"
  convolution_param { num_output: 3 kernel_size: 4 stride: 2 } }
layer { name: "score" type: "Crop" bottom: "up" bottom: "data" top: "score" crop_param { axis: 2 offset: 1 } }
"""

WITH_LOSS = TRUNK + """
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 1 dim: 1 dim: 10 dim: 10 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss"
  loss_param { ignore_label: 255 normalize: false } }
"""


def _fill(net, seed=0, std=0.5):
    rng = np.random.default_rng(seed)
    for name in net.params:
        for blob in net.params[name]:
            blob.data[...] = rng.normal(0, std, blob.data.shape)


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.prototxt"
    path.write_text(TRUNK)
    model = CaffeNet(str(path))
    _fill(model.net)
    return model


def test_python_layer_runs_forward_and_backward(tiny):
    x = np.random.default_rng(3).normal(size=(1, 2, 10, 10)).astype(np.float32)
    tiny.forward(x)
    pool = tiny.net.blobs["pool1"].data
    np.testing.assert_allclose(tiny.net.blobs["sq"].data, 0.5 * pool ** 2, rtol=1e-6)
    tiny.net.blobs["sq"].diff[...] = 1.0
    tiny.net.backward(start="sq", end="sq")
    np.testing.assert_allclose(tiny.net.blobs["pool1"].diff, pool, rtol=1e-6)


def test_forward_shape_and_reshape(tiny):
    assert tiny.forward(np.zeros((1, 2, 10, 10), np.float32)).shape == (1, 3, 10, 10)
    assert tiny.forward(np.zeros((2, 2, 14, 12), np.float32)).shape == (2, 3, 14, 12)
    assert tiny.num_classes == 3
    with pytest.raises(ValueError):
        tiny.forward(np.zeros((1, 3, 10, 10), np.float32))


def _kink_pattern(model):
    """ReLU signs and max-pool winners: a change means a probe crossed a kink."""
    conv = model.net.blobs["conv1"].data
    relu = model.net.blobs["relu1"].data
    pooled = np.repeat(np.repeat(model.net.blobs["pool1"].data, 2, 2), 2, 3)
    return np.concatenate([(conv > 0).ravel(), (relu == pooled[..., :10, :10]).ravel()])


def test_input_gradient_matches_finite_differences(tiny):
    rng = np.random.default_rng(1)
    x = rng.normal(0, 2, size=(1, 2, 10, 10)).astype(np.float32)
    g = rng.normal(size=(1, 3, 10, 10)).astype(np.float32)
    analytic = tiny.input_gradient(x, g)
    assert np.abs(analytic).max() > 0

    step = 1e-2
    numeric = np.full(x.shape, np.nan)
    skipped = 0
    for i in sample_indices(x.shape, 80):
        xp, xm = x.copy(), x.copy()
        xp.reshape(-1)[i] += step
        xm.reshape(-1)[i] -= step
        fp = float((tiny.forward(xp) * g).sum(dtype=np.float64))
        kp = _kink_pattern(tiny)
        fm = float((tiny.forward(xm) * g).sum(dtype=np.float64))
        if not np.array_equal(kp, _kink_pattern(tiny)):
            skipped += 1
            continue
        numeric.reshape(-1)[i] = (fp - fm) / (2 * step)
    assert skipped < 20
    assert_gradient_close(analytic, numeric, threshold=1e-2)


def test_input_gradient_is_wrong_for_wrong_dscores(tiny):
    """Guard: the comparison above would notice a gradient of another loss."""
    rng = np.random.default_rng(1)
    x = rng.normal(0, 2, size=(1, 2, 10, 10)).astype(np.float32)
    g = rng.normal(size=(1, 3, 10, 10)).astype(np.float32)
    a = tiny.input_gradient(x, g)
    b = tiny.input_gradient(x, -g)
    np.testing.assert_allclose(a, -b, rtol=1e-5, atol=1e-6)
    c = tiny.input_gradient(x, g * (np.arange(3)[None, :, None, None] == 0))
    assert not np.allclose(a, c)


@pytest.mark.parametrize("with_void", [False, True])
def test_injected_gradient_equals_softmax_with_loss(tmp_path, with_void):
    rng = np.random.default_rng(2)
    x = rng.normal(0, 2, size=(1, 2, 10, 10)).astype(np.float32)
    labels = rng.integers(0, 3, size=(1, 10, 10))
    if with_void:
        labels[0, 2:5, 3:8] = 255

    trunk_path = tmp_path / "trunk.prototxt"
    trunk_path.write_text(TRUNK)
    model = CaffeNet(str(trunk_path))
    # Moderate scores: Caffe clamps probabilities at FLT_MIN in the loss value.
    _fill(model.net, seed=5, std=0.2)
    loss, dscores = softmax_cross_entropy(model.forward(x), labels)
    ours = model.input_gradient(x, dscores)

    loss_path = tmp_path / "loss.prototxt"
    loss_path.write_text("force_backward: true\n" + WITH_LOSS)
    ref = caffe.Net(str(loss_path), caffe.TEST)
    _fill(ref, seed=5, std=0.2)
    ref.blobs["data"].data[...] = x
    ref.blobs["label"].data[...] = labels[:, None]
    out = ref.forward()
    ref.backward()
    assert out["loss"] == pytest.approx(loss, rel=1e-5)
    np.testing.assert_allclose(ours, ref.blobs["data"].diff, rtol=1e-5,
                               atol=1e-6 * np.abs(ours).max())


def test_score_blob_before_softmax(tmp_path):
    """Gradient injected at a logits blob that a Softmax layer consumes."""
    path = tmp_path / "prob.prototxt"
    path.write_text(TRUNK + 'layer { name: "prob" type: "Softmax" bottom: "score" top: "prob" }')
    model = CaffeNet(str(path), score_blob="score")
    _fill(model.net)
    plain = tmp_path / "plain.prototxt"
    plain.write_text(TRUNK)
    ref = CaffeNet(str(plain))
    _fill(ref.net)
    x = np.random.default_rng(4).normal(size=(1, 2, 10, 10)).astype(np.float32)
    g = np.random.default_rng(5).normal(size=(1, 3, 10, 10)).astype(np.float32)
    np.testing.assert_allclose(model.input_gradient(x, g), ref.input_gradient(x, g), rtol=1e-6)


def test_unknown_blob_and_missing_weights(tmp_path):
    path = tmp_path / "t.prototxt"
    path.write_text(TRUNK)
    with pytest.raises(ValueError, match="nope"):
        CaffeNet(str(path), score_blob="nope")
    with pytest.raises(FileNotFoundError, match="missing.caffemodel"):
        CaffeNet(str(path), weights=str(tmp_path / "missing.caffemodel"))


def test_eps_batched_attack_equals_the_loop_through_caffe(tiny):
    from caffe_attacks.attacks import ifgsm_ll
    x = np.random.default_rng(9).normal(0, 20, size=(1, 2, 10, 10)).astype(np.float32)
    loop = ifgsm_ll(tiny, x, [1, 4])
    batched = ifgsm_ll(tiny, x, [1, 4], batch_eps=True)
    for a, b in zip(loop, batched):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-4)
    assert tiny.forward(x).shape[0] == 1
