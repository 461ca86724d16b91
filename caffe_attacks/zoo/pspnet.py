"""PSPNet ResNet-101 (hszhao/PSPNet): VOC 2012 at 473x473, Cityscapes at 713x713.

Straight-line NetSpec code that writes the deploy definitions
``evaluation/prototxt/pspnet101_{VOC2012_473,cityscapes_713}.prototxt``
layer for layer: same layer names and order, same blob
names, the fork's ``BN`` (4 blobs) and ``Interp`` as our Python layers.

Architecture
------------
Deep stem (three 3x3 convs, the first with stride 2) and a 3x3/2 max pool;
ResNet-101 bottlenecks conv2_x (3) / conv3_x (4, stride 2 on the 3x3) /
conv4_x (23, dilation 2) / conv5_x (3, dilation 4), output stride 8; every
convolution bias-free and followed by ``<name>/bn``. Pyramid pooling over
bins 1, 2, 3, 6 (AVE pool, 1x1 conv 2048->512 + BN + ReLU, Interp back to
the feature size), Concat with conv5_3, conv5_4 3x3 -> 512, Dropout 0.1,
conv6 1x1 -> classes, Interp zoom 8 -> ``conv6_interp`` (the logits).

Input size
----------
The original bakes the crop size into the pyramid pooling kernels (473 ->
60x60 features, kernels 60/30/20/10; 713 -> 90x90, kernels 90/45/30/15).
For another ``input_hw`` we infer the feature size ``f`` per axis with
Caffe's rules and set, for bin ``b``, ``stride = f // b`` and ``kernel =
f - (b - 1) * stride``: exactly ``b`` windows that tile the map, which is
the original's ``kernel = stride = f / b`` whenever ``b`` divides ``f``
(so the reference sizes regenerate the deploy exactly). Needs ``f >= 6``,
i.e. an input of at least 41 pixels. The logits are ``8 f - 7`` pixels per
side: the input size itself exactly when ``H = 8k + 1`` (473, 713, 41, 89).
"""
from caffe_attacks.caffe_geometry import conv_output_size, pool_output_size
from caffe_attacks.zoo import ModelSpec
from caffe_attacks.zoo.netspec_tools import (
    L, P, conv, data_input, dropout, eltwise_sum, interp, max_pool, net_spec, psp_bn,
    relu)

MODELS = [
    ModelSpec(name="pspnet101_voc", family="pspnet", dataset="voc", num_classes=21,
              input_blob="data", score_blob="conv6_interp", reference_input=(473, 473),
              custom_layers=("BN", "Interp"), table_a4_mib=272.7),
    ModelSpec(name="pspnet101_cityscapes", family="pspnet", dataset="cityscapes",
              num_classes=19, input_blob="data", score_blob="conv6_interp",
              reference_input=(713, 713), custom_layers=("BN", "Interp"),
              table_a4_mib=260.2),
]

PYRAMID_BINS = (1, 2, 3, 6)    # layer order conv5_3_pool1, pool2, pool3, pool6

# (stage, blocks, bottleneck width, output width, stride, dilation): ResNet-101
RESNET101_STAGES = ((2, 3, 64, 256, 1, 1),
                    (3, 4, 128, 512, 2, 1),
                    (4, 23, 256, 1024, 1, 2),
                    (5, 3, 512, 2048, 1, 4))

CLASSIFIER_PARAM = [dict(lr_mult=10, decay_mult=1), dict(lr_mult=20, decay_mult=1)]


# ------------------------------------------------------------ shared pieces
# (icnet.py builds on the same bottleneck: ICNet's trunk is a half-width PSPNet-50)

def bn(bottom):
    """The fork's 4-blob ``BN`` (slope, bias, mean, var; eps 1e-5), in place."""
    return psp_bn(bottom, in_place=True)


def conv_bn(n, name, bottom, nout, ks=1, stride=1, pad=0, dilation=1,
            with_bn=True, with_relu=True):
    """``name`` conv (bias-free when ``with_bn``), ``name/bn``, ``name/relu``.

    Returns the top to feed forward (the conv's blob, updated in place).
    """
    n[name] = conv(bottom, nout, ks=ks, stride=stride, pad=pad, dilation=dilation,
                   bias=not with_bn)
    top = n[name]
    if with_bn:
        n[name + "/bn"] = top = bn(top)
    if with_relu:
        n[name + "/relu"] = top = relu(top)
    return top


def bottleneck(n, prefix, bottom, mid, out, stride=1, dilation=1, project=False,
               stride_on="3x3", with_bn=True):
    """One ResNet bottleneck named as in the PSPNet/ICNet deploys.

    Layers: ``<prefix>_1x1_reduce``, ``_3x3``, ``_1x1_increase`` (each with
    ``/bn`` when ``with_bn``, ReLU on the first two), ``_1x1_proj`` when
    ``project``, the sum ``<prefix>`` = (shortcut, increase) and
    ``<prefix>/relu``.

    Parameters
    ----------
    stride_on : {"3x3", "1x1_reduce"}
        Where the block's stride sits: PSPNet puts it on the 3x3 conv,
        ICNet on the 1x1 reduction. The projection always has it.
    """
    s_reduce, s_3x3 = (stride, 1) if stride_on == "1x1_reduce" else (1, stride)
    x = conv_bn(n, prefix + "_1x1_reduce", bottom, mid, ks=1, stride=s_reduce,
                with_bn=with_bn)
    x = conv_bn(n, prefix + "_3x3", x, mid, ks=3, stride=s_3x3, pad=dilation,
                dilation=dilation, with_bn=with_bn)
    x = conv_bn(n, prefix + "_1x1_increase", x, out, ks=1, with_bn=with_bn,
                with_relu=False)
    shortcut = bottom
    if project:
        shortcut = conv_bn(n, prefix + "_1x1_proj", bottom, out, ks=1, stride=stride,
                           with_bn=with_bn, with_relu=False)
    n[prefix] = eltwise_sum(shortcut, x)
    n[prefix + "/relu"] = top = relu(n[prefix])
    return top


def deep_stem(n, bottom, widths, with_bn=True):
    """conv1_1_3x3_s2 / conv1_2_3x3 / conv1_3_3x3 and pool1_3x3_s2."""
    names = ("conv1_1_3x3_s2", "conv1_2_3x3", "conv1_3_3x3")
    x = bottom
    for i, (name, width) in enumerate(zip(names, widths)):
        x = conv_bn(n, name, x, width, ks=3, stride=2 if i == 0 else 1, pad=1,
                    with_bn=with_bn)
    n.pool1_3x3_s2 = max_pool(x, ks=3, stride=2, pad=1)
    return n.pool1_3x3_s2


def ave_pool_hw(bottom, kernel, stride):
    """AVE Pooling with per-axis ``kernel``/``stride`` pairs; the square form
    (``kernel_size``/``stride``) when both axes agree, as PSPNet writes it."""
    (kh, kw), (sh, sw) = kernel, stride
    if kh == kw and sh == sw:
        pp = dict(kernel_size=kh, stride=sh)
    else:
        pp = dict(kernel_h=kh, kernel_w=kw, stride_h=sh, stride_w=sw)
    return L.Pooling(bottom, pooling_param=dict(pool=P.Pooling.AVE, **pp))


def pyramid_window(feature, bins):
    """AVE-pool (kernel, stride) for ``bins`` windows tiling ``feature`` cells.

    ``stride = feature // bins`` and ``kernel = feature - (bins - 1) * stride``;
    equals the original's ``kernel = stride = feature / bins`` when ``bins``
    divides ``feature``.

    Returns
    -------
    (int, int)
    """
    if feature < bins:
        raise ValueError("pyramid bin %d needs a feature map of at least %d cells, got %d"
                         % (bins, bins, feature))
    stride = feature // bins
    kernel = feature - (bins - 1) * stride
    if pool_output_size(feature, kernel, stride) != bins:     # guard the arithmetic
        raise AssertionError("pyramid window %d/%d over %d gives the wrong bin count"
                             % (kernel, stride, feature))
    return kernel, stride


# ------------------------------------------------------------ PSPNet itself

def feature_size(input_size):
    """Side of the stride-8 feature map (conv5_3) for one input side."""
    size = conv_output_size(input_size, 3, stride=2, pad=1)    # conv1_1_3x3_s2
    size = pool_output_size(size, 3, stride=2, pad=1)          # pool1_3x3_s2
    return conv_output_size(size, 3, stride=2, pad=1)          # conv3_1_3x3


def pyramid_geometry(input_hw, bins=PYRAMID_BINS):
    """Feature size and per-bin AVE-pool windows for an input ``(H, W)``.

    Returns
    -------
    (fh, fw), {bin: ((kernel_h, kernel_w), (stride_h, stride_w))}
    """
    fh, fw = feature_size(input_hw[0]), feature_size(input_hw[1])
    windows = {}
    for b in bins:
        (kh, sh), (kw, sw) = pyramid_window(fh, b), pyramid_window(fw, b)
        windows[b] = ((kh, kw), (sh, sw))
    return (fh, fw), windows


def build(spec, input_hw, aux_branch=False):
    """NetParameter of PSPNet-101 for ``spec`` at ``input_hw``.

    Parameters
    ----------
    spec : ModelSpec
    input_hw : (int, int)
    aux_branch : bool
        Test-only: append the training-time auxiliary classifier on conv4_23
        (3x3 conv 1024->256 + BN + ReLU + Dropout 0.1, 1x1 conv -> classes)
        as PSPNet's paper describes it, to count the parameters a training
        snapshot would also store (docs/FIDELITY.md). Our own layer names
        (``aux_*``); never part of the committed deploy.
    """
    (fh, fw), windows = pyramid_geometry(input_hw)
    n = net_spec()
    n.data = data_input(input_hw)
    x = deep_stem(n, n.data, (64, 64, 128))
    for stage, blocks, mid, out, stride, dilation in RESNET101_STAGES:
        for i in range(1, blocks + 1):
            x = bottleneck(n, "conv%d_%d" % (stage, i), x, mid, out,
                           stride=stride if i == 1 else 1, dilation=dilation,
                           project=(i == 1), stride_on="3x3")
            if stage == 4 and i == blocks:
                conv4_out = x
    conv5_3 = x
    branches = {}
    for b in PYRAMID_BINS:
        name = "conv5_3_pool%d" % b
        n[name] = ave_pool_hw(conv5_3, *windows[b])
        pooled = conv_bn(n, name + "_conv", n[name], 512, ks=1)
        n[name + "_interp"] = branches[b] = interp(pooled, height=fh, width=fw)
    n.conv5_3_concat = L.Concat(conv5_3, *(branches[b] for b in reversed(PYRAMID_BINS)))
    x = conv_bn(n, "conv5_4", n.conv5_3_concat, 512, ks=3, pad=1)
    n["conv5_4/dropout"] = dropout(x, ratio=0.1)
    n.conv6 = conv(n["conv5_4/dropout"], spec.num_classes, ks=1, param=CLASSIFIER_PARAM)
    n.conv6_interp = interp(n.conv6, zoom_factor=8)
    if aux_branch:
        a = conv_bn(n, "aux_conv", conv4_out, 256, ks=3, pad=1)
        n["aux_conv/dropout"] = dropout(a, ratio=0.1)
        n.aux_cls = conv(n["aux_conv/dropout"], spec.num_classes, ks=1)
    return n.to_proto()
