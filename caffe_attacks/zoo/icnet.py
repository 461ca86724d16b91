"""ICNet (hszhao/ICNet) for Cityscapes at 1025x2049.

Writes ``evaluation/prototxt/icnet_cityscapes.prototxt`` (BN folded into the
convolutions, every conv with a bias; the deploy of the paper's
``icnet_cityscapes_train_30k.caffemodel``) layer for
layer; ``bn_merged=False`` writes the ``_bnnomerge`` twin instead (bias-free
convs, each followed by the fork's 4-blob ``<conv>/bn``).

Architecture
------------
Three cascaded branches. ``data_sub1`` is a BVLC ``Scale`` on the image
(3 learned factors); ``data_sub2`` = Interp shrink 2. The half-resolution
branch runs a half-width PSPNet-50 trunk (stride on the 1x1 reduction) up
to conv3_1; ``conv3_1_sub4`` = Interp shrink 2 continues with conv3_2 ...
conv5_3 (conv4_x dilation 2, conv5_x dilation 4), pyramid pooling summed
(not concatenated) with conv5_3, conv5_4_k1. Cascade feature fusion:
Interp zoom 2 + dilated 3x3 conv, summed with a 1x1 projection of the finer
branch, twice (sub4+sub2 on conv3_1, sub24+sub1 on the three-conv full-
resolution branch); conv6_cls on a zoom 2, ``conv6_interp`` zoom 4 (the
logits).

Input size
----------
The branches meet in element-wise sums, which Caffe's floor/ceil rules keep
consistent only for ``H, W = 32k + 1`` (1025, 2049, 161, 321, ...); other
sizes raise ValueError. The pyramid pooling windows of the deploy were set
by hand for its 33x65 conv5_3 map (bins 1, 2, 3, 6: kernels 33x65, 17x33,
13x25, 8x15; strides 33x65, 16x32, 10x20, 5x10). We use them at the
reference size; elsewhere PSPNet's tiling rule (``stride = f // b``,
``kernel = f - (b - 1) stride``), which reproduces every deploy value but
bin 3's (11/11 and 21/23 instead of 13/10 and 25/20).
"""
from caffe_attacks.caffe_geometry import conv_output_size, interp_output_size, pool_output_size
from caffe_attacks.zoo import ModelSpec
from caffe_attacks.zoo.netspec_tools import (
    L, conv, data_input, eltwise_sum, interp, net_spec, relu)
from caffe_attacks.zoo.pspnet import (
    ave_pool_hw, bottleneck, conv_bn, deep_stem, pyramid_window)

MODELS = [
    ModelSpec(name="icnet_cityscapes", family="icnet", dataset="cityscapes",
              num_classes=19, input_blob="data", score_blob="conv6_interp",
              reference_input=(1025, 2049), custom_layers=("Interp",),
              table_a4_mib=30.1),
]

REFERENCE_INPUT = (1025, 2049)
PYRAMID_BINS = (1, 2, 3, 6)
# The deploy's hand-set windows for its 33x65 conv5_3 map:
# bin -> ((kernel_h, kernel_w), (stride_h, stride_w)).
REFERENCE_PYRAMID = {1: ((33, 65), (33, 65)),
                     2: ((17, 33), (16, 32)),
                     3: ((13, 25), (10, 20)),
                     6: ((8, 15), (5, 10))}

# (stage, first block, last block, bottleneck width, output width, stride, dilation)
TRUNK_STAGES = ((2, 1, 3, 32, 128, 1, 1),
                (3, 1, 1, 64, 256, 2, 1),     # conv3_1 at 1/8 of data_sub2
                (3, 2, 4, 64, 256, 1, 1),     # ... continued on conv3_1_sub4
                (4, 1, 6, 128, 512, 1, 2),
                (5, 1, 3, 256, 1024, 1, 4))


def branch_sizes(input_size):
    """Per-axis blob sizes where ICNet's branches meet.

    Returns
    -------
    dict
        ``conv3_1`` (1/16 of the input, half-resolution branch), ``conv5_3``
        (1/32), ``conv3_sub1`` (1/8, full-resolution branch).
    """
    sub2 = _interp_side(input_size, shrink_factor=2)           # data_sub2
    size = conv_output_size(sub2, 3, stride=2, pad=1)          # conv1_1_3x3_s2
    size = pool_output_size(size, 3, stride=2, pad=1)          # pool1_3x3_s2
    conv3_1 = conv_output_size(size, 1, stride=2)              # conv3_1_1x1_reduce
    sub1 = input_size
    for _ in range(3):                                         # conv1_sub1 .. conv3_sub1
        sub1 = conv_output_size(sub1, 3, stride=2, pad=1)
    return dict(conv3_1=conv3_1, conv5_3=_interp_side(conv3_1, shrink_factor=2),
                conv3_sub1=sub1)


def _interp_side(size, **params):
    """One side of an Interp output (the rule is the same on both axes)."""
    return interp_output_size(size, size, params)[2]


def _zoom2(size):
    return _interp_side(size, zoom_factor=2)


def check_input(input_hw):
    """Raise ValueError unless both cascade sums of ICNet line up at ``input_hw``."""
    for size in input_hw:
        s = branch_sizes(size)
        if _zoom2(s["conv5_3"]) != s["conv3_1"] or _zoom2(s["conv3_1"]) != s["conv3_sub1"]:
            raise ValueError("ICNet needs input sides of the form 32k + 1 (e.g. 1025, "
                             "2049, 161); got %s" % (tuple(input_hw),))


def pyramid_geometry(input_hw):
    """conv5_3 size and per-bin AVE-pool windows for an input ``(H, W)``.

    Returns
    -------
    (fh, fw), {bin: ((kernel_h, kernel_w), (stride_h, stride_w))}
    """
    fh, fw = (branch_sizes(s)["conv5_3"] for s in input_hw)
    if tuple(input_hw) == REFERENCE_INPUT:
        return (fh, fw), dict(REFERENCE_PYRAMID)
    windows = {}
    for b in PYRAMID_BINS:
        (kh, sh), (kw, sw) = pyramid_window(fh, b), pyramid_window(fw, b)
        windows[b] = ((kh, kw), (sh, sw))
    return (fh, fw), windows


def build(spec, input_hw, bn_merged=True):
    """NetParameter of ICNet for ``spec`` at ``input_hw``.

    Parameters
    ----------
    spec : ModelSpec
    input_hw : (int, int)
        Both sides of the form 32k + 1.
    bn_merged : bool
        True: the merged deploy (the paper's weights). False: the
        ``icnet_cityscapes_bnnomerge`` definition (4-blob BN after each conv
        but conv6_cls).
    """
    check_input(input_hw)
    (fh, fw), windows = pyramid_geometry(input_hw)
    with_bn = not bn_merged
    n = net_spec()
    n.data = data_input(input_hw)
    n.data_sub1 = L.Scale(n.data)
    n.data_sub2 = interp(n.data_sub1, shrink_factor=2)
    x = deep_stem(n, n.data_sub2, (32, 32, 64), with_bn=with_bn)
    for stage, first, last, mid, out, stride, dilation in TRUNK_STAGES:
        for i in range(first, last + 1):
            x = bottleneck(n, "conv%d_%d" % (stage, i), x, mid, out, stride=stride,
                           dilation=dilation, project=(i == 1), stride_on="1x1_reduce",
                           with_bn=with_bn)
        if (stage, last) == (3, 1):
            conv3_1 = x
            n.conv3_1_sub4 = x = interp(conv3_1, shrink_factor=2)
    conv5_3 = x
    branches = {}
    for b in PYRAMID_BINS:
        name = "conv5_3_pool%d" % b
        n[name] = ave_pool_hw(conv5_3, *windows[b])
        n[name + "_interp"] = branches[b] = interp(n[name], height=fh, width=fw)
    n.conv5_3_sum = eltwise_sum(conv5_3, *(branches[b] for b in reversed(PYRAMID_BINS)))
    x = conv_bn(n, "conv5_4_k1", n.conv5_3_sum, 256, ks=1, with_bn=with_bn)

    # cascade feature fusion: coarse (zoom 2, dilated conv) + fine (1x1 projection)
    n.conv5_4_interp = interp(x, zoom_factor=2)
    sub4 = conv_bn(n, "conv_sub4", n.conv5_4_interp, 128, ks=3, pad=2, dilation=2,
                   with_bn=with_bn, with_relu=False)
    proj = conv_bn(n, "conv3_1_sub2_proj", conv3_1, 128, ks=1, with_bn=with_bn,
                   with_relu=False)
    n.sub24_sum = eltwise_sum(proj, sub4)
    n["sub24_sum/relu"] = x = relu(n.sub24_sum)
    n.sub24_sum_interp = interp(x, zoom_factor=2)
    sub2 = conv_bn(n, "conv_sub2", n.sub24_sum_interp, 128, ks=3, pad=2, dilation=2,
                   with_bn=with_bn, with_relu=False)

    x = n.data_sub1
    for name, width in (("conv1_sub1", 32), ("conv2_sub1", 32), ("conv3_sub1", 64)):
        x = conv_bn(n, name, x, width, ks=3, stride=2, pad=1, with_bn=with_bn)
    proj = conv_bn(n, "conv3_sub1_proj", x, 128, ks=1, with_bn=with_bn, with_relu=False)
    n.sub12_sum = eltwise_sum(proj, sub2)
    n["sub12_sum/relu"] = x = relu(n.sub12_sum)
    n.sub12_sum_interp = interp(x, zoom_factor=2)
    n.conv6_cls = conv(n.sub12_sum_interp, spec.num_classes, ks=1)
    n.conv6_interp = interp(n.conv6_cls, zoom_factor=4)
    return n.to_proto()
