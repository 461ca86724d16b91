"""Caffe-exact numerics: float32 softmax and loss gradient, the authors' least-likely
rule, the target_blob protocol key and the authors' input preparation."""
import numpy as np
import pytest

from caffe_attacks import class_rank, losses
from caffe_attacks.preprocess import Protocol
from tests.conftest import requires_caffe
from tests.introsort import scalar_argsort


def _saturated_probabilities(c, n, std, seed):
    rng = np.random.default_rng(seed)
    scores = (rng.standard_normal((1, c, 1, n)) * std).astype(np.float32)
    return losses.caffe_softmax(scores)


@pytest.mark.parametrize("c", [5, 16, 17, 19, 21])
@pytest.mark.parametrize("std", [3.0, 30.0, 60.0])
def test_least_likely_is_position_c_minus_1_of_the_scalar_introsort(c, std):
    prob = _saturated_probabilities(c, 3000, std, seed=c)
    expected = [scalar_argsort(list(-prob[0, :, 0, j]))[c - 1] for j in range(prob.shape[3])]
    got = class_rank.least_likely_labels(prob)[0, 0]
    np.testing.assert_array_equal(got, expected)


def test_ties_exist_and_are_not_the_first_or_last_index():
    """The rule is neither argmin (first tie) nor a stable sort (last tie)."""
    prob = _saturated_probabilities(19, 3000, 30.0, seed=1)
    tied = ((prob == prob.min(axis=1, keepdims=True)).sum(axis=1) > 1)[0, 0]
    assert 0.1 < tied.mean() < 0.9
    got = class_rank.least_likely_labels(prob)[0, 0]
    first = prob.argmin(axis=1)[0, 0]
    last = np.argsort(-prob, axis=1, kind="stable")[0, -1, 0]
    assert (got[tied] != first[tied]).any() and (got[tied] != last[tied]).any()
    np.testing.assert_array_equal(got[~tied], first[~tied])


def test_predicted_labels_is_argmax_with_first_index_on_ties():
    values = np.array([[[[1.0]], [[3.0]], [[3.0]]]], np.float32)
    assert class_rank.predicted_labels(values)[0, 0, 0] == 1


def test_saturated_logits_give_an_exact_zero_gradient():
    """p rounds to exactly 1 in float32: Caffe's gradient is 0 there, not -sum(p_other)."""
    scores = np.array([[[[30.0]], [[0.0]], [[-5.0]]]], np.float32)
    _, grad = losses.softmax_cross_entropy(scores, np.array([[[0]]]))
    assert grad[0, 0, 0, 0] == 0.0 and np.sign(grad[0, 0, 0, 0]) == 0
    assert grad[0, 1, 0, 0] > 0


def test_caffe_softmax_sums_channel_by_channel_in_float32():
    scores = np.random.default_rng(2).normal(0, 5, (2, 7, 3, 4)).astype(np.float32)
    prob = losses.caffe_softmax(scores)
    assert prob.dtype == np.float32
    shifted = scores - scores.max(axis=1, keepdims=True)
    e = np.exp(shifted.astype(np.float64)).astype(np.float32)
    total = np.float32(0) + e[:, 0]
    for c in range(1, 7):
        total = (total + e[:, c]).astype(np.float32)
    np.testing.assert_array_equal(prob, e / total[:, None])
    np.testing.assert_allclose(prob, losses.softmax(scores), rtol=1e-6, atol=1e-7)


@requires_caffe
@pytest.mark.parametrize("c, std", [(19, 30.0), (21, 3.0), (5, 1.0)])
def test_numpy_softmax_against_caffes_layer(c, std):
    """Same order as Caffe: bit-equal but for glibc expf's last-ulp cases (< 0.5 %)."""
    from caffe_attacks.caffe_net import CaffeSoftmaxLoss
    rng = np.random.default_rng(c)
    scores = (rng.standard_normal((2, c, 48, 64)) * std).astype(np.float32)
    labels = rng.integers(0, c, (2, 48, 64))
    labels[0, :2] = 255
    layer = CaffeSoftmaxLoss()
    prob_caffe = layer.probabilities(scores)
    prob = losses.caffe_softmax(scores)
    assert (prob != prob_caffe).mean() < 5e-3
    np.testing.assert_allclose(prob, prob_caffe, rtol=5e-7, atol=1e-30)
    # the backward arithmetic itself is Caffe's, bit for bit
    np.testing.assert_array_equal(losses.caffe_loss_gradient(prob_caffe, labels),
                                  layer.gradient(scores, labels))


def test_protocol_target_blob_round_trip_and_validation():
    base = {"mean_bgr": None, "resize": None, "pad": None, "scores_to_labels": "crop"}
    assert Protocol.from_dict(base).target_blob == "logits"
    p = Protocol.from_dict(dict(base, target_blob="probabilities"))
    assert p.target_blob == "probabilities"
    assert Protocol.from_dict(p.to_dict()) == p
    with pytest.raises(ValueError, match="target_blob"):
        Protocol.from_dict(dict(base, target_blob="softmax"))


def test_manifest_target_blobs_follow_the_deploys_last_layer():
    """probabilities exactly where the deploy ends in a Softmax on the logits (the
    authors' Dilation10 rule); the authors' own FCN8 VOC reads the logits."""
    from caffe_attacks import weights, zoo
    from caffe_attacks.zoo import shapes
    for name in ("fcn8s_vgg_voc_authors", "dilated_context_cityscapes", "dilated_context_voc",
                 "enet_cityscapes", "segnet_vgg_voc", "pspnet101_voc"):
        spec = zoo.get(name)
        net = shapes.parse_prototxt(zoo.prototxt_path(name).read_text())
        softmax_on_logits = any(
            layer.get("type") in (["Softmax"], "Softmax")
            and spec.score_blob in (layer.get("bottom") or [])
            for layer in net.get("layer", []))
        expected = "probabilities" if softmax_on_logits else "logits"
        assert weights.model_entry(name)["input"]["target_blob"] == expected, name


def test_authors_voc_mean_and_canvas():
    """fcn8s_vgg_voc_authors: demo_voc.sh's mean, 513 canvas, within 1e-5 of their arrays."""
    from caffe_attacks import weights
    from tests.authors_loop import authors_voc_canvas
    entry = weights.model_entry("fcn8s_vgg_voc_authors")
    assert entry["input"]["mean_bgr"] == [103.939, 116.779, 123.68]
    protocol = Protocol.from_dict(entry["input"])
    image = np.random.default_rng(3).integers(0, 256, (375, 500, 3)).astype(np.uint8)
    ours, _ = protocol.prepare(image)
    theirs = authors_voc_canvas(image, [103.939, 116.779, 123.68], (513, 513))
    assert ours.shape == theirs.shape == (1, 3, 513, 513)
    assert np.abs(ours - theirs).max() <= 1e-5
    np.testing.assert_array_equal(ours, theirs.astype(np.float32))   # their data blob


def _dilated_canvas_pair(image_path, image_bgr, size, pad_size, image_dtype="float32"):
    """(ours, theirs) for the Dilation10 Cityscapes protocol on one image."""
    import os
    from caffe_attacks import weights
    from caffe_attacks.datasets.cityscapes import CityscapesSegmentation
    from tests.authors_loop import authors_dilated_canvas
    entry = weights.model_entry("dilated_context_cityscapes")
    protocol = Protocol.from_dict(entry["input"])
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(image_path))))
    data = CityscapesSegmentation(root, split="val", size=size, image_dtype=image_dtype)
    sample = data.load(data.ids[0])
    ours, _ = protocol.prepare(sample.image)
    theirs = authors_dilated_canvas(image_bgr, entry["input"]["mean_bgr"], size, pad_size)
    return ours, theirs


@pytest.mark.parametrize("image_dtype", ["float64", "float32", "uint8"])
def test_cityscapes_reader_and_protocol_match_the_authors_dilated_py(tmp_path, image_dtype):
    """The default (float64 resize) gives the float32 blob the authors' dilated.py fed
    Caffe, bit for bit; float32 rounds once more (<= 1.1e-5); uint8 rounds to grey levels."""
    import cv2
    from caffe_attacks.datasets import synthetic
    synthetic.write_cityscapes(str(tmp_path), 4, seed=2, size=(256, 128), val_fraction=0.25)
    (path,) = list(tmp_path.glob("leftImg8bit/val/*/*.png"))
    size = (96, 48)
    ours, theirs = _dilated_canvas_pair(str(path), cv2.imread(str(path)), size,
                                        (size[0] + 372, size[1] + 372), image_dtype)
    assert ours.shape == theirs.shape and ours.dtype == np.float32
    blob = theirs.astype(np.float32)
    error = np.abs(ours - theirs).max()
    if image_dtype == "float64":
        np.testing.assert_array_equal(ours, blob)
    elif image_dtype == "float32":
        assert error <= 1.1e-5
    else:
        assert 0.1 < error < 1.0    # rounding, and cv2's fixed-point uint8 weights
