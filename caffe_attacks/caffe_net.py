"""The pycaffe engine: a deploy net as a differentiable model.

``CaffeNet`` implements the model protocol of docs/DESIGN.md:
``forward(x) -> scores`` and ``input_gradient(x, dscores) -> dx``.  The
gradient of any loss is obtained by writing dL/dscores into the score blob's
diff and running ``net.backward`` from the layer that produced that blob, as
the paper's code did with a SoftmaxWithLoss layer on top.
"""
import logging
import os
import tempfile

import numpy as np

# Caffe logs every layer at INFO through glog; keep the user's terminal quiet
# unless they asked otherwise.
os.environ.setdefault("GLOG_minloglevel", "2")

import caffe  # noqa: E402
from caffe.proto import caffe_pb2  # noqa: E402
from google.protobuf import text_format  # noqa: E402

from caffe_attacks.caffe_geometry import read_prototxt  # noqa: E402

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
    weights_loader : "tolerant" (the project's reader: tolerates forks' fields)
                     or "caffe" (Net.copy_from)
    """

    def __init__(self, prototxt, weights=None, *, gpu=None, input_blob=None,
                 score_blob=None, weights_loader="tolerant"):
        if gpu is None:
            caffe.set_mode_cpu()
        else:
            caffe.set_device(int(gpu))
            caffe.set_mode_gpu()
        param = prepare_for_attack(load_net_parameter(prototxt))
        with tempfile.NamedTemporaryFile("w", suffix=".prototxt", delete=False) as f:
            f.write(text_format.MessageToString(param))
            path = f.name
        try:
            self.net = caffe.Net(path, caffe.TEST)
        finally:
            os.unlink(path)
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
        blob = self.net.blobs[self.input_blob]
        if blob.data.shape != x.shape:
            blob.reshape(*x.shape)
            self.net.reshape()
        blob.data[...] = x

    def forward(self, x):
        """Scores (N, C, h, w) float32 for input x (N, 3, H, W) float32."""
        self._set_input(x)
        self.net.forward(end=self._score_layer)
        self._last_x = np.array(x, dtype=np.float32, copy=True)
        # copy: Caffe reuses blob memory on the next pass.
        return self.net.blobs[self.score_blob].data.copy()

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
