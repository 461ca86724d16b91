"""CRF variants: a net's CRF layer with other settings (supplementary A5, Figures A9-A14).

- **Overrides** (``python -m caffe_attacks.run --crf KEY=VALUE``): a net's
  ``MultiStageMeanfield`` layer with other settings than its definition's.
  Keys are the layer's JSON keys (num_iterations, theta_alpha, theta_beta,
  theta_gamma, spatial_filter_weight, bilateral_filter_weight) and ``w2``,
  the spatial-kernel weight of Figure A11. The definition's ``param_str`` is
  rewritten before the net is loaded; kernel weights are blobs, which a
  caffemodel fills, so weight keys are applied to the blobs after loading:

  - ``w2``: ``"scale_learned"`` (default) multiplies the loaded W_s by
    w2 / (the definition's spatial_filter_weight), so w2 = 3 is the public
    model; ``"replace_diagonal"`` sets W_s = w2 I (as
    :func:`caffe_attacks.layers.meanfield.crf_variant`);
  - ``spatial_filter_weight`` / ``bilateral_filter_weight``: W_s / W_b = value I
    (the layer's own initialisation, applied after the caffemodel).

  A record made with overrides carries ``"crf": {overrides}`` in its
  configuration (plus ``"w2_mode"`` when ``w2`` is given), which is what
  :func:`caffe_attacks.experiments.definitions.crf_variant_query` asks for.

The CRF experiments themselves live in :mod:`caffe_attacks.experiments.crf`.
"""
import json
import re

import numpy as np

from caffe_attacks.layers.meanfield import PARAM_KEYS, W2_MODES, parse_meanfield_params
from caffe_attacks.zoo import shapes

MEANFIELD_CLASS = "MultiStageMeanfield"
KEYS = tuple(PARAM_KEYS) + ("w2",)
WEIGHT_KEYS = ("w2", "spatial_filter_weight", "bilateral_filter_weight")


class CrfError(ValueError):
    """Overrides that cannot apply (bad key or value, or a net without a CRF)."""


# --------------------------------------------------------------------------
# Overrides
# --------------------------------------------------------------------------
def normalize_overrides(overrides):
    """Overrides with checked keys and canonical types (int iterations, float others).

    The types matter: the record's configuration is hashed, so 1 and 1.0 must
    not make two configurations.

    Raises
    ------
    CrfError on an unknown key, a non-number, or a value the layer rejects
    """
    out = {}
    for key, value in dict(overrides).items():
        if key not in KEYS:
            raise CrfError("unknown CRF key %r (one of %s)" % (key, ", ".join(KEYS)))
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise CrfError("CRF %s must be a number, got %r" % (key, value)) from None
        if key == "num_iterations":
            if number != int(number) or number < 1:
                raise CrfError("CRF num_iterations must be a positive integer, got %r" % value)
            out[key] = int(number)
        else:
            if not np.isfinite(number) or (key.startswith("theta") and number <= 0):
                raise CrfError("CRF %s must be %s, got %r" % (
                    key, "positive" if key.startswith("theta") else "finite", value))
            out[key] = number
    if "w2" in out and "spatial_filter_weight" in out:
        raise CrfError("give w2 or spatial_filter_weight, not both (both set W_s)")
    return out


def parse_overrides(items):
    """``["theta_alpha=1", "w2=5"]`` -> normalised dict (a repeated key: the last wins)."""
    pairs = {}
    for item in items or ():
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise CrfError("--crf takes KEY=VALUE, got %r" % item)
        pairs[key.strip()] = value.strip()
    return normalize_overrides(pairs)


def record_field(overrides, w2_mode="scale_learned"):
    """The ``"crf"`` value a record's configuration carries (None: no overrides)."""
    if not overrides:
        return None
    out = dict(overrides)
    if "w2" in out:
        out["w2_mode"] = w2_mode
    return out


_STRING = r'"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\''
_PYTHON_PARAM = re.compile(r"python_param\s*:?\s*\{((?:[^{}\"']|%s)*)\}" % _STRING)
_PARAM_STR = re.compile(r"param_str\s*:\s*(?:%s)" % _STRING)


def _quote(text):
    return '"%s"' % text.replace("\\", "\\\\").replace('"', '\\"')


def meanfield_layers(text):
    """[(layer name, parsed params)] of the MultiStageMeanfield layers of a definition."""
    out = []
    for layer in shapes.parse_prototxt(text).get("layer", []):
        if shapes.layer_type(layer).endswith("." + MEANFIELD_CLASS):
            pp = layer["python_param"][-1]
            out.append((layer["name"][-1], parse_meanfield_params(pp.get("param_str", [""])[-1])))
    return out


def override_definition(text, overrides):
    """A definition whose MultiStageMeanfield layers take the overrides.

    Parameters
    ----------
    text : prototxt text
    overrides : normalised overrides (:func:`normalize_overrides`)

    Returns
    -------
    (new text, [(layer name, the layer's params *before* the overrides)])

    Raises
    ------
    CrfError when the definition has no MultiStageMeanfield layer
    """
    layers = meanfield_layers(text)
    if not layers:
        raise CrfError("the net has no MultiStageMeanfield layer, so --crf cannot apply "
                       "(CRF nets: crfrnn_voc, the NAME+crf models)")
    # w2 acts on the loaded blob only (adjust_blobs): the definition keeps its
    # spatial_filter_weight, the reference that "scale_learned" divides by
    layer_params = {k: v for k, v in overrides.items() if k != "w2"}
    originals = iter(layers)

    def rewrite(match):
        body = match.group(1)
        if not re.search(r'layer\s*:\s*["\']%s["\']' % MEANFIELD_CLASS, body):
            return match.group(0)
        _, params = next(originals)
        new = dict(params, **layer_params)
        param_str = "param_str: " + _quote(json.dumps(new, sort_keys=True))
        body = _PARAM_STR.sub(lambda _: param_str, body) if _PARAM_STR.search(body) \
            else body.rstrip() + "\n    " + param_str + "\n  "
        return "python_param {%s}" % body

    new_text = _PYTHON_PARAM.sub(rewrite, text)
    rewritten = meanfield_layers(new_text)
    if [n for n, _ in rewritten] != [n for n, _ in layers]:
        raise CrfError("could not rewrite the MultiStageMeanfield layers of the definition")
    return new_text, layers


def _get_blobs(model, layer):
    if hasattr(model, "net"):                        # CaffeNet
        return [np.array(b.data) for b in model.net.params[layer]]
    return [np.array(b) for b in model.params[layer]]    # TorchNet


def _set_blobs(model, layer, arrays):
    if hasattr(model, "net"):
        for blob, value in zip(model.net.params[layer], arrays):
            blob.data[...] = value.reshape(blob.data.shape)
    else:
        model.set_params({layer: arrays})


def adjust_blobs(model, layers, overrides, w2_mode="scale_learned"):
    """Apply the weight keys to the loaded kernel-weight blobs (W_s, W_b, mu).

    Parameters
    ----------
    model : CaffeNet or TorchNet, weights already loaded
    layers : from :func:`override_definition` (names and original params)
    overrides : normalised overrides
    w2_mode : "scale_learned" or "replace_diagonal"
    """
    if w2_mode not in W2_MODES:
        raise CrfError("w2 mode must be one of %s, got %r" % (W2_MODES, w2_mode))
    if not any(k in overrides for k in WEIGHT_KEYS):
        return
    for name, params in layers:
        blobs = _get_blobs(model, name)
        eye = np.eye(blobs[0].shape[-1], dtype=np.float32).reshape(blobs[0].shape)
        if "w2" in overrides and w2_mode == "scale_learned":
            blobs[0] = blobs[0] * np.float32(overrides["w2"] / params["spatial_filter_weight"])
        elif "w2" in overrides:
            blobs[0] = np.float32(overrides["w2"]) * eye
        if "spatial_filter_weight" in overrides:
            blobs[0] = np.float32(overrides["spatial_filter_weight"]) * eye
        if "bilateral_filter_weight" in overrides:
            blobs[1] = np.float32(overrides["bilateral_filter_weight"]) * eye
        _set_blobs(model, name, blobs)


def load_with_overrides(load, prototxt, overrides, w2_mode="scale_learned"):
    """Load a net (``load(definition path or text)``) with its CRF overridden.

    Returns the model; raises CrfError as :func:`override_definition`.
    """
    with open(prototxt) as f:
        text, layers = override_definition(f.read(), overrides)
    model = load(text)
    adjust_blobs(model, layers, overrides, w2_mode)
    return model
