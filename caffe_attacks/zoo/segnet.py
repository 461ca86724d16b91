"""SegNet VGG-16 (VOC): alexgkendall/SegNet-Tutorial ``segnet_pascal.prototxt``.

Encoder: VGG-16 convs (3x3, pad 1) each followed by the 2-blob INFERENCE ``BN``
(our ``ScaleShiftBN``, in place as in the original) and ReLU; Dropout before
each pool (identity at test); MAX pools that also emit the argmax mask.
Decoder: ``Upsample`` (max-unpooling by the mask) and mirrored conv/BN/ReLU;
``conv1_1_D`` gives the logits, ``prob`` their Softmax. Input 224x224.
"""
from caffe_attacks.caffe_geometry import pool_output_size
from caffe_attacks.zoo import ModelSpec
from caffe_attacks.zoo.netspec_tools import (
    L, channels, conv, data_input, dropout, max_pool, net_spec, relu, scale_shift_bn,
    upsample)

MODELS = [
    ModelSpec("segnet_vgg_voc", "segnet", "voc", 21, "data", "conv1_1_D", (224, 224),
              ("BN", "Upsample"), 112.4),
]

# encoder stages: (index, number of convs, channels)
ENCODER = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))


def build(spec, input_hw, width_mult=1.0):
    """NetParameter at input ``(H, W)`` (multiples of 32 keep every unpooling exact)."""
    return segnet(input_hw, spec.num_classes, width_mult)


def _conv_bn_relu(n, bottom, name, nout):
    n[name] = conv(bottom, nout, ks=3, pad=1)
    n[name + "_bn"] = scale_shift_bn(n[name], in_place=True)
    relu_name = "relu" + name[len("conv"):]
    n[relu_name] = relu(n[name + "_bn"])
    return n[relu_name]


def segnet(input_hw, num_classes, width_mult=1.0):
    w = lambda c: channels(c, width_mult)   # noqa: E731
    n = net_spec()
    n.data = data_input(input_hw)
    top = n.data
    sizes = []      # pre-pool spatial sizes, for unpooling back exactly
    h, wd = input_hw
    for stage, nconv, nout in ENCODER:
        for k in range(1, nconv + 1):
            top = _conv_bn_relu(n, top, "conv%d_%d" % (stage, k), w(nout))
        n["pool%d_drop" % stage] = dropout(top)
        n["pool%d" % stage], n["pool%d_mask" % stage] = max_pool(
            n["pool%d_drop" % stage], ntop=2)
        sizes.append((h, wd))
        h, wd = pool_output_size(h, 2, stride=2), pool_output_size(wd, 2, stride=2)
        top = n["pool%d" % stage]
    for stage, nconv, nout in reversed(ENCODER):
        n["upsample%d_drop" % stage] = dropout(top)
        # unpool to the pre-pool size; "scale: 2" where that is exact (as the original)
        hh, ww = sizes[stage - 1]
        params = dict(scale=2) if (hh, ww) == (2 * h, 2 * wd) else dict(
            scale=2, upsample_h=hh, upsample_w=ww)
        n["pool%d_D" % stage] = upsample(n["upsample%d_drop" % stage],
                                         n["pool%d_mask" % stage],
                                         name="upsample%d" % stage, **params)
        h, wd = hh, ww
        top = n["pool%d_D" % stage]
        for k in range(nconv, 0, -1):
            if stage == 1 and k == 1:
                break
            # the last conv of a decoder stage narrows to the next stage's width
            last = k == 1
            nxt = ENCODER[stage - 2][2] if last else nout
            top = _conv_bn_relu(n, top, "conv%d_%d_D" % (stage, k), w(nxt))
    n.conv1_1_D = conv(top, num_classes, ks=3, pad=1)
    n.prob = L.Softmax(n.conv1_1_D)
    return n.to_proto()
