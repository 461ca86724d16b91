"""FCN-8s generators: VGG-16 (VOC, VOC by the paper's authors, Cityscapes) and
the paper's unpublished ResNet-101 FCN-8s (VOC).

- ``fcn8s_vgg_voc``: shelhamer/fcn.berkeleyvision.org ``voc-fcn8s`` deploy.
- ``fcn8s_vgg_voc_authors``: the paper authors' FCN-8s (anuragarnab/
  adversarial-attacks ``models/fcn8_voc.prototxt``), older FCN/CRF-RNN names
  (``score-fr`` -> ``score``, ``score2`` learned with bias, ``score-pool4``,
  ``score4``, ``score-pool3``, ``upsample``) and Dropout layers; output blob
  ``output``. Its label input and SoftmaxWithLoss are left out (the attack
  computes the loss in numpy).
- ``fcn8s_vgg_cityscapes``: shelhamer/clockwork-fcn ``net-fcn8s.py``, 19
  classes, group (per-class bilinear) deconvolutions.
- ``fcn8s_resnet101_voc``: our design, see :func:`fcn8s_resnet101` and
  docs/FIDELITY.md.
"""
from caffe_attacks.zoo import ModelSpec
from caffe_attacks.zoo.netspec_tools import (
    L, channels, conv, conv_relu, crop, data_input, deconv, dropout, eltwise_sum,
    max_pool, net_spec, relu, LEARNED, LEARNED_NO_BIAS)

MODELS = [
    ModelSpec("fcn8s_vgg_voc", "fcn", "voc", 21, "data", "score", (500, 500), (), 513.0),
    ModelSpec("fcn8s_vgg_voc_authors", "fcn", "voc", 21, "data", "output", (513, 513), (), 513.0),
    ModelSpec("fcn8s_vgg_cityscapes", "fcn", "cityscapes", 19, "data", "score",
              (512, 1024), (), 512.5),
    ModelSpec("fcn8s_resnet101_voc", "fcn", "voc", 21, "data", "score", (512, 512), (), 162.9),
]


def build(spec, input_hw, width_mult=1.0):
    """NetParameter of ``spec`` at input ``(H, W)``; ``width_mult`` is test-only."""
    if spec.name == "fcn8s_vgg_voc":
        return fcn8s_vgg(input_hw, spec.num_classes, group_deconv=False, width_mult=width_mult)
    if spec.name == "fcn8s_vgg_cityscapes":
        return fcn8s_vgg(input_hw, spec.num_classes, group_deconv=True, width_mult=width_mult)
    if spec.name == "fcn8s_vgg_voc_authors":
        return fcn8s_vgg_authors(input_hw, spec.num_classes, width_mult=width_mult)
    if spec.name == "fcn8s_resnet101_voc":
        return fcn8s_resnet101(input_hw, spec.num_classes, width_mult=width_mult)
    raise KeyError(spec.name)


def vgg16_fcn_trunk(n, width_mult=1.0, with_dropout=False):
    """VGG-16 as in FCN: conv1_1 pad 100, 2x2 pools, fc6 7x7 and fc7 as convs.

    Adds conv1_1 ... fc7 (and drop6/drop7 when ``with_dropout``) to ``n``,
    which must already hold ``n.data``.
    """
    w = lambda c: channels(c, width_mult)   # noqa: E731
    n.conv1_1, n.relu1_1 = conv_relu(n.data, w(64), pad=100)
    n.conv1_2, n.relu1_2 = conv_relu(n.relu1_1, w(64))
    n.pool1 = max_pool(n.relu1_2)
    n.conv2_1, n.relu2_1 = conv_relu(n.pool1, w(128))
    n.conv2_2, n.relu2_2 = conv_relu(n.relu2_1, w(128))
    n.pool2 = max_pool(n.relu2_2)
    n.conv3_1, n.relu3_1 = conv_relu(n.pool2, w(256))
    n.conv3_2, n.relu3_2 = conv_relu(n.relu3_1, w(256))
    n.conv3_3, n.relu3_3 = conv_relu(n.relu3_2, w(256))
    n.pool3 = max_pool(n.relu3_3)
    n.conv4_1, n.relu4_1 = conv_relu(n.pool3, w(512))
    n.conv4_2, n.relu4_2 = conv_relu(n.relu4_1, w(512))
    n.conv4_3, n.relu4_3 = conv_relu(n.relu4_2, w(512))
    n.pool4 = max_pool(n.relu4_3)
    n.conv5_1, n.relu5_1 = conv_relu(n.pool4, w(512))
    n.conv5_2, n.relu5_2 = conv_relu(n.relu5_1, w(512))
    n.conv5_3, n.relu5_3 = conv_relu(n.relu5_2, w(512))
    n.pool5 = max_pool(n.relu5_3)
    n.fc6, n.relu6 = conv_relu(n.pool5, w(4096), ks=7, pad=0)
    top6 = n.relu6
    if with_dropout:
        n.drop6 = top6 = dropout(n.relu6)
    n.fc7, n.relu7 = conv_relu(top6, w(4096), ks=1, pad=0)
    if with_dropout:
        n.drop7 = dropout(n.relu7)
        return n.drop7
    return n.relu7


def fcn8s_vgg(input_hw, num_classes, group_deconv, width_mult=1.0):
    """shelhamer voc-fcn8s (``group_deconv=False``) / clockwork cityscapes-fcn8s
    (``group_deconv=True``: one bilinear kernel per class, 1/C of the blobs)."""
    group = num_classes if group_deconv else 1
    n = net_spec()
    n.data = data_input(input_hw)
    fc7 = vgg16_fcn_trunk(n, width_mult)
    n.score_fr = conv(fc7, num_classes, ks=1)
    n.upscore2 = deconv(n.score_fr, num_classes, ks=4, stride=2, group=group)
    n.score_pool4 = conv(n.pool4, num_classes, ks=1)
    n.score_pool4c = crop(n.score_pool4, n.upscore2, offset=5)
    n.fuse_pool4 = eltwise_sum(n.upscore2, n.score_pool4c)
    n.upscore_pool4 = deconv(n.fuse_pool4, num_classes, ks=4, stride=2, group=group)
    n.score_pool3 = conv(n.pool3, num_classes, ks=1)
    n.score_pool3c = crop(n.score_pool3, n.upscore_pool4, offset=9)
    n.fuse_pool3 = eltwise_sum(n.upscore_pool4, n.score_pool3c)
    n.upscore8 = deconv(n.fuse_pool3, num_classes, ks=16, stride=8, group=group)
    n.score = crop(n.upscore8, n.data, offset=31)
    return n.to_proto()


def fcn8s_vgg_authors(input_hw, num_classes, width_mult=1.0):
    """The paper authors' FCN-8s: old layer names, learned ``score2`` with bias."""
    n = net_spec()
    n.data = data_input(input_hw)
    bigscore = authors_fcn8s_upsampled(n, num_classes, width_mult,
                                       crop_names=("score_pool4c", "score_pool3c"),
                                       fuse_names=("fuse", "fuse2"))
    n.output = crop(bigscore, n.data, offset=31, name="score_final_crop")
    return n.to_proto()


def authors_fcn8s_upsampled(n, num_classes, width_mult=1.0, crop_names=("crop", "crop"),
                            fuse_names=("fuse", "fuse")):
    """Trunk and head of the authors' FCN-8s, shared with CRF-RNN, up to ``bigscore``.

    Adds the Dropout VGG-16 trunk, ``score-fr`` ... ``upsample`` to ``n``
    (which must hold ``n.data``) and returns the uncropped 8x ``bigscore``
    top; the caller adds the final crop. The two models differ only in the
    layer names of the pool4/pool3 crops and fuses, hence ``crop_names`` and
    ``fuse_names`` (pool4, pool3).
    """
    fc7 = vgg16_fcn_trunk(n, width_mult, with_dropout=True)
    n.score = conv(fc7, num_classes, ks=1, name="score-fr")
    n.score2 = deconv(n.score, num_classes, ks=4, stride=2, bias=True,
                      param=[dict(lr_mult=1)])
    n["score-pool4"] = conv(n.pool4, num_classes, ks=1)
    n["score-pool4c"] = crop(n["score-pool4"], n.score2, offset=5, name=crop_names[0])
    n["score-fused"] = eltwise_sum(n.score2, n["score-pool4c"], name=fuse_names[0])
    n.score4 = deconv(n["score-fused"], num_classes, ks=4, stride=2,
                      param=LEARNED_NO_BIAS)
    n["score-pool3"] = conv(n.pool3, num_classes, ks=1)
    n["score-pool3c"] = crop(n["score-pool3"], n.score4, offset=9, name=crop_names[1])
    n["score-final"] = eltwise_sum(n.score4, n["score-pool3c"], name=fuse_names[1])
    n.bigscore = deconv(n["score-final"], num_classes, ks=16, stride=8, name="upsample")
    return n.bigscore


# ------------------------------------------------------------------ ResNet-101

# (stage, block names, bottleneck width, output width); MSRA ResNet-101 naming
RESNET101_STAGES = (
    (2, ("a", "b", "c"), 64, 256),
    (3, ("a",) + tuple("b%d" % i for i in range(1, 4)), 128, 512),
    (4, ("a",) + tuple("b%d" % i for i in range(1, 23)), 256, 1024),
    (5, ("a", "b", "c"), 512, 2048),
)


def _named(base, suffix, share):
    """Layer name with ``suffix``; param specs named after the unsuffixed base so
    that copies of the trunk (DeepLab MSC scales) share one set of blobs."""
    return base + suffix, (lambda k: dict(name="%s_%d" % (base, k)) if share else {})


def _conv_bn(n, bottom, base, bn_base, nout, ks, stride=1, pad=0, dilation=1,
             suffix="", share=True, with_relu=True):
    """MSRA unit: bias-free conv, BatchNorm (global stats) + Scale, optional ReLU."""
    name, pspec = _named(base, suffix, share)
    n[name] = conv(bottom, nout, ks=ks, stride=stride, pad=pad, dilation=dilation,
                   bias=False, param=[dict(lr_mult=1, decay_mult=1, **pspec(0))])
    bn, bn_pspec = _named("bn" + bn_base, suffix, share)
    n[bn] = L.BatchNorm(n[name], batch_norm_param=dict(use_global_stats=True),
                        param=[dict(lr_mult=0, **bn_pspec(k)) for k in range(3)],
                        in_place=True)
    sc, sc_pspec = _named("scale" + bn_base, suffix, share)
    n[sc] = L.Scale(n[bn], scale_param=dict(bias_term=True),
                    param=[dict(lr_mult=0, **sc_pspec(k)) for k in range(2)], in_place=True)
    if not with_relu:
        return n[sc]
    n[name + "_relu"] = relu(n[sc])
    return n[name + "_relu"]


def resnet101_trunk(n, bottom, dilated=True, suffix="", share=True, width_mult=1.0):
    """ResNet-101 (MSRA names, BatchNorm + Scale) on ``bottom``.

    Parameters
    ----------
    n : NetSpec
    bottom : NetSpec top, the mean-subtracted BGR image.
    dilated : bool
        True: DeepLab v2 (output stride 8; res4 dilation 2, res5 dilation 4).
        False: classification strides (output stride 32), for FCN.
    suffix : str
        Appended to every layer and blob name (DeepLab MSC: ``"_res05"``).
    share : bool
        Name the parameter blobs after the unsuffixed layers, so that several
        suffixed copies share weights.
    width_mult : float
        Test-only channel scaling.

    Returns
    -------
    dict
        ``{"res3": top, "res4": top, "res5": top}``: the last block of each
        of stages 3-5 (res3b3, res4b22, res5c), after its ReLU.
    """
    w = lambda c: channels(c, width_mult)   # noqa: E731
    top = _conv_bn(n, bottom, "conv1", "_conv1", w(64), ks=7, stride=2, pad=3,
                   suffix=suffix, share=share)
    n["pool1" + suffix] = max_pool(top, ks=3, stride=2, pad=1)
    top = n["pool1" + suffix]
    outputs = {}
    for stage, blocks, mid, out in RESNET101_STAGES:
        for i, block in enumerate(blocks):
            tag = "%d%s" % (stage, block)
            first = i == 0
            stride = 2 if first and stage >= 3 and (stage == 3 or not dilated) else 1
            dilation = {4: 2, 5: 4}.get(stage, 1) if dilated else 1
            if first:
                shortcut = _conv_bn(n, top, "res%s_branch1" % tag, "%s_branch1" % tag,
                                    w(out), ks=1, stride=stride, suffix=suffix,
                                    share=share, with_relu=False)
            else:
                shortcut = top
            # MSRA (Caffe) ResNet: the stride sits on the first 1x1 convolution
            x = _conv_bn(n, top, "res%s_branch2a" % tag, "%s_branch2a" % tag, w(mid),
                         ks=1, stride=stride, suffix=suffix, share=share)
            x = _conv_bn(n, x, "res%s_branch2b" % tag, "%s_branch2b" % tag, w(mid),
                         ks=3, pad=dilation, dilation=dilation, suffix=suffix, share=share)
            x = _conv_bn(n, x, "res%s_branch2c" % tag, "%s_branch2c" % tag, w(out),
                         ks=1, suffix=suffix, share=share, with_relu=False)
            n["res%s%s" % (tag, suffix)] = eltwise_sum(shortcut, x)
            n["res%s%s_relu" % (tag, suffix)] = relu(n["res%s%s" % (tag, suffix)])
            top = n["res%s%s_relu" % (tag, suffix)]
        if stage >= 3:
            outputs["res%d" % stage] = top
    return outputs


def fcn8s_resnet101(input_hw, num_classes, width_mult=1.0):
    """FCN-8s on ResNet-101 (our design for the paper's unpublished model).

    ResNet-101 at output stride 32 (MSRA, BatchNorm + Scale); 1x1 score
    layers with bias on res5c, res4b22 and res3b3; the two 2x upsamplings
    are learned full 21x21 4x4 deconvolutions (bias-free) and the final 8x
    is a fixed per-class (group) bilinear 16x16 deconvolution. Each
    deconvolution is padded to an exact 2x / 8x and cropped at offset 0 to
    the finer map: params 42,700,423 = 162.89 MiB (Table A4: 162.9).
    """
    n = net_spec()
    n.data = data_input(input_hw)
    feats = resnet101_trunk(n, n.data, dilated=False, width_mult=width_mult)
    n.score_res5 = conv(feats["res5"], num_classes, ks=1, param=LEARNED)
    n.upscore2 = deconv(n.score_res5, num_classes, ks=4, stride=2, pad=1,
                        param=LEARNED_NO_BIAS)
    n.score_res4 = conv(feats["res4"], num_classes, ks=1, param=LEARNED)
    n.upscore2c = crop(n.upscore2, n.score_res4, offset=0)
    n.fuse_res4 = eltwise_sum(n.upscore2c, n.score_res4)
    n.upscore_res4 = deconv(n.fuse_res4, num_classes, ks=4, stride=2, pad=1,
                            param=LEARNED_NO_BIAS)
    n.score_res3 = conv(feats["res3"], num_classes, ks=1, param=LEARNED)
    n.upscore_res4c = crop(n.upscore_res4, n.score_res3, offset=0)
    n.fuse_res3 = eltwise_sum(n.upscore_res4c, n.score_res3)
    n.upscore8 = deconv(n.fuse_res3, num_classes, ks=16, stride=8, pad=4, group=num_classes)
    n.score = crop(n.upscore8, n.data, offset=0)
    return n.to_proto()
