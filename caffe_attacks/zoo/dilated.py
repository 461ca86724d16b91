"""Dilated Convolutions (Yu & Koltun), fyu/dilation: front end and context.

- ``dilated_context_voc`` = ``dilation8_pascal_voc_deploy`` (front end +
  "large" context module ``ct_*``), 900x900 input, 66x66 scores.
- ``dilated_context_cityscapes`` = ``dilation10_cityscapes_deploy`` (front end +
  "basic" context ``ctx_*`` + fixed 8x group deconvolution), 1396x1396 input.
- ``dilated_frontend_*``: the same definitions truncated after the front end's
  classifier (``fc-final`` / ``final``) plus a Softmax ``prob``, as the
  historical ``dilated_convolution_front.prototxt``; they load the context
  caffemodels (Caffe ignores the extra blobs). No frontend-only weights were
  ever released.

The score blob is the last layer before the Softmax ``prob``.
"""
from caffe_attacks.zoo import ModelSpec
from caffe_attacks.zoo.netspec_tools import (
    L, channels, conv, conv_relu, data_input, deconv, dropout, max_pool, net_spec)

MODELS = [
    ModelSpec("dilated_frontend_voc", "dilated", "voc", 21, "data", "fc-final",
              (900, 900), (), 512.4),
    ModelSpec("dilated_context_voc", "dilated", "voc", 21, "data", "ct_final",
              (900, 900), (), 538.4),
    ModelSpec("dilated_frontend_cityscapes", "dilated", "cityscapes", 19, "data", "final",
              (1396, 1396), (), 512.4),
    ModelSpec("dilated_context_cityscapes", "dilated", "cityscapes", 19, "data", "ctx_upsample",
              (1396, 1396), (), 512.6),
]


def build(spec, input_hw, width_mult=1.0):
    """NetParameter of ``spec`` at input ``(H, W)``; ``width_mult`` is test-only."""
    context = spec.name.startswith("dilated_context")
    if spec.dataset == "voc":
        return dilation8_voc(input_hw, spec.num_classes, context, width_mult)
    return dilation10_cityscapes(input_hw, spec.num_classes, context, width_mult)


def frontend(n, width_mult=1.0):
    """VGG-16 front end: valid (pad 0) convs, pool4/pool5 removed, conv5 dilation 2,
    fc6 7x7 dilation 4; returns fc7 after ReLU and Dropout (stride 8)."""
    w = lambda c: channels(c, width_mult)   # noqa: E731
    n.conv1_1, n.relu1_1 = conv_relu(n.data, w(64), pad=0)
    n.conv1_2, n.relu1_2 = conv_relu(n.relu1_1, w(64), pad=0)
    n.pool1 = max_pool(n.relu1_2)
    n.conv2_1, n.relu2_1 = conv_relu(n.pool1, w(128), pad=0)
    n.conv2_2, n.relu2_2 = conv_relu(n.relu2_1, w(128), pad=0)
    n.pool2 = max_pool(n.relu2_2)
    n.conv3_1, n.relu3_1 = conv_relu(n.pool2, w(256), pad=0)
    n.conv3_2, n.relu3_2 = conv_relu(n.relu3_1, w(256), pad=0)
    n.conv3_3, n.relu3_3 = conv_relu(n.relu3_2, w(256), pad=0)
    n.pool3 = max_pool(n.relu3_3)
    n.conv4_1, n.relu4_1 = conv_relu(n.pool3, w(512), pad=0)
    n.conv4_2, n.relu4_2 = conv_relu(n.relu4_1, w(512), pad=0)
    n.conv4_3, n.relu4_3 = conv_relu(n.relu4_2, w(512), pad=0)
    n.conv5_1, n.relu5_1 = conv_relu(n.relu4_3, w(512), pad=0, dilation=2)
    n.conv5_2, n.relu5_2 = conv_relu(n.relu5_1, w(512), pad=0, dilation=2)
    n.conv5_3, n.relu5_3 = conv_relu(n.relu5_2, w(512), pad=0, dilation=2)
    n.fc6, n.relu6 = conv_relu(n.relu5_3, w(4096), ks=7, pad=0, dilation=4)
    n.drop6 = dropout(n.relu6)
    n.fc7, n.relu7 = conv_relu(n.drop6, w(4096), ks=1, pad=0)
    n.drop7 = dropout(n.relu7)
    return n.drop7


def dilation8_voc(input_hw, num_classes, context, width_mult=1.0):
    """dilation8_pascal_voc: front end + large context (2C, 4C, 8C, 16C, 32C ch)."""
    c = num_classes
    n = net_spec()
    n.data = data_input(input_hw)
    n["fc-final"] = conv(frontend(n, width_mult), c, ks=1)
    if not context:
        n.prob = L.Softmax(n["fc-final"])
        return n.to_proto()
    # valid convs after a 33-pixel pad: 66 -> 130 -> ... -> 66
    n.ct_conv1_1, n.ct_relu1_1 = conv_relu(n["fc-final"], 2 * c, pad=33)
    n.ct_conv1_2, n.ct_relu1_2 = conv_relu(n.ct_relu1_1, 2 * c, pad=0)
    n.ct_conv2_1, n.ct_relu2_1 = conv_relu(n.ct_relu1_2, 4 * c, pad=0, dilation=2)
    n.ct_conv3_1, n.ct_relu3_1 = conv_relu(n.ct_relu2_1, 8 * c, pad=0, dilation=4)
    n.ct_conv4_1, n.ct_relu4_1 = conv_relu(n.ct_relu3_1, 16 * c, pad=0, dilation=8)
    n.ct_conv5_1, n.ct_relu5_1 = conv_relu(n.ct_relu4_1, 32 * c, pad=0, dilation=16)
    n.ct_fc1, n.ct_fc1_relu = conv_relu(n.ct_relu5_1, 32 * c, pad=0)
    n.ct_final = conv(n.ct_fc1_relu, c, ks=1)
    n.prob = L.Softmax(n.ct_final)
    return n.to_proto()


def dilation10_cityscapes(input_hw, num_classes, context, width_mult=1.0):
    """dilation10_cityscapes: front end + basic context (C channels, dilations
    1, 1, 2, 4, 8, 16, 32, 64, same padding) + fixed 8x bilinear deconvolution."""
    c = num_classes
    n = net_spec()
    n.data = data_input(input_hw)
    n.final = conv(frontend(n, width_mult), c, ks=1)
    if not context:
        n.prob = L.Softmax(n.final)
        return n.to_proto()
    n.ctx_conv1_1, n.ctx_relu1_1 = conv_relu(n.final, c, pad=1)
    n.ctx_conv1_2, n.ctx_relu1_2 = conv_relu(n.ctx_relu1_1, c, pad=1)
    n.ctx_conv2_1, n.ctx_relu2_1 = conv_relu(n.ctx_relu1_2, c, pad=2, dilation=2)
    n.ctx_conv3_1, n.ctx_relu3_1 = conv_relu(n.ctx_relu2_1, c, pad=4, dilation=4)
    n.ctx_conv4_1, n.ctx_relu4_1 = conv_relu(n.ctx_relu3_1, c, pad=8, dilation=8)
    n.ctx_conv5_1, n.ctx_relu5_1 = conv_relu(n.ctx_relu4_1, c, pad=16, dilation=16)
    n.ctx_conv6_1, n.ctx_relu6_1 = conv_relu(n.ctx_relu5_1, c, pad=32, dilation=32)
    n.ctx_conv7_1, n.ctx_relu7_1 = conv_relu(n.ctx_relu6_1, c, pad=64, dilation=64)
    n.ctx_fc1, n.ctx_fc1_relu = conv_relu(n.ctx_relu7_1, c, pad=1)
    n.ctx_final = conv(n.ctx_fc1_relu, c, ks=1)
    n.ctx_upsample = deconv(n.ctx_final, c, ks=16, stride=8, pad=4, group=c,
                            weight_filler=dict(type="bilinear"))
    n.prob = L.Softmax(n.ctx_upsample)
    return n.to_proto()
