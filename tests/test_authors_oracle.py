"""caffe_attacks against an independent port of the paper authors' loop (tests/authors_loop.py).

Nets: tiny_synthetic (trained weights, a synthetic scene), and reduced-width
FCN8 VOC (logits as output) and Dilation10 Cityscapes (Softmax as output)
with random weights whose last layer is scaled so that the logits saturate
(float32 probabilities of exactly 1 and 0: the cases where a float64 loss
gradient or argmin of the logits would differ from the authors'). Every
attack at eps 0.25, 1, 4, 8, 16; agreement within 1e-4 on every value.
"""
import numpy as np
import pytest

from tests.conftest import requires_caffe

pytestmark = requires_caffe

EPS = (0.25, 1.0, 4.0, 8.0, 16.0)
ATTACKS = ("fgsm", "fgsm_ll", "ifgsm", "ifgsm_ll")
# name -> (input (H, W), target_blob, scale of the last layer's weights)
NETS = {"tiny_synthetic": ((96, 128), "logits", None),
        "fcn8s_vgg_voc_authors": ((64, 64), "logits", 4.0),
        "dilated_context_cityscapes": ((396, 404), "probabilities", 2000.0)}


def _setup(name):
    from caffe_attacks import engine_check, zoo
    from caffe_attacks.caffe_net import CaffeNet
    from caffe_attacks.datasets import synthetic
    from tests.authors_loop import AuthorsNet

    hw, target_blob, scale = NETS[name]
    spec = zoo.get(name)
    if name == "tiny_synthetic":
        text = zoo.build(name, input_hw=hw)
        model = CaffeNet(text, _tiny_weights(), input_blob=spec.input_blob,
                         score_blob=spec.score_blob, target_blob=target_blob)
        image, _ = synthetic.render_voc(0, 1, size=(hw[1], hw[0]))
        x = (image.astype(np.float32) - np.float32([104.00699, 116.66877, 122.67891]))
        x = x.transpose(2, 0, 1)[None].copy()
    else:
        text = zoo.build(name, input_hw=hw, **engine_check.small_build_options(spec))
        model = CaffeNet(text, input_blob=spec.input_blob, score_blob=spec.score_blob,
                         target_blob=target_blob)
        rng = np.random.default_rng(0)
        shapes = [(n, None, [b.data.shape for b in blobs]) for n, blobs in model.net.params.items()]
        params = engine_check.random_params(
            [(n, model.net.layer_dict[n].type, s) for n, _, s in shapes], rng)
        last = _last_scored_layer(model, spec.score_blob, params)
        params[last] = [params[last][0] * scale] + list(params[last][1:])
        for layer, arrays in params.items():
            for blob, value in zip(model.net.params[layer], arrays):
                blob.data[...] = value.reshape(blob.data.shape)
        x = rng.normal(0, 40, (1, 3) + hw).astype(np.float32)
    params = {n: [b.data.copy() for b in blobs] for n, blobs in model.net.params.items()}
    authors = AuthorsNet(text, spec.input_blob, spec.score_blob,
                         target_blob == "probabilities", params)
    return model, authors, x


def _tiny_weights():
    from pathlib import Path
    import caffe_attacks
    return str(Path(caffe_attacks.__file__).parent / "data" / "tiny_synthetic.caffemodel")


def _last_scored_layer(model, score_blob, params):
    """The last layer with weights up to the score blob (its scale sets the logits' scale)."""
    names = list(model.net._layer_names)
    stop = max(i for i, n in enumerate(names) if score_blob in model.net.top_names[n])
    for name in reversed(names[:stop + 1]):
        if name in params and model.net.layer_dict[name].type in ("Convolution",
                                                                   "Deconvolution"):
            return name
    raise AssertionError("no convolution before %s" % score_blob)


@pytest.fixture(scope="module", params=sorted(NETS))
def nets(request):
    return (request.param,) + _setup(request.param)


@pytest.mark.parametrize("attack", ATTACKS)
def test_attacks_agree_with_the_authors_loop(nets, attack):
    from caffe_attacks import attacks
    name, model, authors, x = nets
    ours = getattr(attacks, attack)(model, x, list(EPS))
    for eps, mine in zip(EPS, ours):
        theirs = getattr(authors, attack)(x, eps)
        diff = np.abs(mine.astype(np.float64) - theirs)
        assert diff.max() <= 1e-4, (name, attack, eps, float(diff.max()),
                                    float((diff > 1e-4).mean()))
        # the perturbation is a real one (not zero everywhere)
        assert np.abs(mine - x).max() == pytest.approx(eps, abs=1e-4)


def test_todays_numpy_argsort_changes_only_tied_targets(nets):
    """The authors' rule under the running numpy's default (possibly SIMD) sort differs
    from the fixed scalar-introsort order only where the smallest value is shared."""
    from caffe_attacks import attacks
    name, model, _, x = nets
    values = attacks.ranking_values(model, model.forward(x))
    ours = attacks.least_likely_labels(values)
    todays = np.argsort(-values, axis=1)[:, -1]
    tied = (values == values.min(axis=1, keepdims=True)).sum(axis=1) > 1
    np.testing.assert_array_equal(ours[~tied], todays[~tied])
