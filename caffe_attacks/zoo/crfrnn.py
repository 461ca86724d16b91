"""CRF-RNN (VOC): torrvision/crfasrnn ``TVG_CRFRNN_new_deploy.prototxt``.

FCN-8s VGG-16 with the old FCN layer names (the paper authors' variant, with
Dropout and a learned ``score2``), then ``Split`` of the cropped unary into
``unary`` and ``Q0`` and the ``MultiStageMeanfield`` layer ``inference1``
(bottoms unary, Q0, data; the name makes the caffemodel fill its 3 blobs).

The fork's Crop computed its offsets at set-up; ours are BVLC Crops with the
offsets that computation gives for this geometry (axis 2: 5, 9, 31). The
original layer names, duplicates included (three ``crop``, two ``fuse``), are
kept. The deploy (and the fork's lattice) is fixed at 500x500.
"""
from caffe_attacks.zoo import ModelSpec
from caffe_attacks.zoo.fcn import vgg16_fcn_trunk
from caffe_attacks.zoo.netspec_tools import (
    L, LEARNED_NO_BIAS, conv, crop, data_input, deconv, eltwise_sum, meanfield, net_spec)

MODELS = [
    ModelSpec("crfrnn_voc", "crfrnn", "voc", 21, "data", "pred", (500, 500),
              ("MultiStageMeanfield", "Crop"), 513.0),
]

# multi_stage_meanfield_param of the VOC deploy (ZOO.md 1.5)
MEANFIELD = dict(num_iterations=10, theta_alpha=160.0, theta_beta=3.0, theta_gamma=3.0,
                 spatial_filter_weight=3.0, bilateral_filter_weight=5.0,
                 compatibility="potts")


def build(spec, input_hw, width_mult=1.0, num_iterations=None):
    """NetParameter at input ``(H, W)``; ``width_mult``/``num_iterations`` test-only."""
    params = dict(MEANFIELD)
    if num_iterations is not None:
        params["num_iterations"] = int(num_iterations)
    return crfrnn(input_hw, spec.num_classes, params, width_mult)


def crfrnn(input_hw, num_classes, meanfield_params, width_mult=1.0):
    n = net_spec()
    n.data = data_input(input_hw)
    fc7 = vgg16_fcn_trunk(n, width_mult, with_dropout=True)
    n.score = conv(fc7, num_classes, ks=1, name="score-fr")
    n.score2 = deconv(n.score, num_classes, ks=4, stride=2, bias=True,
                      param=[dict(lr_mult=1)])
    n["score-pool4"] = conv(n.pool4, num_classes, ks=1)
    n["score-pool4c"] = crop(n["score-pool4"], n.score2, offset=5, name="crop")
    n["score-fused"] = eltwise_sum(n.score2, n["score-pool4c"], name="fuse")
    n.score4 = deconv(n["score-fused"], num_classes, ks=4, stride=2, param=LEARNED_NO_BIAS)
    n["score-pool3"] = conv(n.pool3, num_classes, ks=1)
    n["score-pool3c"] = crop(n["score-pool3"], n.score4, offset=9, name="crop")
    n["score-final"] = eltwise_sum(n.score4, n["score-pool3c"], name="fuse")
    n.bigscore = deconv(n["score-final"], num_classes, ks=16, stride=8, name="upsample")
    n.coarse = crop(n.bigscore, n.data, offset=31, name="crop")
    n.unary, n.Q0 = L.Split(n.coarse, ntop=2, name="splitting")
    n.pred = meanfield(n.unary, n.Q0, n.data, name="inference1", **meanfield_params)
    return n.to_proto()
