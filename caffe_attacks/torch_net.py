"""The second engine: a Caffe deploy prototxt and caffemodel run by PyTorch.

``TorchNet`` implements the model protocol of docs/DESIGN.md exactly as
``caffe_net.CaffeNet`` does (``forward(x) -> scores``, ``input_gradient(x,
dscores) -> dx``, ``num_classes``, ``input_blob``, ``score_blob``), so the
attacks run unchanged on either engine (``--engine torch --device cuda``).
Nothing here imports caffe: the definition is read by the project's own
text-format parser (``caffe_geometry``), the weights by its own protobuf reader
(``caffemodel_reader``), and every layer type of the zoo is written in
PyTorch in ``torch_layers``.  docs/FIDELITY.md ("Torch engine") lists the
measured agreement with pycaffe per zoo model.

``CaffeGraph`` is the ``torch.nn.Module``: blobs named as in the prototxt,
in-place layers rebinding their blob name, parameter blobs shared by
``param { name: ... }`` as Caffe shares them (not for a BatchNorm with three
param specs, which Caffe's upgrade step strips), and only the layers that the
requested outputs depend on are run (Caffe's ``forward(end=...)`` runs the
rest too; it changes nothing upstream of the score).

Numerics are explicit options, all off by default: ``tf32`` (TensorFloat-32
convolutions and matmuls on CUDA; PyTorch enables TF32 convolutions by
default, so this engine switches it *off* unless asked), ``channels_last``
and ``precision="bfloat16"`` (autocast).  ``precision="float64"`` exists for
gradient checks.
"""
import contextlib
import logging
import os
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable, List

import numpy as np
import torch

from caffe_attacks.caffemodel_reader import (WeightShapeError, batchnorm_shares,
                                             load_caffemodel_into, restore_batchnorm_sharing,
                                             shapes_compatible)
from caffe_attacks.caffe_geometry import last, net_inputs, read_net_definition
from caffe_attacks.torch_layers import initial_blobs, make_op
from caffe_attacks.zoo import shapes

log = logging.getLogger(__name__)

PRECISIONS = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


@dataclass
class GraphLayer:
    """One layer of a CaffeGraph: its blobs' names and its torch function."""
    name: str
    type: str
    bottoms: List[str]
    tops: List[str]
    op: Callable
    blob_ids: List[int]     # indices into CaffeGraph.blobs (shared ids for shared params)


class CaffeGraph(torch.nn.Module):
    """A deploy net as a ``torch.nn.Module``.

    Parameters
    ----------
    net : dict, from ``caffe_geometry.parse_prototxt``
    seed : int, for the random fillers of blobs no caffemodel fills

    Attributes
    ----------
    blobs : ParameterList of every parameter blob (requires_grad False)
    param_layers : dict layer name -> list of indices into ``blobs``
    input_shapes : dict input blob -> shape in the definition
    shapes : dict blob -> shape at the definition's input size
    outputs : list of blobs no layer consumes, sorted as Caffe's ``net.outputs``
    """

    def __init__(self, net, seed=0):
        super().__init__()
        for layer in net.get("layer", []):
            if layer.get("include") or layer.get("exclude"):
                raise NotImplementedError("layer %r: phase include/exclude rules are not "
                                          "supported in a deploy net" % last(layer, "name"))
        inferred = shapes.infer(net)
        self.input_shapes = dict(net_inputs(net))
        self.blobs = torch.nn.ParameterList()
        self.param_layers = {}
        self.layers = []
        shared = {}
        self.batchnorm_specs = []
        rng = np.random.default_rng(seed)
        for layer, info in zip(net.get("layer", []), inferred):
            if info.type == "Input":
                self.input_shapes.update(zip(info.tops, info.top_shapes))
                continue
            ids = []
            specs = layer.get("param", [])
            if info.type == "BatchNorm" and len(specs) == 3:
                # Caffe's UpgradeNetBatchNorm clears exactly-three param specs
                # on load, so such BatchNorm blobs are never shared by name;
                # load_weights restores the declared sharing as CaffeNet does
                self.batchnorm_specs.append(
                    (info.name, info.type, [last(p, "name") for p in specs]))
                specs = []
            for i, value in enumerate(initial_blobs(layer, info.type, info.param_shapes, rng)):
                key = last(specs[i], "name") if i < len(specs) else None
                if key and key in shared:
                    if tuple(self.blobs[shared[key]].shape) != value.shape:
                        raise ValueError("layer %r shares param %r of another shape"
                                         % (info.name, key))
                    ids.append(shared[key])
                    continue
                self.blobs.append(torch.nn.Parameter(torch.from_numpy(np.array(value)),
                                                     requires_grad=False))
                ids.append(len(self.blobs) - 1)
                if key:
                    shared[key] = ids[-1]
            if ids:
                self.param_layers[info.name] = ids
            self.layers.append(GraphLayer(info.name, info.type, info.bottoms, info.tops,
                                          make_op(layer, info.type), ids))
        self.shapes = dict(self.input_shapes)
        for info in inferred:
            self.shapes.update(zip(info.tops, info.top_shapes))
        available = set(self.input_shapes)
        for layer in self.layers:
            available -= set(layer.bottoms)
            available |= set(layer.tops)
        self.outputs = sorted(available)   # Caffe collects them in a std::set
        self._plans = {}

    def plan(self, outputs):
        """Layers the blobs `outputs` depend on, in order, and when each blob dies.

        Returns
        -------
        layers : list of GraphLayer
        drop : list, per layer, of blob names no later layer in the plan reads
        """
        outputs = tuple(outputs)
        if outputs not in self._plans:
            needed, keep = set(outputs), []
            for layer in reversed(self.layers):
                if needed & set(layer.tops):
                    keep.append(layer)
                    needed = (needed - set(layer.tops)) | set(layer.bottoms)
            keep.reverse()
            missing = needed - set(self.input_shapes)
            if missing:
                raise ValueError("no layer produces blob(s) %s" % ", ".join(sorted(missing)))
            last_use = {}
            for i, layer in enumerate(keep):
                for blob in layer.bottoms:
                    last_use[blob] = i
            drop = [[b for b in dict.fromkeys(layer.bottoms) if last_use[b] == i
                     and b not in outputs and b not in layer.tops] for i, layer in enumerate(keep)]
            self._plans[outputs] = (keep, drop)
        return self._plans[outputs]

    def forward(self, inputs, outputs, replace=None):
        """Run the layers that `outputs` need.

        Parameters
        ----------
        inputs : dict input blob -> (N, C, H, W) tensor
        outputs : sequence of blob names
        replace : optional dict layer name -> op(bottoms, blobs) -> tops, run
            instead of that layer's own op (tests use it to impose pycaffe's
            ReLU masks and so separate kink flips from real differences)

        Returns
        -------
        dict blob name -> tensor, for each name in `outputs`
        """
        layers, drop = self.plan(outputs)
        replace = replace or {}
        blobs = dict(inputs)
        for layer, dead in zip(layers, drop):
            params = [self.blobs[i] for i in layer.blob_ids]
            op = replace.get(layer.name, layer.op)
            blobs.update(zip(layer.tops, op([blobs[b] for b in layer.bottoms], params)))
            for blob in dead:   # free activations early (autograd keeps what it needs)
                del blobs[blob]
        return {name: blobs[name] for name in outputs}


class _HostBlob:
    """A host array with ``.data``, the interface load_caffemodel_into writes to."""

    def __init__(self, array):
        self.data = array


@contextlib.contextmanager
def tf32_mode(enabled):
    """Allow (or forbid) TensorFloat-32 in CUDA convolutions and matmuls, then restore."""
    mode = "tf32" if enabled else "ieee"
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        matmul = torch.backends.cuda.matmul
        saved = conv.fp32_precision, matmul.fp32_precision
        conv.fp32_precision, matmul.fp32_precision = mode, mode
        try:
            yield
        finally:
            conv.fp32_precision, matmul.fp32_precision = saved
    else:   # PyTorch < 2.9
        saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = bool(enabled)
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@dataclass
class _Pass:
    x: np.ndarray            # the input, as given
    x_tensor: torch.Tensor   # the leaf the graph starts at
    scores: torch.Tensor


class TorchNet:
    """A Caffe deploy net run by PyTorch, as a differentiable function of its input.

    Parameters
    ----------
    prototxt : path (or prototxt text) of the deploy definition
    weights : optional path of a .caffemodel, loaded by layer name (fork-tolerant reader)
    device : "cpu", "cuda" or "cuda:N"
    input_blob : name of the input blob (default: the net's first input)
    score_blob : name of the logits blob (default: the net's first output, as Caffe's)
    precision : "float32" (default), "float64" (gradient checks) or "bfloat16" (autocast)
    channels_last : NHWC memory layout for activations and convolution weights
    tf32 : allow TensorFloat-32 on CUDA (default False: full float32)
    seed : seed of the random fillers for blobs no caffemodel fills
    """

    def __init__(self, prototxt, weights=None, *, device="cpu", input_blob=None,
                 score_blob=None, precision="float32", channels_last=False, tf32=False, seed=0):
        if precision not in PRECISIONS:
            raise ValueError("precision must be one of %s, got %r"
                             % (", ".join(PRECISIONS), precision))
        self.device = torch.device(device)
        self.precision = precision
        self.channels_last = bool(channels_last)
        self.tf32 = bool(tf32)
        self.graph = CaffeGraph(read_net_definition(prototxt), seed=seed)
        self.input_blob = input_blob or next(iter(self.graph.input_shapes))
        self.score_blob = score_blob or self.graph.outputs[0]
        for blob in (self.input_blob, self.score_blob):
            if blob not in self.graph.shapes:
                raise ValueError("blob %r is not in the net %.80s" % (blob, prototxt))
        if self.input_blob not in self.graph.input_shapes:
            raise ValueError("blob %r is not an input of the net" % self.input_blob)
        self.graph.plan([self.score_blob])   # fail now on an unreachable score blob
        self.load_report = None
        if weights is not None:
            self.load_weights(weights)
        self._place()
        self._last = None
        # layer name -> replacement op, passed to CaffeGraph.forward (a test hook)
        self.layer_overrides = {}

    # ------------------------------------------------------------ weights

    @property
    def _param_dtype(self):
        return torch.float64 if self.precision == "float64" else torch.float32

    def _place(self):
        self.graph.to(device=self.device, dtype=self._param_dtype)
        if self.channels_last:
            for p in self.graph.blobs:
                if p.dim() == 4:
                    p.data = p.data.contiguous(memory_format=torch.channels_last)

    def _host_params(self):
        arrays = {i: p.detach().cpu().float().numpy().copy()
                  for i, p in enumerate(self.graph.blobs)}
        return arrays, {name: [_HostBlob(arrays[i]) for i in ids]
                        for name, ids in self.graph.param_layers.items()}

    def _write_back(self, arrays):
        with torch.no_grad():
            for i, array in arrays.items():
                p = self.graph.blobs[i]
                p.copy_(torch.from_numpy(array).to(dtype=p.dtype))

    def load_weights(self, path):
        """Fill the parameter blobs from a caffemodel by layer name.

        Returns the caffemodel_reader.LoadReport (also kept as ``load_report``);
        raises WeightShapeError when a matched layer's blobs do not fit.
        """
        if not os.path.exists(path):
            raise FileNotFoundError("weights file not found: %s" % path)
        arrays, params = self._host_params()
        # load_caffemodel_into needs only a ``params`` mapping, as caffe.Net has
        self.load_report = load_caffemodel_into(SimpleNamespace(params=params), path)
        restore_batchnorm_sharing(params, batchnorm_shares(self.graph.batchnorm_specs),
                                  self.load_report)
        self._write_back(arrays)
        log.info(self.load_report.summary())
        return self.load_report

    def set_params(self, params):
        """Assign blobs from a mapping layer name -> list of arrays (e.g. a caffe.Net's).

        Every named layer must exist with the same number of reshape-compatible blobs.
        """
        arrays, host = self._host_params()
        errors = []
        for name, values in params.items():
            if name not in host or len(host[name]) != len(values):
                errors.append("layer %r: %s blobs here, %d given" % (
                    name, len(host[name]) if name in host else "no", len(values)))
                continue
            for i, (target, value) in enumerate(zip(host[name], values)):
                value = np.asarray(value)
                if not shapes_compatible(value.shape, target.data.shape):
                    errors.append("layer %r blob %d: shape %s, ours %s"
                                  % (name, i, value.shape, target.data.shape))
                else:
                    target.data[...] = value.reshape(target.data.shape)
        if errors:
            raise WeightShapeError("cannot set params:\n  " + "\n  ".join(errors))
        self._write_back(arrays)

    @property
    def params(self):
        """Layer name -> list of float32 numpy copies of its blobs."""
        return {name: [self.graph.blobs[i].detach().cpu().float().numpy().copy() for i in ids]
                for name, ids in self.graph.param_layers.items()}

    # ------------------------------------------------------- the protocol

    @property
    def num_classes(self):
        return self.graph.shapes[self.score_blob][1]

    @property
    def input_shape(self):
        return tuple(self.graph.input_shapes[self.input_blob])

    @contextlib.contextmanager
    def _numerics(self):
        with contextlib.ExitStack() as stack:
            if self.device.type == "cuda":
                stack.enter_context(tf32_mode(self.tf32))
            if self.precision == "bfloat16":
                stack.enter_context(torch.autocast(self.device.type, dtype=torch.bfloat16))
            yield

    def _tensor(self, array, what, channels):
        array = np.asarray(array, dtype=np.float32)
        if array.ndim != 4 or (channels is not None and array.shape[1] != channels):
            raise ValueError("%s must be (N, %s, H, W); got %s" % (what, channels, array.shape))
        t = torch.from_numpy(np.ascontiguousarray(array)).to(self.device, self._param_dtype)
        return t.contiguous(memory_format=torch.channels_last) if self.channels_last else t

    def forward(self, x):
        """Scores (N, C, h, w) float32 for input x (N, 3, H, W) float32.

        The autograd graph is kept for the next ``input_gradient`` on the same x.
        """
        self._last = None   # free the previous graph before building another
        xt = self._tensor(x, "input", self.graph.input_shapes[self.input_blob][1])
        xt.requires_grad_(True)
        with self._numerics():
            scores = self.graph({self.input_blob: xt}, [self.score_blob],
                                replace=self.layer_overrides)[self.score_blob]
        self._last = _Pass(np.array(x, dtype=np.float32, copy=True), xt, scores)
        return scores.detach().to(torch.float32).cpu().numpy().copy()

    def input_gradient(self, x, dscores):
        """dL/dx (N, 3, H, W) float32 given dL/dscores (N, C, h, w).

        Runs a forward pass first unless x equals the last forward's input.
        """
        p = self._last
        if p is None or p.x.shape != np.shape(x) or not np.array_equal(p.x, x):
            self.forward(x)
            p = self._last
        if tuple(p.scores.shape) != np.shape(dscores):
            raise ValueError("dscores shape %s does not match scores %s"
                             % (np.shape(dscores), tuple(p.scores.shape)))
        grad = torch.from_numpy(np.ascontiguousarray(dscores, dtype=np.float32))
        grad = grad.to(self.device, p.scores.dtype)
        with self._numerics():
            (dx,) = torch.autograd.grad(p.scores, p.x_tensor, grad)
        self._last = None   # the graph is spent
        return dx.to(torch.float32).cpu().numpy().copy()
