"""The pycaffe engine: a deploy net as a differentiable model.

``CaffeNet`` implements the model protocol of docs/DESIGN.md:
``forward(x) -> scores`` and ``input_gradient(x, dscores) -> dx``.  The
gradient of any loss is obtained by writing dL/dscores into the score blob's
diff and running ``net.backward`` from the layer that produced that blob.

The attacks' loss is Caffe's own: ``loss_gradient(x, labels)`` runs the
scores through a ``SoftmaxWithLoss`` layer (ignore_label 255, summed) in a
second, two-input Caffe net and backpropagates its bottom diff, which is the
diff the paper's attack definitions (the loss layer on top of the deploy)
hand to the score layer: the input gradient is bit-identical to theirs
(tests/test_authors_oracle.py).  ``ranking_values`` gives the blob the
authors read labels and targets from: the logits, or that layer's Softmax
output (``target_blob``).
"""
import logging
import os
import tempfile

import numpy as np

from caffe_attacks.environment import import_caffe, import_caffe_pb2

# CaffeUnavailable (one line: how to build it) when pycaffe is missing; first,
# because protobuf is pycaffe's dependency, not the toolkit's.
caffe = import_caffe()
caffe_pb2 = import_caffe_pb2()
from google.protobuf import text_format  # noqa: E402

from caffe_attacks import definition_check  # noqa: E402
from caffe_attacks.caffe_geometry import read_prototxt  # noqa: E402
from caffe_attacks.class_rank import TARGET_BLOBS  # noqa: E402
from caffe_attacks.finite import require_finite  # noqa: E402

log = logging.getLogger(__name__)

def load_net_parameter(prototxt):
    """Parse a prototxt file (or text) into a caffe_pb2.NetParameter."""
    text = read_prototxt(prototxt)
    param = caffe_pb2.NetParameter()
    try:
        text_format.Merge(text, param)
    except text_format.ParseError as e:
        raise ValueError("cannot parse net definition %s: %s" % (prototxt, e)) from None
    return param


def softmax_loss_definition(layer_type, ignore_label=255):
    """A one-layer net on an input "scores": "SoftmaxWithLoss" (with a "label" input) or "Softmax".

    normalization NONE sums the loss over every pixel and batch item; for one
    image it equals the authors' ``normalize: false`` (BATCH_SIZE, divide by 1).
    """
    param = caffe_pb2.NetParameter()
    param.name = layer_type.lower()
    param.force_backward = True
    inputs = [("scores", (1, 2, 1, 1))]
    if layer_type == "SoftmaxWithLoss":
        inputs.append(("label", (1, 1, 1, 1)))
    for name, dims in inputs:
        param.input.append(name)
        param.input_shape.add().dim.extend(dims)
    layer = param.layer.add()
    layer.name, layer.type = layer_type.lower(), layer_type
    layer.bottom.extend(name for name, _ in inputs)
    if layer_type == "SoftmaxWithLoss":
        layer.top.append("loss")
        layer.loss_param.ignore_label = ignore_label
        layer.loss_param.normalization = caffe_pb2.LossParameter.NONE
    else:
        layer.top.append("prob")
    return param


def _caffe_net(param):
    with tempfile.NamedTemporaryFile("w", suffix=".prototxt", delete=False) as f:
        f.write(text_format.MessageToString(param))
        path = f.name
    try:
        return caffe.Net(path, caffe.TEST)
    finally:
        os.unlink(path)


def _feed(net, scores, labels=None):
    """Write scores (N, C, h, w) and, when the net has them, labels (N, h, w)."""
    scores = np.asarray(scores, dtype=np.float32)
    n, _, h, w = scores.shape
    blobs = net.blobs
    if blobs["scores"].data.shape != scores.shape:
        blobs["scores"].reshape(*scores.shape)
        if "label" in blobs:
            blobs["label"].reshape(n, 1, h, w)
        net.reshape()
    blobs["scores"].data[...] = scores
    if "label" in blobs:
        blobs["label"].data[...] = np.asarray(labels).reshape(n, 1, h, w)


class CaffeSoftmaxLoss:
    """Caffe's own Softmax and SoftmaxWithLoss layers applied to given scores."""

    def __init__(self, ignore_label=255):
        self.ignore_label = ignore_label
        self._nets = {}

    def _net(self, layer_type):
        if layer_type not in self._nets:
            self._nets[layer_type] = _caffe_net(
                softmax_loss_definition(layer_type, self.ignore_label))
        return self._nets[layer_type]

    def probabilities(self, scores):
        """Caffe's float32 softmax over axis 1 of scores (N, C, h, w)."""
        net = self._net("Softmax")
        _feed(net, scores)
        net.forward()
        return net.blobs["prob"].data.copy()

    def gradient(self, scores, labels):
        """dL/dscores (N, C, h, w) float32 of the summed loss against labels (N, h, w)."""
        net = self._net("SoftmaxWithLoss")
        _feed(net, scores, labels)
        net.forward()
        net.backward()
        return net.blobs["scores"].diff.copy()


def prepare_for_attack(param):
    """Return a copy of `param` that backpropagates to its input.

    force_backward makes Caffe compute bottom diffs down to the input blob even
    though a deploy net has no loss.  (It also forces weight gradients on,
    whatever lr_mult says: Net::Init sets param_propagate_down for every layer
    under force_backward, so they cannot be skipped from a definition.)
    """
    param = caffe_pb2.NetParameter.FromString(param.SerializeToString())
    param.force_backward = True
    return param


class CaffeNet:
    """A Caffe deploy net seen as a differentiable function of its input.

    Parameters
    ----------
    prototxt : path (or prototxt text) of the deploy definition
    weights : optional path of a .caffemodel, loaded by layer name
    gpu : None for CPU, or a device id for a CUDA build of Caffe
    input_blob : name of the input blob (default: the net's first input)
    score_blob : name of the logits blob (default: the net's first output)
    target_blob : "logits" or "probabilities": the blob labels and least-likely
                  targets are read from (the protocol's "target_blob")
    weights_loader : "tolerant" (the project's reader: tolerates forks' fields)
                     or "caffe" (Net.copy_from)
    filler_seed : seed of Caffe's random fillers (None: Caffe's own, unseeded)

    The definition is checked before Caffe sees it (definition_check: a bad
    one would abort the process), ``gpu`` against the build, and a tolerant
    load that leaves parameter layers unfilled raises UnfilledParamsError.
    Without ``weights`` the layers keep their fillers' values.
    """

    def __init__(self, prototxt, weights=None, *, gpu=None, input_blob=None,
                 score_blob=None, target_blob="logits", weights_loader="tolerant",
                 filler_seed=None):
        if target_blob not in TARGET_BLOBS:
            raise ValueError("target_blob must be one of %s, got %r" % (TARGET_BLOBS, target_blob))
        self.target_blob = target_blob
        param = prepare_for_attack(load_net_parameter(prototxt))
        self.where = definition_check.describe(prototxt)
        self.definition = definition_check.parse(text_format.MessageToString(param), self.where)
        definition_check.check_definition(self.definition, caffe.layer_type_list(), self.where,
                                          "this Caffe build")
        if gpu is None:
            caffe.set_mode_cpu()
        else:
            from caffe_attacks.caffe_build import require_gpu
            require_gpu(gpu)
            caffe.set_device(int(gpu))
            caffe.set_mode_gpu()
        if filler_seed is not None:
            caffe.set_random_seed(int(filler_seed))
        self.net = _caffe_net(param)
        self._softmax_loss = None
        self.param = param
        self.load_report = None
        if weights is not None:
            self.load_weights(weights, weights_loader)

        self.input_blob = input_blob or self.net.inputs[0]
        self.score_blob = score_blob or self.net.outputs[0]
        for blob in (self.input_blob, self.score_blob):
            if blob not in self.net.blobs:
                raise ValueError("blob %r is not in the net %s" % (blob, prototxt))
        self._score_layer = self._producer(self.score_blob)
        self._last_x = None

    def load_weights(self, path, loader="tolerant"):
        if not os.path.exists(path):
            raise FileNotFoundError("weights file not found: %s" % path)
        from caffe_attacks.caffemodel_reader import (batchnorm_shares, load_caffemodel_into,
                                                     restore_batchnorm_sharing)
        if loader == "caffe":
            self.net.copy_from(str(path))
        elif loader == "tolerant":
            self.load_report = load_caffemodel_into(self.net, path)
        else:
            raise ValueError("unknown weights loader %r" % loader)
        # Caffe dropped the declared sharing of BatchNorm statistics on load.
        shares = batchnorm_shares((l.name, l.type, [p.name for p in l.param])
                                  for l in self.param.layer)
        restore_batchnorm_sharing(self.net.params, shares, self.load_report)
        if self.load_report is not None:
            definition_check.require_filled(
                self.definition, {name: len(blobs) for name, blobs in self.net.params.items()},
                self.load_report.loaded, path, self.where)

    def _producer(self, blob):
        """Name of the last layer whose top is `blob` (in-place layers included)."""
        names = list(self.net._layer_names)
        producer = None
        for i, name in enumerate(names):
            if blob in self.net.top_names[name]:
                producer = name
        if producer is None:
            raise ValueError("no layer produces blob %r" % blob)
        return producer

    @property
    def num_classes(self):
        return self.net.blobs[self.score_blob].channels

    @property
    def input_shape(self):
        return tuple(self.net.blobs[self.input_blob].data.shape)

    def _set_input(self, x):
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 4 or x.shape[1] != self.net.blobs[self.input_blob].channels:
            raise ValueError("input must be (N, %d, H, W); got %s"
                             % (self.net.blobs[self.input_blob].channels, x.shape))
        require_finite(x, "the net's input")
        blob = self.net.blobs[self.input_blob]
        if blob.data.shape != x.shape:
            blob.reshape(*x.shape)
            self.net.reshape()
        blob.data[...] = x

    def forward(self, x):
        """Scores (N, C, h, w) float32 for input x (N, 3, H, W) float32."""
        self._set_input(x)
        self.net.forward(end=self._score_layer)
        # copy: Caffe reuses blob memory on the next pass.
        scores = self.net.blobs[self.score_blob].data.copy()
        require_finite(scores, "the net's scores")   # before any backward can see them
        self._last_x = np.array(x, dtype=np.float32, copy=True)
        return scores

    def input_gradient(self, x, dscores):
        """dL/dx (N, 3, H, W) float32 given dL/dscores (N, C, h, w).

        Runs a forward pass first unless x equals the last forward's input.
        """
        if self._last_x is None or self._last_x.shape != np.shape(x) \
                or not np.array_equal(self._last_x, x):
            self.forward(x)
        score = self.net.blobs[self.score_blob]
        if score.diff.shape != np.shape(dscores):
            raise ValueError("dscores shape %s does not match scores %s"
                             % (np.shape(dscores), score.diff.shape))
        score.diff[...] = dscores
        self.net.backward(start=self._score_layer)
        return self.net.blobs[self.input_blob].diff.copy()

    @property
    def softmax_loss(self):
        if self._softmax_loss is None:
            self._softmax_loss = CaffeSoftmaxLoss()
        return self._softmax_loss

    def ranking_values(self, scores):
        """The blob labels and targets are read from: scores, or Caffe's softmax of them."""
        if self.target_blob == "logits":
            return scores
        return self.softmax_loss.probabilities(scores)

    def loss_gradient(self, x, labels):
        """dL/dx (N, 3, H, W) float32 of Caffe's summed SoftmaxWithLoss against labels (N, h, w).

        Runs a forward pass first unless x equals the last forward's input.
        """
        if self._last_x is None or self._last_x.shape != np.shape(x) \
                or not np.array_equal(self._last_x, x):
            self.forward(x)
        dscores = self.softmax_loss.gradient(self.net.blobs[self.score_blob].data, labels)
        return self.input_gradient(x, dscores)
