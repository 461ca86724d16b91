"""The embedded default: a small FCN trained on the synthetic dataset.

Small enough to commit (about 75 K parameters) and to attack with all four
attacks over the paper's eps list in minutes on two CPU cores, yet built from
the same pieces as the paper's nets (3x3 convolutions, max pooling, dilated
convolutions, a skip connection, fixed bilinear deconvolutions, Crop), so
that the demo exercises the real machinery. ``make train-tiny`` trains it
(caffe_attacks/train_tiny.py).
"""
from caffe_attacks.zoo import ModelSpec
from caffe_attacks.zoo.netspec_tools import (FROZEN, conv, conv_relu, crop, data_input, deconv,
                                             eltwise_sum, max_pool, net_spec)

NUM_CLASSES = 5   # background + circle, square, triangle, cross (synthetic default)

MODELS = [
    ModelSpec("tiny_synthetic", "tiny", "synthetic", NUM_CLASSES, "data", "score",
              (96, 128), (), None),
]


def build(spec, input_hw, num_classes=None):
    return tiny_fcn(input_hw, num_classes or spec.num_classes)


def tiny_fcn(input_hw, num_classes):
    """NetParameter of the tiny FCN at input (H, W); output score (1, C, H, W)."""
    n = net_spec()
    n.data = data_input(input_hw)
    n.conv1_1, n.relu1_1 = conv_relu(n.data, 16)
    n.conv1_2, n.relu1_2 = conv_relu(n.relu1_1, 16)
    n.pool1 = max_pool(n.relu1_2)
    n.conv2_1, n.relu2_1 = conv_relu(n.pool1, 32)
    n.conv2_2, n.relu2_2 = conv_relu(n.relu2_1, 32)
    n.pool2 = max_pool(n.relu2_2)
    # dilated context, as in DeepLab / DilatedNet, at 1/4 resolution
    n.conv3_1, n.relu3_1 = conv_relu(n.pool2, 64, pad=2, dilation=2)
    n.conv3_2, n.relu3_2 = conv_relu(n.relu3_1, 64, pad=4, dilation=4)
    n.score_fr = conv(n.relu3_2, num_classes, ks=1)
    # x2 bilinear upsampling (fixed), fused with a 1/2-resolution skip as FCN does
    bilinear = dict(type="bilinear")
    n.upscore2 = deconv(n.score_fr, num_classes, ks=4, stride=2, pad=1, group=num_classes,
                        weight_filler=bilinear, param=FROZEN)
    n.score_pool1 = conv(n.pool1, num_classes, ks=1)
    # ceil-mode pooling can make upscore2 a pixel larger than pool1, never smaller
    n.upscore2c = crop(n.upscore2, n.score_pool1, offset=0)
    n.fuse_pool1 = eltwise_sum(n.upscore2c, n.score_pool1)
    n.upscore = deconv(n.fuse_pool1, num_classes, ks=4, stride=2, pad=1, group=num_classes,
                       weight_filler=bilinear, param=FROZEN)
    n.score = crop(n.upscore, n.data, offset=0)
    return n.to_proto()
