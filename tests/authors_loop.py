"""An independent port of the paper authors' attack loop, as the tests' oracle.

Written here from reading anuragarnab/adversarial-attacks @937f7df
(attacks.py: fgsm, fgsm_targetted, IterativeFGSM, IterativeFGSMLeastLikely;
main.py, lib.py, dilated.py for the input preparation). It drives pycaffe
directly, as they did, on a definition that has what their attack prototxts
have: an input "label" the size of the scores, a SoftmaxWithLoss layer
(ignore_label 255, normalize: false) on the logits, force_backward, and an
"output" blob that is either the logits (FCN8 VOC) or a Softmax of them
(Dilation10 Cityscapes). The order of operations is theirs: write the data,
write a dummy label 0, forward, read the output, write the label,
``backward(diffs=["data"])``, sign, step, clip to the eps-ball only.

Nothing of caffe_attacks is used here except the definition text.

Their ``np.argsort(-output, axis=0)`` ran on the numpy of 2018, whose argsort
was the scalar introsort; today's numpy dispatches float32 argsort to SIMD
kernels on AVX2/AVX-512 CPUs, which order ties differently. ``argsort``
chooses: "scalar" (default; tests/introsort.py, pixel by pixel) or "numpy"
(the running numpy's default sort, to count what the dispatch changes).
"""
import math
import os
import tempfile

import numpy as np

from tests.introsort import scalar_argsort

os.environ.setdefault("GLOG_minloglevel", "2")
import caffe  # noqa: E402
from caffe.proto import caffe_pb2  # noqa: E402
from google.protobuf import text_format  # noqa: E402


def _net_from(param):
    with tempfile.NamedTemporaryFile("w", suffix=".prototxt", delete=False) as f:
        f.write(text_format.MessageToString(param))
    try:
        return caffe.Net(f.name, caffe.TEST)
    finally:
        os.unlink(f.name)


def attack_definition(deploy_text, input_blob, score_blob, output_is_softmax):
    """The deploy text turned into an attack definition like the authors' prototxts."""
    deploy = caffe_pb2.NetParameter()
    text_format.Merge(deploy_text, deploy)
    score_shape = _net_from(deploy).blobs[score_blob].data.shape
    param = caffe_pb2.NetParameter()
    param.CopyFrom(deploy)
    param.force_backward = True
    # a deploy's own Softmax on the logits is replaced by the one named "output"
    kept = [l for l in param.layer if not (l.type == "Softmax" and list(l.bottom) == [score_blob])]
    del param.layer[:]
    param.layer.extend(kept)
    param.input.append("label")
    param.input_shape.add().dim.extend([score_shape[0], 1, score_shape[2], score_shape[3]])
    if output_is_softmax:
        prob = param.layer.add()
        prob.name, prob.type = "prob", "Softmax"
        prob.bottom.append(score_blob)
        prob.top.append("output")
        output = "output"
    else:
        output = score_blob
    loss = param.layer.add()
    loss.name, loss.type = "loss", "SoftmaxWithLoss"
    loss.bottom.extend([score_blob, "label"])
    loss.top.append("loss")
    loss.loss_param.ignore_label = 255
    loss.loss_param.normalize = False
    return param, output


class AuthorsNet:
    """A pycaffe net set up as the authors' attack definitions.

    params : {layer name: [arrays]} copied in (e.g. from a caffe.Net's params)
    """

    def __init__(self, deploy_text, input_blob, score_blob, output_is_softmax, params,
                 argsort="scalar"):
        if argsort not in ("scalar", "numpy"):
            raise ValueError(argsort)
        self.argsort = argsort
        param, self.output = attack_definition(deploy_text, input_blob, score_blob,
                                               output_is_softmax)
        self.net = _net_from(param)
        self.data = input_blob
        for name, blobs in params.items():
            for blob, value in zip(self.net.params[name], blobs):
                blob.data[...] = np.asarray(value).reshape(blob.data.shape)

    def _ranking(self, negated):
        """argsort along axis 0 of a (C, h, w) array."""
        if self.argsort == "numpy":
            return np.argsort(negated, axis=0)
        c, h, w = negated.shape
        columns = negated.reshape(c, -1)
        order = [scalar_argsort(columns[:, j].tolist()) for j in range(columns.shape[1])]
        return np.array(order, dtype=np.int64).T.reshape(c, h, w)

    def num_iterations(self, eps):
        # as the authors: min(eps + 4, 1.25 eps), ceil, at least 1
        return int(max(math.ceil(min(eps + 4, 1.25 * eps)), 1))

    def _forward(self, x, label):
        self.net.blobs[self.data].data[...] = x
        self.net.blobs["label"].data[...] = label
        self.net.forward()
        return self.net.blobs[self.output].data[0]

    def _input_gradient(self, label):
        self.net.blobs["label"].data[...] = label
        return self.net.backward(diffs=[self.data])[self.data]

    def fgsm(self, x, eps):
        output = self._forward(x, 0)
        pred = output.argmax(axis=0).astype(np.uint32)
        return x + np.sign(self._input_gradient(pred)) * eps

    def fgsm_ll(self, x, eps):
        """Their fgsm_targetted with target_idx = C - 1."""
        output = self._forward(x, 0)
        ranking = self._ranking(-output)
        target = ranking[ranking.shape[0] - 1]
        return x - np.sign(self._input_gradient(target)) * eps

    def ifgsm(self, x, eps, alpha=1.0):
        lo, hi = x - eps, x + eps
        adv = x
        self.net.blobs["label"].data[...] = 0
        for i in range(self.num_iterations(eps)):
            self.net.blobs[self.data].data[...] = adv
            self.net.forward()
            pred = self.net.blobs[self.output].data[0].argmax(axis=0).astype(np.uint32)
            if i == 0:
                self.net.blobs["label"].data[...] = pred
            grad = self.net.backward(diffs=[self.data])[self.data]
            adv = np.clip(adv + np.sign(grad) * alpha, lo, hi)
        return adv

    def ifgsm_ll(self, x, eps, alpha=1.0):
        lo, hi = x - eps, x + eps
        adv = x
        for _ in range(self.num_iterations(eps)):
            output = self._forward(adv, 0)
            ranking = self._ranking(-output)
            target = ranking[ranking.shape[0] - 1]
            grad = self._input_gradient(target)
            adv = np.clip(adv - np.sign(grad) * alpha, lo, hi)
        return adv


def authors_voc_canvas(image_bgr_uint8, mean, pad_size):
    """lib.PreprocessImage for VOC (their demo: constant pad to pad_size, no resize).

    Returns (1, 3, H, W) float64, as their arrays (float32 image minus a float64 mean).
    """
    import cv2
    image = image_bgr_uint8.astype(np.float32) - np.asarray(mean)
    h, w = image.shape[:2]
    if h > pad_size[1] or w > pad_size[0]:
        ratio = float(max(pad_size) / float(max(h, w)))
        image = cv2.resize(image, dsize=(int(w * ratio), int(h * ratio)))
    image = cv2.copyMakeBorder(image, 0, pad_size[1] - image.shape[0], 0,
                               pad_size[0] - image.shape[1], cv2.BORDER_CONSTANT)
    return image.transpose(2, 0, 1)[None]


def authors_dilated_canvas(image_bgr_uint8, mean, resize_dims, pad_size, label_margin=186):
    """dilated.PreprocessImage: mean-subtract, resize the float image, reflect-101 pad.

    Returns (1, 3, pad_H, pad_W) float64.
    """
    import cv2
    image = image_bgr_uint8.astype(np.float32) - np.asarray(mean)
    if resize_dims is not None:
        image = cv2.resize(image, dsize=(resize_dims[0], resize_dims[1]))
    padded = cv2.copyMakeBorder(image, label_margin, label_margin, label_margin, label_margin,
                                cv2.BORDER_REFLECT_101)
    padded = cv2.copyMakeBorder(padded, 0, pad_size[1] - padded.shape[0], 0,
                                pad_size[0] - padded.shape[1], cv2.BORDER_REFLECT_101)
    return padded.transpose(2, 0, 1)[None]
