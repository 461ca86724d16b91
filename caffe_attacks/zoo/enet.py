"""ENet (TimoSaemann/ENet) for Cityscapes at 512x1024.

Writes ``prototxts/enet_deploy_final.prototxt`` (BN and spatial dropout
folded into the convolutions; the deploy of ``cityscapes_weights.caffemodel``)
layer for layer, with the fork's 2-blob inference ``BN``
and max-unpooling ``Upsample`` as our Python layers.

Architecture
------------
Initial block: conv0_1 3x3/2 (13 ch) beside pool0_1 2x2/2 on the image,
concat (16 ch), bn0_1, PReLU. Bottleneck ``s_i`` = 1x1 (or 2x2/2 when
downsampling) reduction to a quarter of the width, a middle conv (3x3,
dilated 3x3, or asymmetric 5x1 then 1x5), 1x1 expansion, summed with the
main branch. Encoder stages 1 (64 ch: 1_0 down, 1_1..1_4), 2 (128 ch: 2_0
down, 2_1..2_8) and 3 (2's pattern without 3_0) use PReLU; the downsampling
main branch is max-pool-with-mask + 1x1 conv (the Caffe port's choice, not
the paper's zero padding). Decoder stages 4 (64 ch) and 5 (16 ch) use ReLU
(still named ``prelu*``): 1x1 reduction, 2x2/2 deconv + BN, 1x1 expansion,
beside the main 1x1 conv + Upsample by the encoder's pooling mask; then
regular bottlenecks; ``deconv6_0_0`` 2x2/2 -> classes is the logits (no
Softmax in the deploy).

The asymmetric convs keep the original's symmetric ``pad: 1`` (5x1 then
1x5: 64x128 -> 62x130 -> 64x128), so trained weights align spatially.

Input size: any ``H, W`` divisible by 8 (three 2x2/2 poolings must be undone
exactly by the Upsample layers and deconvolutions); the logits have the
input's size.
"""
from caffe_attacks.zoo import ModelSpec
from caffe_attacks.zoo.netspec_tools import (
    L, LEARNED, conv, data_input, deconv, eltwise_sum, max_pool, net_spec,
    scale_shift_bn, upsample)

MODELS = [
    ModelSpec(name="enet_cityscapes", family="enet", dataset="cityscapes",
              num_classes=19, input_blob="data", score_blob="deconv6_0_0",
              reference_input=(512, 1024), custom_layers=("BN", "Upsample"),
              table_a4_mib=1.5),
]

# Middle conv of each bottleneck: ("regular",), ("dilated", d), ("asymmetric", 5).
REGULAR, ASYMMETRIC = ("regular",), ("asymmetric", 5)


def dilated(rate):
    return ("dilated", rate)


# Stages 2 and 3 share this pattern for blocks 1..8.
STAGE_2_3 = (REGULAR, dilated(2), ASYMMETRIC, dilated(4),
             REGULAR, dilated(8), ASYMMETRIC, dilated(16))


def check_input(input_hw):
    """Raise ValueError unless both sides are divisible by 8."""
    if any(int(s) % 8 for s in input_hw):
        raise ValueError("ENet needs input sides divisible by 8; got %s" % (tuple(input_hw),))


def _activation(bottom, prelu):
    # Encoder: per-channel PReLU; decoder: ReLU (the original keeps "prelu" names).
    return L.PReLU(bottom) if prelu else L.ReLU(bottom)


def _middle_conv(n, name, bottom, width, kind):
    """The bottleneck's middle conv ``<name>`` (and ``<name>_a`` if asymmetric)."""
    if kind[0] == "asymmetric":
        k = kind[1]
        n[name + "_a"] = conv(bottom, width, ks=(k, 1), pad=1, param=LEARNED)
        n[name] = conv(n[name + "_a"], width, ks=(1, k), pad=1, param=LEARNED)
    elif kind[0] == "dilated":
        n[name] = conv(bottom, width, ks=3, pad=kind[1], dilation=kind[1], param=LEARNED)
    else:
        n[name] = conv(bottom, width, ks=3, pad=1, param=LEARNED)
    return n[name]


def regular_bottleneck(n, tag, bottom, width, kind=REGULAR, prelu=True):
    """Bottleneck ``tag`` (e.g. "2_3") without resampling; returns its output.

    Layers: conv<tag>_0 1x1 -> width/4, prelu<tag>_0, conv<tag>_1 (middle),
    prelu<tag>_1, conv<tag>_2 1x1 -> width, eltwise<tag>_4 = (input, conv),
    prelu<tag>_4.
    """
    inner = width // 4
    n["conv%s_0" % tag] = conv(bottom, inner, ks=1, param=LEARNED)
    n["prelu%s_0" % tag] = _activation(n["conv%s_0" % tag], prelu)
    mid = _middle_conv(n, "conv%s_1" % tag, n["prelu%s_0" % tag], inner, kind)
    n["prelu%s_1" % tag] = _activation(mid, prelu)
    n["conv%s_2" % tag] = conv(n["prelu%s_1" % tag], width, ks=1, param=LEARNED)
    n["eltwise%s_4" % tag] = eltwise_sum(bottom, n["conv%s_2" % tag])
    n["prelu%s_4" % tag] = _activation(n["eltwise%s_4" % tag], prelu)
    return n["prelu%s_4" % tag]


def downsampling_bottleneck(n, stage, bottom, width):
    """Bottleneck ``<stage>_0`` halving the resolution; returns (output, mask).

    Extension: conv 2x2/2 -> width/4, 3x3, 1x1 -> width. Main branch:
    pool<stage>_0_4 (MAX 2x2/2 with its argmax mask) and a 1x1 conv -> width.
    """
    tag, inner = "%d_0" % stage, width // 4
    n["conv%s_0" % tag] = conv(bottom, inner, ks=2, stride=2, param=LEARNED)
    n["prelu%s_0" % tag] = L.PReLU(n["conv%s_0" % tag])
    n["conv%s_1" % tag] = conv(n["prelu%s_0" % tag], inner, ks=3, pad=1, param=LEARNED)
    n["prelu%s_1" % tag] = L.PReLU(n["conv%s_1" % tag])
    n["conv%s_2" % tag] = conv(n["prelu%s_1" % tag], width, ks=1, param=LEARNED)
    pool, mask = "pool%s_4" % tag, "pool%s_4_mask" % tag
    n[pool], n[mask] = max_pool(bottom, ks=2, stride=2, ntop=2)
    n["conv%s_4" % tag] = conv(n[pool], width, ks=1, param=LEARNED)
    n["eltwise%s_4" % tag] = eltwise_sum(n["conv%s_4" % tag], n["conv%s_2" % tag])
    n["prelu%s_4" % tag] = L.PReLU(n["eltwise%s_4" % tag])
    return n["prelu%s_4" % tag], n[mask]


def upsampling_bottleneck(n, stage, bottom, width, mask):
    """Bottleneck ``<stage>_0`` doubling the resolution (decoder, ReLU).

    Extension: 1x1 -> width/4, deconv 2x2/2 + bn<stage>_0_1, 1x1 -> width.
    Main branch: 1x1 conv -> width, Upsample by the encoder's pooling ``mask``.
    """
    tag, inner = "%d_0" % stage, width // 4
    n["conv%s_0" % tag] = conv(bottom, inner, ks=1, param=LEARNED)
    n["prelu%s_0" % tag] = L.ReLU(n["conv%s_0" % tag])
    n["deconv%s_1" % tag] = deconv(n["prelu%s_0" % tag], inner, ks=2, stride=2, bias=True,
                                   param=LEARNED)
    n["bn%s_1" % tag] = scale_shift_bn(n["deconv%s_1" % tag])
    n["prelu%s_1" % tag] = L.ReLU(n["bn%s_1" % tag])
    n["conv%s_2" % tag] = conv(n["prelu%s_1" % tag], width, ks=1, param=LEARNED)
    n["conv%s_4" % tag] = conv(bottom, width, ks=1, param=LEARNED)
    n["upsample%s_4" % tag] = upsample(n["conv%s_4" % tag], mask, scale=2)
    n["eltwise%s_4" % tag] = eltwise_sum(n["upsample%s_4" % tag], n["conv%s_2" % tag])
    n["prelu%s_4" % tag] = L.ReLU(n["eltwise%s_4" % tag])
    return n["prelu%s_4" % tag]


def build(spec, input_hw):
    """NetParameter of ENet for ``spec`` at ``input_hw`` (sides divisible by 8)."""
    check_input(input_hw)
    n = net_spec()
    n.data = data_input(input_hw, name="data")
    n.conv0_1 = conv(n.data, 13, ks=3, stride=2, pad=1, param=LEARNED)
    n.pool0_1 = max_pool(n.data, ks=2, stride=2)
    n.concat0_1 = L.Concat(n.conv0_1, n.pool0_1, concat_param=dict(axis=1))
    n.bn0_1 = scale_shift_bn(n.concat0_1)
    n.prelu0_1 = L.PReLU(n.bn0_1)

    x, mask1 = downsampling_bottleneck(n, 1, n.prelu0_1, 64)
    for i in range(1, 5):
        x = regular_bottleneck(n, "1_%d" % i, x, 64)
    x, mask2 = downsampling_bottleneck(n, 2, x, 128)
    for stage in (2, 3):
        for i, kind in enumerate(STAGE_2_3, start=1):
            x = regular_bottleneck(n, "%d_%d" % (stage, i), x, 128, kind)

    x = upsampling_bottleneck(n, 4, x, 64, mask2)
    for i in (1, 2):
        x = regular_bottleneck(n, "4_%d" % i, x, 64, prelu=False)
    x = upsampling_bottleneck(n, 5, x, 16, mask1)
    x = regular_bottleneck(n, "5_1", x, 16, prelu=False)
    n.deconv6_0_0 = deconv(x, spec.num_classes, ks=2, stride=2, bias=True, param=LEARNED)
    return n.to_proto()
