"""Checks that two engines compute the same function: random weights, errors.

Used by tests/test_torch_net.py and benchmarks/engines.py to compare the
torch engine with pycaffe on the same definition.  Weights travel as
``{layer name: [arrays]}`` dicts and models are seen through the model
protocol; torch and pycaffe (via caffe_net) are imported only inside
``compare_zoo_model`` and ``caffe_choice_overrides``.

Kinks: float32 engines that sum in different orders disagree by ~1e-6 of a
layer's scale, so a ReLU input within that distance of 0 can be positive in
one engine and negative in the other, and the gradient through that unit then
differs by its whole value (Caffe's GradientChecker skips such points); two
near-equal values in a MAX pooling window likewise send the gradient to
different inputs.  A deep net at a random input has a few such units, so the
comparison also runs the torch engine with pycaffe's ReLU signs and pooling
argmaxes imposed (``caffe_choice_overrides``), which isolates every other
difference; the report gives both errors and the number of flipped choices.
"""
import math
import re

import numpy as np

from caffe_attacks.caffe_geometry import parse_prototxt

# Small zoo inputs that every family's geometry accepts (tests/test_zoo*.py use them),
# and the width multipliers of the families whose generators take one.
SMALL_INPUTS = {
    "fcn8s_vgg_voc": (64, 64), "fcn8s_vgg_voc_authors": (64, 64),
    "fcn8s_vgg_cityscapes": (64, 96), "fcn8s_resnet101_voc": (64, 64),
    "dilated_frontend_voc": (396, 396), "dilated_context_voc": (396, 396),
    "dilated_frontend_cityscapes": (396, 404), "dilated_context_cityscapes": (396, 404),
    "deeplabv2_vgg16_voc": (65, 65), "deeplabv2_resnet101_voc": (65, 65),
    "segnet_vgg_voc": (64, 64), "crfrnn_voc": (48, 48),
    "pspnet101_voc": (57, 65), "pspnet101_cityscapes": (41, 41),
    "icnet_cityscapes": (161, 193), "enet_cityscapes": (32, 64),
    "tiny_synthetic": (96, 128),
}
SMALL_INPUTS["deeplabv2_resnet101_msc_voc"] = SMALL_INPUTS["deeplabv2_resnet101_voc"]
for _base in ("deeplabv2_vgg16_voc", "deeplabv2_resnet101_voc", "deeplabv2_resnet101_msc_voc"):
    SMALL_INPUTS[_base + "+crf"] = SMALL_INPUTS[_base]
SMALL_INPUTS["tiny_synthetic+crf"] = SMALL_INPUTS["tiny_synthetic"]
WIDTH_MULT = {"fcn": 1 / 16, "deeplab": 1 / 16, "segnet": 1 / 16, "crfrnn": 1 / 16,
              "dilated": 1 / 32, "multiscale": 1 / 16, "deeplab_crf": 1 / 16}


def small_build_options(spec, reduced=True):
    """Generator options for a quick run: reduced width where the family has one.

    spec : zoo.ModelSpec. Returns a dict for ``zoo.build(name, input_hw, **options)``.
    """
    options = {}
    family = spec.family
    if family == "deeplab_crf":     # options go to the base net's generator
        from caffe_attacks import zoo
        from caffe_attacks.zoo.deeplab_crf import base_of
        family = zoo.get(base_of(spec.name)).family
    if reduced and family in WIDTH_MULT:
        options["width_mult"] = WIDTH_MULT[family]
    if spec.family in ("crfrnn", "deeplab_crf"):
        options["num_iterations"] = 2
    return options


def random_params(layers, rng):
    """Random blobs that keep activations of order one through deep nets.

    Parameters
    ----------
    layers : iterable of (name, type, [blob shapes]); type as caffe_geometry.layer_type
    rng : np.random.Generator

    Returns
    -------
    dict layer name -> list of float32 arrays
    """
    out = {}
    for name, ltype, blob_shapes in layers:
        blobs = []
        for k, shape in enumerate(blob_shapes):
            if ltype in ("Convolution", "Deconvolution") and k == 0:
                fan_in = int(np.prod(shape[1:])) or 1
                value = rng.normal(0, math.sqrt(2.0 / fan_in), shape)
            elif ltype == "BatchNorm":
                value = [rng.normal(0, 0.1, shape), rng.uniform(0.5, 1.5, shape),
                         np.full(shape, 2.0)][k]            # scale factor 1/2 exercised
            elif ltype.endswith("PSPBN"):
                value = [rng.uniform(0.5, 1.5, shape), rng.normal(0, 0.1, shape),
                         rng.normal(0, 0.1, shape), rng.uniform(0.5, 1.5, shape)][k]
            elif ltype == "Scale" and k == 0 and "branch2c" in name:
                value = rng.uniform(0.1, 0.3, shape)      # keep 33 residual sums tame
            elif ltype.endswith("MultiStageMeanfield"):
                value = (np.eye(shape[-1]) * [3.0, 5.0, -1.0][k]).reshape(shape) \
                    + rng.normal(0, 0.1, shape)
            elif ltype == "PReLU":
                value = rng.uniform(0.0, 0.5, shape)
            elif k == 0 and (ltype == "Scale" or ltype.endswith("ScaleShiftBN")):
                value = rng.uniform(0.5, 1.5, shape)
            else:
                value = rng.normal(0, 0.1, shape)
            blobs.append(np.asarray(value, np.float32))
        out[name] = blobs
    return out


def relative_error(value, reference):
    """max |value - reference| / max |reference| (0 when both are all zero)."""
    value, reference = np.asarray(value, np.float64), np.asarray(reference, np.float64)
    if value.shape != reference.shape:
        raise ValueError("shapes differ: %s vs %s" % (value.shape, reference.shape))
    scale = np.abs(reference).max() if reference.size else 0.0
    diff = np.abs(value - reference).max() if reference.size else 0.0
    return float(diff / scale) if scale > 0 else float(diff)


def compare_models(reference, candidate, x, dscores):
    """Scores and input gradients of two protocol models at x.

    Returns
    -------
    dict with "scores" and "gradient": relative_error of the candidate's
    against the reference's, and "argmax_agreement": the fraction of pixels
    whose predicted class agrees
    """
    s_ref, s_new = reference.forward(x), candidate.forward(x)
    g_ref = reference.input_gradient(x, dscores)
    g_new = candidate.input_gradient(x, dscores)
    return {"scores": relative_error(s_new, s_ref), "gradient": relative_error(g_new, g_ref),
            "argmax_agreement": float(np.mean(s_new.argmax(1) == s_ref.argmax(1)))}


def graph_param_shapes(torch_net):
    """(layer name, type, [blob shapes]) of a TorchNet, for random_params."""
    blobs = torch_net.graph.blobs
    return [(layer.name, layer.type, [tuple(blobs[i].shape) for i in layer.blob_ids])
            for layer in torch_net.graph.layers if layer.blob_ids]


MASK_SUFFIX = "__caffe_mask"


def with_pool_masks(text):
    """The definition with a mask top on every single-top MAX Pooling layer.

    pycaffe then exposes the argmax its MAX pooling chose (the values are
    computed as before). Works on text as text_format writes it (name, type,
    bottom, top in that order), as every generated zoo definition is.
    """
    for layer in parse_prototxt(text).get("layer", []):
        pool = (layer.get("pooling_param") or [{}])[-1]
        if (layer.get("type") != ["Pooling"] or len(layer.get("top", [])) != 1
                or pool.get("pool", ["MAX"])[-1] not in ("MAX", 0)):
            continue
        name, top = layer["name"][-1], layer["top"][0]
        pattern = r'(name: "%s"\s+type: "Pooling"(?:\s+bottom: "[^"]*")+\s+top: "%s")' % (
            re.escape(name), re.escape(top))
        text, count = re.subn(pattern, r'\1\n  top: "%s%s"' % (top, MASK_SUFFIX), text)
        if count != 1:
            raise ValueError("cannot add a mask top to pooling layer %r" % name)
    return text


def caffe_choice_overrides(torch_net, blob_data):
    """Replacement ops that make `torch_net` take pycaffe's discrete choices.

    Every ReLU/PReLU gets pycaffe's signs and every MAX Pooling pycaffe's
    argmax (from a mask top, see with_pool_masks), so the two engines then
    differ only by continuous rounding.

    Parameters
    ----------
    torch_net : TorchNet
    blob_data : mapping blob name -> the array pycaffe holds after its forward

    Returns
    -------
    overrides : dict layer name -> op, for ``TorchNet.layer_overrides``
    flips : dict "relu" / "pool" -> units where the engines' own forwards chose
        differently (sign of a ReLU input; argmax of a pooling window)
    """
    import torch
    import torch.nn.functional as F

    device, dtype = torch_net.device, torch_net._param_dtype
    layers = torch_net.graph.layers
    signs, argmaxes = {}, {}
    for i, layer in enumerate(layers):
        top = layer.tops[0]
        if layer.type in ("ReLU", "PReLU"):
            # pycaffe's blob holds the value after the last in-place layer on it
            if not any(top in later.tops and later.type != "Dropout" for later in layers[i + 1:]):
                signs[layer.name] = (layer, np.asarray(blob_data[top]) > 0)
        elif layer.type == "Pooling":
            mask = layer.tops[1] if len(layer.tops) > 1 else top + MASK_SUFFIX
            if mask in blob_data:
                argmaxes[layer.name] = (layer, np.asarray(blob_data[mask]).astype(np.int64))
    wanted = sorted({l.tops[0] for l, _ in signs.values()}
                    | {b for l, _ in argmaxes.values() for b in (l.bottoms[0], l.tops[0])})
    x = torch.from_numpy(np.asarray(blob_data[torch_net.input_blob], np.float32))
    with torch.no_grad():
        ours = {k: v.float().cpu() for k, v in
                torch_net.graph({torch_net.input_blob: x.to(device, dtype)}, wanted).items()}
    flips = {"relu": 0, "pool": 0}
    for layer, positive in signs.values():
        flips["relu"] += int(np.sum((ours[layer.tops[0]].numpy() > 0) != positive))
    for layer, index in argmaxes.values():
        chosen = ours[layer.bottoms[0]].flatten(2).gather(2, torch.from_numpy(index).flatten(2))
        flips["pool"] += int((chosen.view(index.shape) != ours[layer.tops[0]]).sum())

    def sign_op(layer, positive):
        positive = torch.from_numpy(positive).to(device)
        if layer.type == "ReLU":
            return lambda bottoms, blobs: [bottoms[0] * positive]
        return lambda bottoms, blobs: [torch.where(positive, bottoms[0],
                                                   F.prelu(bottoms[0], blobs[0]))]

    def argmax_op(layer, index):
        index = torch.from_numpy(index).to(device)

        def op(bottoms, blobs):
            pooled = bottoms[0].flatten(2).gather(2, index.flatten(2)).view(index.shape)
            return [pooled, index][:len(layer.tops)]
        return op
    overrides = {name: sign_op(*v) for name, v in signs.items()}
    overrides.update({name: argmax_op(*v) for name, v in argmaxes.items()})
    return overrides, flips


def compare_zoo_model(name, input_hw=None, reduced=True, seed=0):
    """pycaffe and the torch engine on one zoo model with random weights.

    Parameters
    ----------
    name : zoo model name
    input_hw : (H, W); SMALL_INPUTS[name] if None
    reduced : use the family's reduced width (small_build_options)
    seed : random weights, input and dL/dscores

    Returns
    -------
    dict: "scores", "gradient" (relative errors, torch vs pycaffe),
    "scores_caffe_choices", "gradient_caffe_choices" (the same with pycaffe's
    ReLU signs and pooling argmaxes imposed), "caffe_float32_error" (pycaffe's
    input gradient against the torch engine's in float64 with the same
    choices: how well float32 can do on this net and input), "flips" (dict,
    see caffe_choice_overrides), "argmax_agreement", "input_hw", "options"
    """
    from caffe_attacks import zoo
    from caffe_attacks.caffe_net import CaffeNet
    from caffe_attacks.torch_net import TorchNet

    spec = zoo.get(name)
    hw = tuple(input_hw or SMALL_INPUTS[name])
    options = small_build_options(spec, reduced)
    text = zoo.build(name, input_hw=hw, **options)
    rng = np.random.default_rng(seed)
    ours = TorchNet(text, input_blob=spec.input_blob, score_blob=spec.score_blob)
    params = random_params(graph_param_shapes(ours), rng)
    ours.set_params(params)
    ref = CaffeNet(with_pool_masks(text), input_blob=spec.input_blob,
                   score_blob=spec.score_blob)
    for layer, arrays in params.items():   # in layer order, as set_params: shared blobs agree
        for blob, value in zip(ref.net.params[layer], arrays):
            blob.data[...] = value.reshape(blob.data.shape)
    x = rng.normal(0, 40, (1, 3) + hw).astype(np.float32)
    dscores = rng.normal(0, 1, ref.forward(x).shape).astype(np.float32)
    result = compare_models(ref, ours, x, dscores)
    ref.forward(x)
    ours.layer_overrides, flips = caffe_choice_overrides(
        ours, {b: ref.net.blobs[b].data for b in ref.net.blobs.keys()})
    imposed = compare_models(ref, ours, x, dscores)
    # pycaffe's own float32 error: against the same choices in float64
    exact = TorchNet(text, input_blob=spec.input_blob, score_blob=spec.score_blob,
                     precision="float64")
    exact.set_params(params)
    exact.layer_overrides = ours.layer_overrides
    floor = relative_error(ref.input_gradient(x, dscores), exact.input_gradient(x, dscores))
    ours.layer_overrides = {}
    result.update(gradient_caffe_choices=imposed["gradient"],
                  scores_caffe_choices=imposed["scores"], caffe_float32_error=floor,
                  flips=flips, input_hw=hw, options=options)
    return result
