"""Checks of a net definition, and of what fills its parameters, before an engine runs it.

Caffe answers a bad definition with a CHECK failure that aborts the whole
process (exit 134, no Python exception), and a caffemodel that fills only
some layers (a 0-byte file, another net's weights) with a net that runs on
whatever its fillers left there. Both are caught here, as Python exceptions
naming the file and the layers:

- :func:`check_definition` -- the definition is not empty, every layer type
  is in the engine's registry (``caffe.layer_type_list()`` for Caffe), every
  Python layer's class can be imported, every bottom is produced by an
  earlier layer (or is an input), and no top is produced twice except in
  place. Phase rules are honoured as a TEST net sees them.
- :func:`unfilled_layers` -- after a load, the parameter layers that the
  caffemodel did not fill and the definition does not fill either. The
  definition fills a layer's blobs when

  * every blob carries a ``param { name: ... }`` shared with a layer that was
    filled (the scaled copies of a multiscale net; for a BatchNorm with three
    named specs the first layer declaring them must be filled, because the
    engines copy its statistics after loading), or
  * the layer is a ``MultiStageMeanfield`` Python layer, whose blobs its
    ``param_str`` initialises (the ``+crf`` nets' ``crf`` layer).

Works on the nested dicts of ``caffe_geometry.parse_prototxt``; imports no engine.
"""
import difflib
import importlib

from caffe_attacks.caffe_geometry import last, layer_type, net_inputs, parse_prototxt

# Python layers whose parameter blobs their own param_str defines
PARAM_STR_FILLED = ("caffe_attacks.layers.meanfield.MultiStageMeanfield",)

# V1 (``layers { type: CONVOLUTION }``) definitions, which Caffe upgrades on load
V1_TYPES = frozenset((
    "ABSVAL", "ACCURACY", "ARGMAX", "BNLL", "CONCAT", "CONTRASTIVE_LOSS", "CONVOLUTION",
    "DATA", "DECONVOLUTION", "DROPOUT", "DUMMY_DATA", "ELTWISE", "EUCLIDEAN_LOSS", "EXP",
    "FLATTEN", "HDF5_DATA", "HDF5_OUTPUT", "HINGE_LOSS", "IM2COL", "IMAGE_DATA",
    "INFOGAIN_LOSS", "INNER_PRODUCT", "LRN", "MEMORY_DATA", "MULTINOMIAL_LOGISTIC_LOSS",
    "MVN", "POOLING", "POWER", "RELU", "SIGMOID", "SIGMOID_CROSS_ENTROPY_LOSS", "SILENCE",
    "SLICE", "SOFTMAX", "SOFTMAX_LOSS", "SPLIT", "TANH", "THRESHOLD", "WINDOW_DATA"))


class DefinitionError(ValueError):
    """The net definition cannot be run; the message names the file and the layer."""


class UnfilledParamsError(ValueError):
    """Parameter layers that neither the caffemodel nor the definition fills."""

    def __init__(self, message, layers):
        super().__init__(message)
        self.layers = layers


def describe(prototxt):
    """A short name for a prototxt given as a path or as text, for messages."""
    text = str(prototxt)
    if "\n" not in text and "{" not in text:
        return text
    return "<definition text %r...>" % text.strip()[:40]


def layers_of(net):
    """(layer dicts, "V2" or "V1") of a parsed definition; V1 is the legacy ``layers``."""
    if net.get("layer"):
        return net["layer"], "V2"
    return net.get("layers", []), "V1"


def in_test_net(layer):
    """Whether a TEST-phase net has this layer (Caffe's phase rules; stages ignored)."""
    include, exclude = layer.get("include", []), layer.get("exclude", [])
    if include:
        return any(last(rule, "phase", "TEST") == "TEST" for rule in include)
    return not any(last(rule, "phase") == "TEST" for rule in exclude)


def _python_class_problem(layer):
    param = last(layer, "python_param", {})
    module, cls = last(param, "module"), last(param, "layer")
    if not module or not cls:
        return "a Python layer needs python_param { module: ... layer: ... }"
    try:
        found = getattr(importlib.import_module(module), cls, None)
    except ImportError as e:
        return "cannot import its module %r (%s)" % (module, e)
    if found is None:
        return "module %r has no class %r" % (module, cls)
    return None


def check_definition(net, known_types, where="the definition", engine="this engine"):
    """Raise DefinitionError unless an engine can build `net` (see the module docstring).

    Parameters
    ----------
    net : dict from ``caffe_geometry.parse_prototxt``
    known_types : the engine's layer types; a Python layer's class is checked
        too when "Python" is among them (Caffe), and matched as
        "Python:<module>.<class>" otherwise (the torch engine)
    where : the file, for messages
    engine : what knows `known_types`, for messages ("this Caffe build")
    """
    layers, version = layers_of(net)
    if not layers:
        raise DefinitionError("%s defines no layers (an empty or truncated prototxt?)" % where)
    known = frozenset(known_types) if version == "V2" else V1_TYPES
    available = set(net_inputs(net))
    for index, layer in enumerate(layers):
        if not in_test_net(layer):
            continue
        name = last(layer, "name", "#%d" % (index + 1))
        ltype = last(layer, "type")
        if ltype is None:
            raise DefinitionError("%s: layer %r has no type" % (where, name))
        full_type = layer_type(layer) if version == "V2" else ltype
        if ltype not in known and full_type not in known:
            close = difflib.get_close_matches(str(ltype), sorted(known), n=3)
            raise DefinitionError("%s: layer %r has type %r, which %s does not know%s"
                                  % (where, name, ltype, engine, " (did you mean %s?)"
                                     % ", ".join(close) if close else ""))
        if version == "V2" and ltype == "Python" and "Python" in known:
            problem = _python_class_problem(layer)
            if problem:
                raise DefinitionError("%s: Python layer %r: %s" % (where, name, problem))
        bottoms, tops = layer.get("bottom", []), layer.get("top", [])
        for bottom in bottoms:
            if bottom not in available:
                raise DefinitionError("%s: layer %r reads blob %r, which no earlier layer "
                                      "produces" % (where, name, bottom))
        for i, top in enumerate(tops):
            in_place = i < len(bottoms) and bottoms[i] == top
            if top in available and not in_place:
                raise DefinitionError("%s: layer %r writes blob %r, which an earlier layer "
                                      "already produces (only in-place layers may)"
                                      % (where, name, top))
            available.add(top)


def filled_by_definition(net, loaded, param_blobs=None):
    """Names of layers whose parameter blobs the definition fills, given the filled `loaded`.

    loaded: names of the layers the caffemodel filled; param_blobs: {layer:
    number of parameter blobs} where known (sharing fills only blobs that
    carry a named ``param`` spec).
    """
    param_blobs = param_blobs or {}
    layers = [layer for layer in layers_of(net)[0] if in_test_net(layer)]
    loaded = set(loaded)
    first_holder, holders = {}, {}
    for layer in layers:
        for spec in layer.get("param", []):
            key = last(spec, "name")
            if key:
                first_holder.setdefault(key, last(layer, "name"))
                holders.setdefault(key, set()).add(last(layer, "name"))
    filled = set()
    for layer in layers:
        name, ltype = last(layer, "name"), layer_type(layer)
        if ltype in ("Python:" + c for c in PARAM_STR_FILLED):
            filled.add(name)
            continue
        keys = [last(spec, "name") for spec in layer.get("param", [])]
        if not keys or not all(keys) or len(keys) < param_blobs.get(name, 0):
            continue
        if ltype == "BatchNorm" and len(keys) == 3:
            # Caffe drops this sharing on load; the engines copy the first holder's blobs
            if all(first_holder[k] in loaded for k in keys):
                filled.add(name)
        elif all(holders[k] & loaded for k in keys):
            filled.add(name)
    return filled


def unfilled_layers(net, param_blobs, loaded):
    """Parameter layers neither the caffemodel nor the definition fills, in net order.

    Parameters
    ----------
    net : dict from ``caffe_geometry.parse_prototxt``
    param_blobs : {layer name: number of parameter blobs} as the engine built them
    loaded : names of the layers the caffemodel filled
    """
    by_definition = filled_by_definition(net, loaded, param_blobs)
    return [name for name, count in param_blobs.items()
            if count and name not in loaded and name not in by_definition]


def require_filled(net, param_blobs, loaded, weights, where):
    """Raise UnfilledParamsError naming the layers `weights` leaves unfilled."""
    missing = unfilled_layers(net, param_blobs, loaded)
    if not missing:
        return
    shown = ", ".join(missing[:8]) + (" and %d more" % (len(missing) - 8)
                                       if len(missing) > 8 else "")
    if not loaded:
        reason = "fills none of its %d parameter layers (an empty file, or another net's " \
                 "weights?)" % len(missing)
    else:
        reason = "leaves %d of its parameter layers unfilled: %s (another net's weights?)" \
                 % (len(missing), shown)
    raise UnfilledParamsError("%s %s for %s; a net cannot run on unset parameters"
                              % (weights, reason, where), missing)


def parse(text, where="the definition"):
    """Parse prototxt text into nested dicts (DefinitionError naming `where` if it cannot)."""
    try:
        return parse_prototxt(text)
    except (ValueError, IndexError) as e:
        raise DefinitionError("cannot parse net definition %s: %s" % (where, e)) from None


def check_caffemodel_fills(net, model, weights, where):
    """Raise unless the decoded caffemodel `model` fills the definition `net`.

    Without an engine: the parameter shapes come from ``zoo.shapes.infer``, and
    a layer counts as filled when the file has a layer of its name with as many
    blobs, each reshape-compatible (``caffemodel_reader.shapes_compatible``).
    Raises WeightShapeError for a layer that is there but does not fit and
    UnfilledParamsError for layers left unfilled (as :func:`require_filled`).
    """
    from caffe_attacks.caffemodel_reader import WeightShapeError, shapes_compatible
    from caffe_attacks.zoo.shapes import infer
    try:
        inferred = infer(net)
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise DefinitionError("cannot work out the parameter shapes of %s: %s" % (where, e)) \
            from None
    stored = model.params()
    param_blobs, loaded, errors = {}, [], []
    for layer in inferred:
        if not layer.param_shapes:
            continue
        param_blobs[layer.name] = len(layer.param_shapes)
        blobs = stored.get(layer.name)
        if blobs is None:
            continue
        if len(blobs) != len(layer.param_shapes):
            errors.append("layer %r: the file has %d blobs, the definition %d"
                          % (layer.name, len(blobs), len(layer.param_shapes)))
            continue
        bad = [i for i, (blob, shape) in enumerate(zip(blobs, layer.param_shapes))
               if not shapes_compatible(blob.shape, shape)]
        if bad:
            errors.append("layer %r blob %d: file shape %s, definition %s"
                          % (layer.name, bad[0], tuple(blobs[bad[0]].shape),
                             layer.param_shapes[bad[0]]))
            continue
        loaded.append(layer.name)
    if errors:
        raise WeightShapeError("%s does not fit %s:\n  %s" % (weights, where, "\n  ".join(errors)))
    require_filled(net, param_blobs, loaded, weights, where)
