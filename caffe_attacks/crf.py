"""CRF variants and the CRF experiments (supplementary A5, Figures A9-A14).

Two parts:

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
  figures.py's ``_crf_base`` asks for.
- **Experiments**: :func:`run_experiment`, the ``"runner"`` of the crf_sweep,
  crf_confidence and crf_deeplab definitions: it runs, through the runner and
  the transfer module, whatever the store lacks.
"""
import json
import logging
import re

import numpy as np

from caffe_attacks.layers.meanfield import PARAM_KEYS, W2_MODES, parse_meanfield_params

log = logging.getLogger(__name__)

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
    from caffe_attacks.zoo import shapes
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


# --------------------------------------------------------------------------
# Experiments: Figures A9-A14
# --------------------------------------------------------------------------
def _crf_argv(crf):
    """Runner options for a record's "crf" field (None: none)."""
    if not crf:
        return []
    argv = []
    for key, value in sorted(crf.items()):
        if key != "w2_mode":
            argv += ["--crf", "%s=%r" % (key, value)]
    if "w2_mode" in crf:
        argv += ["--crf-w2-mode", crf["w2_mode"]]
    return argv


def _sweep_variants(sweep):
    """[(model, "crf" field or None)] of a crf_sweep definition's points."""
    from caffe_attacks.figures import _crf_base, _sweep_points
    return [(sweep["model"], _crf_base(sweep, overrides).get("crf"))
            for _, overrides in _sweep_points(sweep)]


def plan_runs(defn, experiments_dir=None):
    """What a CRF definition needs, as runner jobs and transfers.

    Returns
    -------
    runs : list of (model, crf field or None, attacks, eps): runner jobs, one
        per net (a CRF variant is a net of its own)
    transfers : list of (source, target, attacks, eps)
    """
    from caffe_attacks.experiments import EXPERIMENTS_DIR, ExperimentError, load
    eps = [float(e) for e in defn["eps"] if e]
    jobs = {}          # (model, crf key) -> [model, crf, attacks, eps]

    def want(model, crf, attacks):
        key = (model, json.dumps(crf, sort_keys=True))
        job = jobs.setdefault(key, [model, crf, [], list(eps)])
        job[2] += [a for a in attacks if a not in job[2]]

    transfers = []
    kind = defn["kind"]
    if kind == "crf_sweep":
        for model, crf in _sweep_variants(defn):
            want(model, crf, [defn["attack"]])
    elif kind == "crf_confidence":
        for model in defn["models"]:
            want(model, None, [defn["attack"]])
        for sweep_id in defn.get("variants_from", ()):
            try:
                sweep = load(sweep_id, experiments_dir or EXPERIMENTS_DIR)
            except ExperimentError as e:
                log.warning("%s: %s", defn["id"], e)
                continue
            for model, crf in _sweep_variants(sweep):
                want(model, crf, [defn["attack"]])
    elif kind == "crf_deeplab":
        for p in defn["panels"]:
            if p["source"] == p["target"] or p.get("compare_white_box"):
                want(p["target"], None, [p["attack"]])
            if p["source"] != p["target"]:
                transfers.append((p["source"], p["target"], [p["attack"]], eps))
            if p.get("compare"):
                want(p["compare"], None, [p["attack"]])
    else:
        raise ValueError("%s is not a CRF experiment (kind %r)" % (defn["id"], kind))
    return [tuple(j) for j in jobs.values()], transfers


def run_experiment(defn, context):
    """experiments.ensure's runner for crf_sweep, crf_confidence and crf_deeplab.

    Runs (resumably, into context["store_path"]) every CRF variant through the
    runner (``--crf`` overrides) and every transfer (Figure A12 (b): crafted on
    the unary net, evaluated on the +crf net) through caffe_attacks.transfer.
    Returns an experiments.EnsureReport; missing weights or data are listed
    there, nothing raises for them.
    """
    from caffe_attacks import experiments as E
    from caffe_attacks import transfer
    from caffe_attacks.run import UsageError
    report = E.EnsureReport()
    split = defn.get("split", "val")
    runs, transfers = plan_runs(defn, context.get("experiments_dir"))
    labels = sorted({m for m, _, _, _ in runs} | {n for s, t, _, _ in transfers for n in (s, t)})
    report.missing = transfer.missing_inputs(labels, defn["dataset"], split, context)
    if report.missing:
        return report
    for model, crf, attacks, eps in runs:
        job = E.Job(model, defn["dataset"], split, attacks, eps)
        what = job.describe() + (" with CRF %s" % json.dumps(crf, sort_keys=True) if crf else "")
        try:
            E.run_job(job, context["store_path"], context.get("data_dirs"),
                      context.get("weights_dir", "weights"), context.get("limit"),
                      context.get("progress", True), context.get("gpu"),
                      extra_argv=_crf_argv(crf))
            report.ran.append(what)
        except UsageError as e:
            report.failed.append((what, str(e)))
    session = None
    for source, target, attacks, eps in transfers:
        what = transfer.describe_run(source, [target], attacks, eps)
        try:
            session = session or transfer.ExperimentSession(defn["dataset"], split, context)
            session.run(source, [target], attacks, eps)
            report.ran.append(what)
        except UsageError as e:
            report.failed.append((what, str(e)))
    return report
