"""From RunOptions to a loaded model and an opened dataset: the one resolver.

Every model name form goes through :func:`resolve_model`: a zoo name
(``fcn8s_vgg_voc``), a derived one (``NAME+crf``), a member of the
multiscale study (``NAME@0.5``, ``NAME@max``; see
:func:`caffe_attacks.zoo.multiscale.parse_member`) and ``--prototxt``
[+ ``--weights``]. Weights come from the manifest (md5-checked) unless given.
"""
import json
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from caffe_attacks import weights as W
from caffe_attacks import zoo
from caffe_attacks.datasets import DatasetError, open_dataset
from caffe_attacks.errors import UsageError
from caffe_attacks.preprocess import Protocol
from caffe_attacks.zoo.multiscale import Member, member_net, parse_member

log = logging.getLogger(__name__)

# The protocol of a bare --prototxt without --protocol: no mean, no resizing.
BARE_PROTOCOL = {"mean_bgr": None, "resize": None, "pad": None, "scores_to_labels": "crop"}


@dataclass
class ResolvedModel:
    """A model ready to attack, with what the records must say about it.

    model: implements the model protocol of docs/DESIGN.md
    crf: the record's "crf" field (None: the CRF as defined)
    member: the multiscale-study variant for a generated ``NAME@VARIANT``, else None
    """
    model: Any
    protocol: Protocol
    name: str
    weights_path: Optional[str]
    weights_md5: Optional[str]
    verified: bool
    num_classes: int
    crf: Optional[dict] = None
    member: Optional[Member] = None


def load_engine(engine, prototxt, weights, gpu=None, input_blob=None, score_blob=None,
                device=None):
    """A net of the chosen engine (prototxt: path or text)."""
    if engine == "caffe":
        from caffe_attacks.caffe_net import CaffeNet
        return CaffeNet(prototxt, weights, gpu=gpu, input_blob=input_blob, score_blob=score_blob)
    if engine == "torch":
        try:
            from caffe_attacks.torch_net import TorchNet
        except ImportError as e:
            raise UsageError("the torch engine needs PyTorch (pip install .[torch]): %s" % e)
        return TorchNet(prototxt, weights, device=device or "cpu",
                        input_blob=input_blob, score_blob=score_blob)
    raise UsageError("unknown engine %r (caffe or torch)" % engine)


def parse_protocol(text):
    """An input protocol from JSON text or a JSON file (None: :data:`BARE_PROTOCOL`)."""
    if text is None:
        return Protocol.from_dict(BARE_PROTOCOL)
    try:
        if os.path.exists(text):
            with open(text) as f:
                d = json.load(f)
        else:
            d = json.loads(text)
    except (OSError, ValueError) as e:
        raise UsageError("--protocol must be JSON or a JSON file: %s" % e)
    return Protocol.from_dict(d)


def set_blas_threads(n):
    """Fix OpenBLAS's thread count; must run before Caffe (and its BLAS) is loaded."""
    if n is None:
        return
    if n < 1:
        raise UsageError("--blas-threads must be at least 1")
    if "caffe" in sys.modules:
        log.warning("Caffe is already loaded; --blas-threads has no effect")
    os.environ["OPENBLAS_NUM_THREADS"] = str(n)


class MemberModel:
    """A generated net (``NAME@VARIANT``) as a model, built per input canvas size.

    Its score-resizing Interp layers have sizes fixed at generation, so an
    input of another size gets its own net (built once, cached). Implements
    the model protocol of docs/DESIGN.md.

    Parameters
    ----------
    member : caffe_attacks.zoo.multiscale.Member
    load : callable (prototxt text, score blob) -> model (e.g. a CaffeNet with weights)
    """

    def __init__(self, member, load):
        self.member = member
        self.load = load
        self.nets = {}
        self.score_blob = None

    def build(self, hw):
        """The net for canvas (H, W), built on first use; sets ``score_blob``."""
        hw = tuple(int(v) for v in hw)
        if hw not in self.nets:
            text, ms = member_net(self.member, input_hw=hw)
            self.nets[hw] = self.load(text, ms.score_blob)
            self.score_blob = ms.score_blob
        return self.nets[hw]

    @property
    def num_classes(self):
        return next(iter(self.nets.values())).num_classes

    def forward(self, x):
        return self.build(np.shape(x)[2:]).forward(x)

    def input_gradient(self, x, dscores):
        return self.build(np.shape(x)[2:]).input_gradient(x, dscores)


def _load_net(options, prototxt, weights, input_blob, score_blob):
    """The engine's net; with CRF overrides, its MultiStageMeanfield layers overridden."""
    def load(definition):
        return load_engine(options.engine, definition, weights, options.gpu, input_blob,
                           score_blob, options.device)
    if not options.crf:
        return load(prototxt)
    from caffe_attacks import crf as crf_variants     # pycaffe: only for a CRF variant
    try:
        return crf_variants.load_with_overrides(load, prototxt, options.crf,
                                                options.crf_w2_mode)
    except crf_variants.CrfError as e:
        raise UsageError("--crf: %s: %s" % (prototxt, e)) from None


def _manifest_weights(name, entry, options):
    """(path, md5, verified) of the weights of zoo model ``name`` (entry may be None)."""
    if options.weights:
        path = options.weights
        if not os.path.exists(path):
            raise UsageError("weights not found: %s" % path)
    elif entry is None:
        raise UsageError("%s has no weights manifest entry; give its caffemodel" % name)
    else:
        path = str(W.weights_file(entry, options.weights_dir))
        if not os.path.exists(path):
            raise UsageError("weights not found: %s; get them with `make fetch-weights NAMES=%s` "
                             "(or point --weights-dir at them)" % (path, name))
    if entry is None:
        return path, W.md5_file(path), False
    check = W.verify_file(name, path, progress=not options.quiet)
    if check.mismatch and not options.allow_unverified:
        raise UsageError("md5 of %s is %s, not the manifest's %s for %s; refusing "
                         "(--allow-unverified to run anyway)"
                         % (path, check.md5, entry.get("md5"), name))
    return path, check.md5, check.verified


def _canvas_hw(protocol, spec):
    return tuple(protocol.canvas) if protocol.canvas else tuple(spec.reference_input)


def resolve_model(options):
    """Load the model ``options`` name (any name form, or --prototxt/--weights).

    Returns a :class:`ResolvedModel`; raises UsageError naming what is wrong.
    """
    if not options.model:
        return _resolve_prototxt(options)
    try:
        member = parse_member(options.model)
    except ValueError as e:
        raise UsageError("unknown model: %s" % e) from None
    spec = zoo.get(member.zoo_name)
    try:
        entry = W.model_entry(member.zoo_name)
    except KeyError:
        entry = None
    if entry is None and not (options.weights and options.protocol):
        raise UsageError("%s has no weights manifest entry; give its caffemodel (weights) and "
                         "--protocol" % member.zoo_name)
    prototxt = None
    if not member.generated:
        prototxt = options.prototxt or str(zoo.prototxt_path(member.zoo_name))
        if not os.path.exists(prototxt):
            raise UsageError("prototxt not found: %s (run `make prototxt`)" % prototxt)
    path, md5, verified = _manifest_weights(member.zoo_name, entry, options)
    protocol = parse_protocol(options.protocol) if options.protocol else \
        Protocol.from_dict(entry["input"])
    if member.generated:
        if options.crf:
            raise UsageError("--crf cannot apply to %s (a generated multiscale net)"
                             % member.label)

        def load(text, score_blob):
            return load_engine(options.engine, text, path, options.gpu, spec.input_blob,
                               score_blob, options.device)
        model = MemberModel(member, load)
        model.build(_canvas_hw(protocol, spec))   # build (and fail) now, not mid-run
    else:
        model = _load_net(options, prototxt, path, options.input_blob or spec.input_blob,
                          options.score_blob or spec.score_blob)
    return ResolvedModel(model, protocol, member.label, path, md5, verified, spec.num_classes,
                         crf=options.crf_record(), member=member if member.generated else None)


def _resolve_prototxt(options):
    if not options.prototxt:
        raise UsageError("give --model NAME or --prototxt P [--weights W]")
    if not os.path.exists(options.prototxt):
        raise UsageError("prototxt not found: %s" % options.prototxt)
    md5 = None
    if options.weights:
        if not os.path.exists(options.weights):
            raise UsageError("weights not found: %s" % options.weights)
        md5 = W.md5_file(options.weights)
    model = _load_net(options, options.prototxt, options.weights, options.input_blob,
                      options.score_blob)
    return ResolvedModel(model, parse_protocol(options.protocol), options.prototxt,
                         options.weights, md5, False, model.num_classes,
                         crf=options.crf_record())


def open_data(options):
    """The dataset ``options`` names (UsageError for a missing directory or bad data)."""
    if not options.data_dir:
        raise UsageError("--data-dir is required (a VOCdevkit, Cityscapes or synthetic directory)")
    if not os.path.isdir(options.data_dir):
        raise UsageError("data directory not found: %s" % options.data_dir)
    try:
        return open_dataset(options.dataset, options.data_dir, split=options.split,
                            skip_bad=options.skip_bad)
    except DatasetError as e:
        raise UsageError(str(e)) from None


def check_classes(rm, dataset, dataset_kind):
    """UsageError unless the model predicts the dataset's classes."""
    if dataset.num_classes != rm.num_classes:
        raise UsageError("%s predicts %d classes but the %s dataset has %d"
                         % (rm.name, rm.num_classes, dataset_kind, dataset.num_classes))


def image_ids(dataset, limit=None):
    """The dataset's ids, the first ``limit`` only when given."""
    return list(dataset.ids[:limit] if limit else dataset.ids)
