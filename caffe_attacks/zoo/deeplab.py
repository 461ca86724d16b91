"""DeepLab v2 (VOC): ASPP-L on VGG-16 and ASPP on ResNet-101, single scale.

The official test.prototxt files ship only inside the release zips; these
follow the public descriptions: VGG-16 per the official train.prototxt as
transcribed by a port that cites it, ResNet-101 per the Caffe deploy in
DrSleep/tensorflow-deeplab-resnet ``misc/deploy.prototxt`` (MSRA names,
BatchNorm + Scale, res4 dilation 2, res5 dilation 4).

Score blob (see docs/FIDELITY.md): the logits upsampled by ``Interp`` zoom 8
to the 513x513 canvas (``fc8_interp`` / ``fc1_interp``), like every other zoo
model's full-resolution logits; the 65x65 ASPP sum (``fc8_voc12`` /
``fc1_voc12``) is the blob before it.

The multi-scale ``deeplabv2_resnet101_msc_voc`` is built elsewhere on
:func:`resnet101_aspp` (one call per scale with a name suffix; parameters
shared by name).
"""
from caffe_attacks.zoo import ModelSpec
from caffe_attacks.zoo.fcn import resnet101_trunk
from caffe_attacks.zoo.netspec_tools import (
    channels, conv, conv_relu, data_input, dropout, eltwise_sum, interp, max_pool,
    net_spec)

MODELS = [
    ModelSpec("deeplabv2_vgg16_voc", "deeplab", "voc", 21, "data", "fc8_interp", (513, 513),
              ("Interp",), 144.5),
    ModelSpec("deeplabv2_resnet101_voc", "deeplab", "voc", 21, "data", "fc1_interp",
              (513, 513), ("Interp",), 168.4),
]

ASPP_RATES = (6, 12, 18, 24)


def build(spec, input_hw, width_mult=1.0):
    """NetParameter of ``spec`` at input ``(H, W)``; ``width_mult`` is test-only."""
    if spec.name == "deeplabv2_vgg16_voc":
        return deeplab_vgg16(input_hw, spec.num_classes, width_mult)
    if spec.name == "deeplabv2_resnet101_voc":
        n = net_spec()
        n.data = data_input(input_hw)
        n.fc1_interp = interp(resnet101_aspp(n, n.data, spec.num_classes,
                                             width_mult=width_mult), zoom_factor=8)
        return n.to_proto()
    raise KeyError(spec.name)


def deeplab_vgg16(input_hw, num_classes, width_mult=1.0):
    """VGG-16 ASPP-L: 3x3 pools (pool4/pool5 stride 1), conv5 dilation 2, four
    fc6(rate)-fc7-fc8 branches summed; output stride 8 (513 -> 65)."""
    w = lambda c: channels(c, width_mult)   # noqa: E731
    n = net_spec()
    n.data = data_input(input_hw)
    n.conv1_1, n.relu1_1 = conv_relu(n.data, w(64))
    n.conv1_2, n.relu1_2 = conv_relu(n.relu1_1, w(64))
    n.pool1 = max_pool(n.relu1_2, ks=3, stride=2, pad=1)
    n.conv2_1, n.relu2_1 = conv_relu(n.pool1, w(128))
    n.conv2_2, n.relu2_2 = conv_relu(n.relu2_1, w(128))
    n.pool2 = max_pool(n.relu2_2, ks=3, stride=2, pad=1)
    n.conv3_1, n.relu3_1 = conv_relu(n.pool2, w(256))
    n.conv3_2, n.relu3_2 = conv_relu(n.relu3_1, w(256))
    n.conv3_3, n.relu3_3 = conv_relu(n.relu3_2, w(256))
    n.pool3 = max_pool(n.relu3_3, ks=3, stride=2, pad=1)
    n.conv4_1, n.relu4_1 = conv_relu(n.pool3, w(512))
    n.conv4_2, n.relu4_2 = conv_relu(n.relu4_1, w(512))
    n.conv4_3, n.relu4_3 = conv_relu(n.relu4_2, w(512))
    n.pool4 = max_pool(n.relu4_3, ks=3, stride=1, pad=1)
    n.conv5_1, n.relu5_1 = conv_relu(n.pool4, w(512), pad=2, dilation=2)
    n.conv5_2, n.relu5_2 = conv_relu(n.relu5_1, w(512), pad=2, dilation=2)
    n.conv5_3, n.relu5_3 = conv_relu(n.relu5_2, w(512), pad=2, dilation=2)
    n.pool5 = max_pool(n.relu5_3, ks=3, stride=1, pad=1)
    branches = []
    for i, rate in enumerate(ASPP_RATES, start=1):
        n["fc6_%d" % i], n["relu6_%d" % i] = conv_relu(n.pool5, w(1024), pad=rate,
                                                       dilation=rate)
        n["drop6_%d" % i] = dropout(n["relu6_%d" % i])
        n["fc7_%d" % i], n["relu7_%d" % i] = conv_relu(n["drop6_%d" % i], w(1024), ks=1, pad=0)
        n["drop7_%d" % i] = dropout(n["relu7_%d" % i])
        n["fc8_voc12_%d" % i] = conv(n["drop7_%d" % i], num_classes, ks=1)
        branches.append(n["fc8_voc12_%d" % i])
    n.fc8_voc12 = eltwise_sum(*branches)
    n.fc8_interp = interp(n.fc8_voc12, zoom_factor=8)
    return n.to_proto()


def resnet101_aspp(n, bottom, num_classes, suffix="", share=True, width_mult=1.0):
    """DeepLab v2 ResNet-101 trunk + ASPP on ``bottom``; returns ``fc1_voc12<suffix>``.

    Parameters
    ----------
    n : NetSpec
    bottom : NetSpec top (the image, or a rescaled copy for MSC)
    num_classes : int
    suffix : str
        Appended to every layer/blob name (``""``, ``"_res075"``, ``"_res05"``).
    share : bool
        Parameter blobs are named after the unsuffixed layers, so that all
        suffixed copies share one set of weights (the released MSC model).
    width_mult : float
        Test-only channel scaling.

    Returns
    -------
    NetSpec top of the 4-branch sum, stride 8 (513 -> 65).
    """
    feats = resnet101_trunk(n, bottom, dilated=True, suffix=suffix, share=share,
                            width_mult=width_mult)
    branches = []
    for i, rate in enumerate(ASPP_RATES):
        base = "fc1_voc12_c%d" % i
        pnames = ([dict(name=base + "_w", lr_mult=10, decay_mult=1),
                   dict(name=base + "_b", lr_mult=20, decay_mult=0)] if share else None)
        n[base + suffix] = conv(feats["res5"], num_classes, ks=3, pad=rate, dilation=rate,
                                param=pnames)
        branches.append(n[base + suffix])
    n["fc1_voc12" + suffix] = eltwise_sum(*branches)
    return n["fc1_voc12" + suffix]



