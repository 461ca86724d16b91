"""DeepLab v2 + CRF (supplementary A5.3): a DeepLab net with ``MultiStageMeanfield`` appended.

Also ``tiny_synthetic+crf``: the embedded default with the same CRF, so that
the CRF experiments run end to end without downloads (tests, a quick look).

The paper appends CRF-RNN's mean-field layer to DeepLab v2 with DeepLab's
published DenseCRF settings, so that white-box gradients pass through the
CRF. ``NAME+crf`` is the zoo model ``NAME`` followed by

- ``splitting`` (Split): the base net's logits at the data blob's H x W
  (``fc1_interp`` / ``fc8_interp``, DeepLab's Interp zoom 8) into ``unary``
  and ``Q0``, as CRF-RNN wires its own layer;
- ``crf`` (MultiStageMeanfield, bottoms [unary, Q0, data]) with the settings of
  :func:`caffe_attacks.layers.meanfield.deeplab_crf_layer` (theta_alpha 67,
  theta_beta 3, theta_gamma 1, W_b = 4 I, W_s = 3 I, 10 iterations); its top
  ``crf`` is the score blob.

A ``+crf`` model loads its base's caffemodel unchanged (same manifest file and
md5): the layer ``crf`` has no blobs in that file and keeps the initial values
its ``param_str`` gives, which are DeepLab's kernel weights. See
docs/FIDELITY.md, "CRF-RNN mean-field".
"""
from caffe_attacks.zoo import ModelSpec
from caffe_attacks.zoo.netspec_tools import MEANFIELD_MODULE, net_parameter

# +crf name -> (base zoo model, the base's logits at data size)
BASES = {
    "deeplabv2_vgg16_voc+crf": ("deeplabv2_vgg16_voc", "fc8_interp"),
    "deeplabv2_resnet101_voc+crf": ("deeplabv2_resnet101_voc", "fc1_interp"),
    "deeplabv2_resnet101_msc_voc+crf": ("deeplabv2_resnet101_msc_voc", "fc1_interp"),
    # the embedded default with the same CRF: the CRF experiments without downloads
    "tiny_synthetic+crf": ("tiny_synthetic", "score"),
}
CRF_LAYER = "crf"          # not "inference1": no CRF-RNN blobs may land here
SUFFIX = "+crf"

MODELS = [
    ModelSpec("deeplabv2_vgg16_voc+crf", "deeplab_crf", "voc", 21, "data", CRF_LAYER,
              (513, 513), ("Interp", "MultiStageMeanfield"), None),
    ModelSpec("deeplabv2_resnet101_voc+crf", "deeplab_crf", "voc", 21, "data", CRF_LAYER,
              (513, 513), ("Interp", "MultiStageMeanfield"), None),
    ModelSpec("deeplabv2_resnet101_msc_voc+crf", "deeplab_crf", "voc", 21, "data", CRF_LAYER,
              (513, 513), ("Interp", "MultiStageMeanfield"), None),
    ModelSpec("tiny_synthetic+crf", "deeplab_crf", "synthetic", 5, "data", CRF_LAYER,
              (96, 128), ("MultiStageMeanfield",), None),
]


def base_of(name):
    """The zoo model a ``+crf`` model appends the CRF to (KeyError if not one)."""
    return BASES[name][0]


def build(spec, input_hw, num_iterations=None, **options):
    """NetParameter of ``spec`` at input ``(H, W)``.

    ``num_iterations`` (mean-field steps) and ``options`` (e.g. ``width_mult``,
    passed to the base's generator) are test-only knobs.
    """
    from caffe_attacks import zoo
    from caffe_attacks.layers.meanfield import deeplab_crf_layer

    base, logits = BASES[spec.name]
    net = net_parameter(zoo.build(base, input_hw=input_hw, **options))
    crf = deeplab_crf_layer(spec.num_classes)
    param_str = crf["param_str"]
    if num_iterations is not None:
        import json
        param_str = json.dumps(dict(crf["params"], num_iterations=int(num_iterations)),
                               sort_keys=True)
    append_crf(net, logits, spec.input_blob, param_str)
    net.name = spec.name
    return net


def append_crf(net, logits, data, param_str, name=CRF_LAYER):
    """Append Split(logits -> unary, Q0) and MultiStageMeanfield(unary, Q0, data) -> name.

    Parameters
    ----------
    net : caffe_pb2.NetParameter, modified in place
    logits : blob of shape (1, C, H, W), at the data blob's H x W
    data : the input blob (its 3 channels are the bilateral kernel's colours)
    param_str : JSON of the MultiStageMeanfield layer
    name : layer and top name of the CRF
    """
    split = net.layer.add()
    split.name, split.type = "splitting", "Split"
    split.bottom.append(logits)
    split.top.extend(["unary", "Q0"])
    layer = net.layer.add()
    layer.name, layer.type = name, "Python"
    layer.bottom.extend(["unary", "Q0", data])
    layer.top.append(name)
    layer.python_param.module = MEANFIELD_MODULE
    layer.python_param.layer = "MultiStageMeanfield"
    layer.python_param.param_str = param_str
    return net
