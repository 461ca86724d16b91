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
from caffe_attacks.zoo.fcn import authors_fcn8s_upsampled
from caffe_attacks.zoo.netspec_tools import L, crop, data_input, meanfield, net_spec

MODELS = [
    ModelSpec("crfrnn_voc", "crfrnn", "voc", 21, "data", "pred", (500, 500),
              ("MultiStageMeanfield", "Crop"), 513.0),
]

# multi_stage_meanfield_param of the VOC deploy (torrvision/crfasrnn,
# python-scripts/TVG_CRFRNN_new_deploy.prototxt)
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
    # the authors' FCN-8s head with the CRF-RNN deploy's duplicate names
    bigscore = authors_fcn8s_upsampled(n, num_classes, width_mult,
                                       crop_names=("crop", "crop"), fuse_names=("fuse", "fuse"))
    n.coarse = crop(bigscore, n.data, offset=31, name="crop")
    n.unary, n.Q0 = L.Split(n.coarse, ntop=2, name="splitting")
    n.pred = meanfield(n.unary, n.Q0, n.data, name="inference1", **meanfield_params)
    return n.to_proto()
