"""DeepLab v2 + CRF zoo models (caffe_attacks.zoo.deeplab_crf).

Pure Python: each ``NAME+crf`` definition is its base's layers followed by the
Split and the CRF with DeepLab's DenseCRF settings. Caffe: the committed files
are the generator's; the base's caffemodel loads into the +crf net (the CRF
is reported as "only in the net" and keeps its DenseCRF weights); the CRF
output equals the numpy mean-field run on the base net's own logits; backward
to the input agrees with finite differences.
"""
import json

import numpy as np
import pytest

from caffe_attacks import zoo
from caffe_attacks.caffe_geometry import parse_prototxt
from caffe_attacks.layers.meanfield import MeanfieldInference, deeplab_crf_layer
from caffe_attacks.zoo import shapes
from caffe_attacks.zoo.deeplab_crf import BASES
from tests.conftest import requires_caffe

NAMES = sorted(BASES)


def _layers(name):
    return parse_prototxt(zoo.prototxt_path(name).read_text())["layer"]


@pytest.mark.parametrize("name", NAMES)
def test_definition_is_the_base_then_split_and_densecrf(name):
    base, logits = BASES[name]
    ours, theirs = _layers(name), _layers(base)
    assert ours[:len(theirs)] == theirs
    split, crf = ours[len(theirs):]
    assert split["type"] == ["Split"] and split["bottom"] == [logits]
    assert split["top"] == ["unary", "Q0"]
    assert crf["bottom"] == ["unary", "Q0", "data"] and crf["top"] == [zoo.get(name).score_blob]
    pp = crf["python_param"][0]
    assert pp["layer"] == ["MultiStageMeanfield"]
    assert json.loads(pp["param_str"][0]) == deeplab_crf_layer()["params"]
    assert "MultiStageMeanfield" in zoo.get(name).custom_layers
    assert crf["name"] != ["inference1"]   # CRF-RNN's blobs must never load here
    # the unary is at the data blob's size, as the layer needs
    inferred = {l.name: l for l in shapes.infer(parse_prototxt(
        zoo.prototxt_path(name).read_text()))}
    spec = zoo.get(name)
    assert inferred["splitting"].top_shapes[0] == (1, spec.num_classes) + spec.reference_input


@pytest.fixture(scope="module")
def small_base_weights(tmp_path_factory):
    """A caffemodel of the reduced-width base net with random weights (no CRF blobs)."""
    pytest.importorskip("caffe")
    from caffe_attacks.caffe_net import CaffeNet
    from tests.test_zoo import _fill_random
    net = CaffeNet(zoo.build("deeplabv2_resnet101_voc", input_hw=(65, 65),
                             width_mult=1 / 16)).net
    _fill_random(net, np.random.default_rng(3))
    for i in range(4):   # logits of order 10, where the CRF's pairwise term (<= 7) matters
        for blob in net.params["fc1_voc12_c%d" % i]:
            blob.data[...] *= 2e-3
    path = tmp_path_factory.mktemp("w") / "base.caffemodel"
    net.save(str(path))
    return str(path)


@requires_caffe
def test_base_weights_load_and_the_crf_runs_on_the_base_logits(small_base_weights):
    from caffe_attacks.caffe_net import CaffeNet
    hw = (65, 65)
    base = CaffeNet(zoo.build("deeplabv2_resnet101_voc", input_hw=hw, width_mult=1 / 16),
                    small_base_weights, score_blob="fc1_interp")
    text = zoo.build("deeplabv2_resnet101_voc+crf", input_hw=hw, width_mult=1 / 16,
                     num_iterations=3)
    crf = CaffeNet(text, small_base_weights, score_blob="crf")
    report = crf.load_report
    assert report.only_in_net == ["crf"] and not report.only_in_file
    assert set(report.loaded) == set(base.load_report.loaded)
    for blob, expected in zip(crf.net.params["crf"], deeplab_crf_layer()["blobs"]):
        np.testing.assert_array_equal(blob.data, expected)

    x = np.random.default_rng(0).normal(0, 40, (1, 3) + hw).astype(np.float32)
    unary = base.forward(x)
    scores = crf.forward(x)
    np.testing.assert_array_equal(crf.net.blobs["unary"].data, unary)
    params = dict(deeplab_crf_layer()["params"], num_iterations=3)
    expected = MeanfieldInference(params).forward(unary, unary, x, deeplab_crf_layer()["blobs"])
    assert 1 < np.abs(unary).max() < 100
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-4)
    changed = np.mean(scores.argmax(1) != unary.argmax(1))
    assert np.abs(scores - unary).max() > 1 and changed > 0, "the CRF changed nothing"


@requires_caffe
def test_reduced_width_net_backpropagates():
    from tests.test_zoo import _check_net
    _check_net("deeplabv2_resnet101_voc+crf", (65, 65), np.random.default_rng(0),
               width_mult=1 / 16, num_iterations=2)
