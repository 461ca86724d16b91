"""Multiscale (MSC) nets: any zoo model run at several input scales, fused.

The zoo family ``multiscale`` registers the released DeepLab v2 ResNet-101
MSC net (deeplab-public-ver2); :func:`multiscale_net` wraps *any* zoo
model the same way, which is how FCN-8s is made multiscale at test time
(supplementary A4.2) and how the single-scale members of either are
addressed for the transfer study (:func:`parse_member`, ``NAME@0.5``).

Structure of the generated net, for scales ``(1, 0.75, 0.5)``::

    data ──────────────────────────── trunk ──> fc1_voc12 ─────────────────┐
    data ─Interp(zoom 3, shrink 4)─> trunk_res075 ─> fc1_voc12_res075 ─Interp─┤ Eltwise MAX
    data ─Interp(shrink 2)─────────> trunk_res05  ─> fc1_voc12_res05 ──Interp─┘ (or SUM x 1/3)
                                                                  -> fc_fusion -> head (fc1_interp)

- The input is resized inside the net by the ``Interp`` Python layer
  (align-corners bilinear, with the exact adjoint as backward), so a
  white-box attack differentiates through the resizing as in DeepLab's
  Caffe MSC net. A scale ``p/q`` is ``Interp {shrink_factor: q, zoom_factor:
  p}``: 513 -> 385 for 0.75 and 257 for 0.5, DeepLab's sizes.
- Every scale runs the same trunk. The first scale listed (100 % by default)
  keeps the original layer and blob names, the others get ``_res075`` /
  ``_res05`` suffixes (DeepLab's naming), and every parameter blob carries a
  Caffe ``param { name: ... }`` so that all copies share one set of weights:
  a single-scale caffemodel loads by layer name into the first copy and the
  others see the same memory. (Except BatchNorm statistics: Caffe drops a
  three-spec BatchNorm's sharing on load, so the engines copy them from the
  first copy after loading; caffemodel_reader.restore_batchnorm_sharing.)
- Each scale's scores (at ``fuse_blob``, the blob before the model's final
  upsampling when it has one: DeepLab's 65x65 ``fc1_voc12``) are resized by
  ``Interp`` to the first scale's score grid, by inverse factors when they
  land exactly (DeepLab: zoom 2; zoom 4 shrink 3) and by an explicit
  ``height``/``width`` otherwise (Interp's values depend only on the two
  sizes, so the numbers are the same either way).
- Fusion: ``Eltwise MAX`` (the released model; its backward routes the
  gradient to the winning scale only) or ``"avg"``, ``Eltwise SUM`` with
  coefficients 1/n (supplementary A4.1.1).
- The layers after ``fuse_blob`` in the single-scale model (the "head",
  DeepLab's Interp zoom 8) are applied once, to the fused blob.

Layer names of DeepLab's official MSC test prototxt could not be verified
(it ships only inside the release zip on liangchiehchen.com); the fused blob ``fc_fusion`` follows DeepLab v2's MSC
training definitions. See docs/FIDELITY.md, "Multiscale and transfer".
"""
import json
import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Optional, Tuple

from caffe_attacks.caffe_geometry import interp_output_size, net_inputs, parse_prototxt
from caffe_attacks.zoo import ModelSpec
from caffe_attacks.zoo import shapes
from caffe_attacks.zoo.netspec_tools import caffe_pb2, net_parameter, net_text

SCALES = (1.0, 0.75, 0.5)
FUSIONS = ("max", "avg")
INTERP_PYTHON = ("caffe_attacks.layers.interp", "Interp")


@dataclass(frozen=True)
class Recipe:
    """How a registered multiscale model is made from a single-scale zoo model."""
    base: str                          # the wrapped zoo model
    fusion: str = "max"
    scales: Tuple[float, ...] = SCALES
    fuse_blob: Optional[str] = None    # blob fused across scales (default: base score blob)
    fused_blob: Optional[str] = None   # name of the fused blob (default: fuse_blob + "_fusion")


MODELS = [
    ModelSpec("deeplabv2_resnet101_msc_voc", "multiscale", "voc", 21, "data", "fc1_interp",
              (513, 513), ("Interp",), 168.4),
]

RECIPES = {
    "deeplabv2_resnet101_msc_voc": Recipe("deeplabv2_resnet101_voc", "max", SCALES,
                                          fuse_blob="fc1_voc12", fused_blob="fc_fusion"),
}

# Default fusion point of models whose logits are an upsampled coarse map: fuse
# the coarse map, as DeepLab's MSC net does, then upsample once.
DEFAULT_FUSE_BLOB = {
    "deeplabv2_resnet101_voc": "fc1_voc12",
    "deeplabv2_vgg16_voc": "fc8_voc12",
}


def build(spec, input_hw, **options):
    """The registered model ``spec`` at input ``(H, W)``; ``options`` go to the base."""
    recipe = RECIPES[spec.name]
    ms = multiscale_net(recipe.base, input_hw, scales=recipe.scales, fusion=recipe.fusion,
                        fuse_blob=recipe.fuse_blob, fused_blob=recipe.fused_blob, **options)
    if ms.score_blob != spec.score_blob:
        raise AssertionError("recipe of %s yields score blob %r, spec says %r"
                             % (spec.name, ms.score_blob, spec.score_blob))
    ms.net.name = spec.name
    return ms.net


# ---------------------------------------------------------------- the builder

@dataclass
class MultiscaleNet:
    """A generated multiscale net and the blobs a caller needs.

    net : caffe_pb2.NetParameter
    input_blob, score_blob : str (score_blob: the fused logits, on the 100 % grid)
    scales : tuple of float, in definition order
    scale_blobs : tuple of str, each scale's fuse-blob scores on the 100 % grid
        (the Eltwise bottoms), aligned with ``scales``
    fused_blob : str, the Eltwise top (= scale_blobs[0] for a single scale)
    """
    net: object
    input_blob: str
    score_blob: str
    scales: Tuple[float, ...]
    scale_blobs: Tuple[str, ...]
    fused_blob: str
    suffixes: Tuple[str, ...] = field(default=())


def scale_suffix(scale):
    """DeepLab's name suffix of a scale: ``""`` for 1, ``"_res075"``, ``"_res05"``."""
    scale = _check_scale(scale)
    if scale == 1.0:
        return ""
    return "_res" + ("%g" % scale).replace(".", "")


def scale_factors(scale):
    """Interp factors of a scale ``p/q``: ``{"shrink_factor": q, "zoom_factor": p}``
    (zoom omitted when p = 1). 0.75 -> shrink 4, zoom 3 (513 -> 385)."""
    frac = Fraction(_check_scale(scale)).limit_denominator(64)
    if abs(float(frac) - scale) > 1e-9:
        raise ValueError("scale %r is not a simple fraction p/q (q <= 64)" % scale)
    params = {"shrink_factor": frac.denominator}
    if frac.numerator > 1:
        params["zoom_factor"] = frac.numerator
    return params


def _check_scale(scale):
    scale = float(scale)
    if not 0.0 < scale <= 1.0:
        raise ValueError("a scale must be in (0, 1], got %r" % scale)
    return scale


def _interp_layer(name, bottom, top, params):
    layer = caffe_pb2().LayerParameter()
    layer.name, layer.type = name, "Python"
    layer.bottom.append(bottom)
    layer.top.append(top)
    layer.python_param.module, layer.python_param.layer = INTERP_PYTHON
    layer.python_param.param_str = json.dumps(params, sort_keys=True)
    return layer


def _blob_shapes(net):
    """{blob: shape} after every layer of ``net`` (shape inference, no Caffe)."""
    parsed = parse_prototxt(net_text(net))
    out = dict(net_inputs(parsed))
    for layer in shapes.infer(parsed):
        out.update(zip(layer.tops, layer.top_shapes))
    return out


def _resize_params(src_hw, dst_hw):
    """Interp params taking a (h, w) score map to ``dst_hw``: small inverse factors
    (at most 8) when they land exactly (DeepLab's form), else explicit height and width."""
    ratio = Fraction(dst_hw[0] - 1, max(src_hw[0] - 1, 1))
    if ratio >= 1 and ratio.numerator <= 8:
        params = {"zoom_factor": ratio.numerator}
        if ratio.denominator > 1:
            params["shrink_factor"] = ratio.denominator
        if interp_output_size(src_hw[0], src_hw[1], params)[2:] == tuple(dst_hw):
            return params
    return {"height": int(dst_hw[0]), "width": int(dst_hw[1])}


def _split_at(layers, fuse_blob, input_blob):
    """(trunk layers up to the last producer of fuse_blob, head layers after it)."""
    producers = [i for i, l in enumerate(layers) if fuse_blob in l.top]
    if not producers:
        raise ValueError("no layer produces the fuse blob %r" % fuse_blob)
    cut = producers[-1] + 1
    trunk, head = layers[:cut], layers[cut:]
    trunk_tops = {t for l in trunk for t in l.top}
    for layer in head:
        for b in layer.bottom:
            if b in trunk_tops and b not in (fuse_blob, input_blob):
                raise ValueError("head layer %r reads trunk blob %r: cannot fuse at %r"
                                 % (layer.name, b, fuse_blob))
    return trunk, head


def _share_params(layer, n_blobs, owner):
    """Give every parameter blob of ``layer`` a ``param { name }`` derived from the
    owner copy's layer name ``owner`` (names already present are kept)."""
    while len(layer.param) < n_blobs:
        layer.param.add()
    for k in range(n_blobs):
        if not layer.param[k].name:
            layer.param[k].name = "%s_%d" % (owner, k)


def multiscale_net(base, input_hw=None, scales=SCALES, fusion="max", fuse_blob=None,
                   fused_blob=None, **options):
    """Wrap zoo model ``base`` into a multiscale (or one-scale member) net.

    Parameters
    ----------
    base : str
        A single-scale zoo model name (e.g. ``"fcn8s_vgg_voc_authors"``).
    input_hw : (int, int), optional
        The canvas (H, W); the base's reference input if None.
    scales : sequence of float in (0, 1]
        Input scales, in definition order. The first keeps the original layer
        names (it owns the shared parameters). One scale gives a single-scale
        member: the base net on the resized input, its scores resized back.
    fusion : "max" | "avg"
    fuse_blob : str, optional
        Blob fused across scales (default :data:`DEFAULT_FUSE_BLOB` or the
        base's score blob); layers after it are applied once, after fusion.
    fused_blob : str, optional
        Name of the Eltwise top (default ``fuse_blob + "_fusion"``).
    **options
        Test-only generator knobs of the base family (``width_mult``).

    Returns
    -------
    MultiscaleNet
    """
    from caffe_attacks import zoo
    spec = zoo.get(base)
    if spec.family == "multiscale":
        raise ValueError("%s is already multiscale; wrap its base %s"
                         % (base, RECIPES[base].base))
    hw = tuple(int(v) for v in (input_hw or spec.reference_input))
    base_net = net_parameter(zoo.build(base, input_hw=hw, **options))
    ms = wrap(base_net, spec.input_blob, spec.score_blob, scales, fusion,
              fuse_blob or DEFAULT_FUSE_BLOB.get(base, spec.score_blob), fused_blob)
    ms.net.name = "%s_msc" % base
    return ms


def wrap(base_net, input_blob, score_blob, scales=SCALES, fusion="max", fuse_blob=None,
         fused_blob=None):
    """:func:`multiscale_net` for any single-scale NetParameter (or prototxt text).

    Parameters
    ----------
    base_net : caffe_pb2.NetParameter or str
        One Input layer for ``input_blob`` (1 x 3 x H x W), then the layers.
    input_blob, score_blob : str
    scales, fusion, fuse_blob, fused_blob : as :func:`multiscale_net`
        (``fuse_blob`` defaults to ``score_blob``).

    Returns
    -------
    MultiscaleNet
    """
    if isinstance(base_net, str):
        base_net = net_parameter(base_net)
    if fusion not in FUSIONS:
        raise ValueError("fusion must be one of %s, got %r" % (FUSIONS, fusion))
    scales = tuple(_check_scale(s) for s in scales)
    if not scales or len(set(scales)) != len(scales):
        raise ValueError("scales must be non-empty and distinct, got %r" % (scales,))
    fuse_blob = fuse_blob or score_blob
    fused_blob = fused_blob or fuse_blob + "_fusion"

    layers = list(base_net.layer)
    inputs = [l for l in layers if l.type == "Input"]
    body = [l for l in layers if l.type != "Input"]
    trunk, head = _split_at(body, fuse_blob, input_blob)
    param_counts = {l.name: len(l.param_shapes)
                    for l in shapes.infer(parse_prototxt(net_text(base_net)))}
    grid = _blob_shapes(base_net)[fuse_blob][2:]

    net = caffe_pb2().NetParameter()
    net.name = base_net.name
    net.layer.extend(inputs)
    scale_blobs, suffixes = [], []
    share = len(scales) > 1
    for i, scale in enumerate(scales):
        suffix = scale_suffix(scale)
        # the first copy owns the original names; 100 % listed later is "_res1"
        names_suffix = "" if i == 0 else (suffix or "_res1")
        suffixes.append(names_suffix)
        scaled_input = input_blob
        if scale != 1.0:
            scaled_input = input_blob + suffix
            net.layer.extend([_interp_layer(scaled_input, input_blob, scaled_input,
                                            scale_factors(scale))])
        rename = {input_blob: scaled_input}
        for src in trunk:
            layer = net.layer.add()
            layer.CopyFrom(src)
            layer.name = src.name + names_suffix
            layer.bottom[:] = [rename.get(b, b + names_suffix) for b in src.bottom]
            layer.top[:] = [rename.get(t, t + names_suffix) for t in src.top]
            if share and param_counts.get(src.name):
                _share_params(layer, param_counts[src.name], owner=src.name)
        member_scores = fuse_blob + names_suffix
        member_hw = _blob_shapes(net)[member_scores][2:]
        if tuple(member_hw) != tuple(grid):
            resized = fuse_blob + (suffix or names_suffix) + "_interp"
            net.layer.extend([_interp_layer(resized, member_scores, resized,
                                            _resize_params(member_hw, grid))])
            member_scores = resized
        scale_blobs.append(member_scores)

    if len(scales) == 1:
        fused = scale_blobs[0]
    else:
        fused = fused_blob
        layer = net.layer.add()
        layer.name, layer.type = fused, "Eltwise"
        layer.bottom.extend(scale_blobs)
        layer.top.append(fused)
        P = caffe_pb2().EltwiseParameter
        if fusion == "max":
            layer.eltwise_param.operation = P.MAX
        else:
            layer.eltwise_param.operation = P.SUM
            layer.eltwise_param.coeff.extend([1.0 / len(scales)] * len(scales))
    for src in head:
        layer = net.layer.add()
        layer.CopyFrom(src)
        layer.bottom[:] = [fused if b == fuse_blob else b for b in src.bottom]
    if not head and score_blob != fuse_blob:
        raise ValueError("fuse blob %r is not the score blob %r and nothing follows it"
                         % (fuse_blob, score_blob))
    return MultiscaleNet(net, input_blob, score_blob if head else fused, scales,
                         tuple(scale_blobs), fused, tuple(suffixes))


# ------------------------------------------------- addressing nets for transfer

@dataclass(frozen=True)
class Member:
    """A net of the multiscale study, named ``NAME[@VARIANT]`` (see :func:`parse_member`).

    zoo_name : the zoo model whose manifest entry gives weights and input protocol
    base : the single-scale zoo model that is wrapped (None: ``zoo_name`` as committed)
    scales, fusion, fuse_blob, fused_blob : as :func:`multiscale_net`
    """
    label: str
    zoo_name: str
    base: Optional[str] = None
    scales: Tuple[float, ...] = ()
    fusion: str = "max"
    fuse_blob: Optional[str] = None
    fused_blob: Optional[str] = None

    @property
    def generated(self):
        """True when the net is generated here rather than the committed prototxt."""
        return self.base is not None

    def describe(self):
        """The fields a result record needs to say which net this was."""
        d = {"model": self.label, "zoo_model": self.zoo_name}
        if self.generated:
            d.update(base=self.base, scales=list(self.scales), fusion=self.fusion)
        return d


def parse_member(text):
    """Resolve ``NAME``, ``NAME@SCALE``, ``NAME@max`` or ``NAME@avg``.

    - ``NAME``: the zoo model as committed (a registered multiscale model is
      its fused net);
    - ``NAME@0.5``: one scale of NAME's trunk (of its base, when NAME is
      multiscale): the input resized inside the net, the scores resized back
      to the 100 % grid; ``NAME@1`` is the single-scale net itself;
    - ``NAME@max`` / ``NAME@avg``: scales (1, 0.75, 0.5) fused by MAX / AVG.

    Raises
    ------
    ValueError
        For an unknown model, scale or variant (the message lists the choices).
    """
    from caffe_attacks import zoo
    name, _, variant = str(text).partition("@")
    try:
        zoo.get(name)
    except KeyError as err:
        raise ValueError(err.args[0]) from None
    recipe = RECIPES.get(name)
    base = recipe.base if recipe else name
    fuse = dict(fuse_blob=recipe.fuse_blob, fused_blob=recipe.fused_blob) if recipe else {}
    if not variant:
        return Member(text, name)
    if variant in FUSIONS:
        return Member(text, name, base, SCALES, variant, **fuse)
    try:
        scale = _check_scale(float(variant))
        scale_factors(scale)
    except ValueError:
        raise ValueError("bad variant %r in %r: give a scale in (0, 1] such as 0.5, or one "
                         "of %s" % (variant, text, ", ".join(FUSIONS))) from None
    return Member(text, name, base, (scale,), "max", **fuse)


def member_net(member, input_hw=None, **options):
    """Prototxt text and score blob of a generated :class:`Member`.

    Returns
    -------
    (str, MultiscaleNet)
    """
    from caffe_attacks import zoo
    if not member.generated:
        raise ValueError("%s is a committed zoo model; use zoo.prototxt_path" % member.label)
    ms = multiscale_net(member.base, input_hw, scales=member.scales, fusion=member.fusion,
                        fuse_blob=member.fuse_blob, fused_blob=member.fused_blob, **options)
    ms.net.name = member.label
    return zoo.header_line("multiscale") + "\n" + net_text(ms.net), ms


def shared_param_count(prototxt):
    """Stored parameters of a definition, counting each named (shared) blob once.

    :func:`caffe_attacks.zoo.shapes.param_count` counts every layer's blobs;
    a multiscale net stores one copy of the trunk (Table A4: 168.4 MiB).
    """
    net = parse_prototxt(prototxt)
    seen, total = set(), 0
    layers = {l.get("name", [""])[-1]: l for l in net.get("layer", [])}
    for inferred in shapes.infer(net):
        specs = layers[inferred.name].get("param", [])
        for k, shape in enumerate(inferred.param_shapes):
            pname = specs[k].get("name", [None])[-1] if k < len(specs) else None
            key = pname or (inferred.name, k)
            if key not in seen:
                seen.add(key)
                total += int(math.prod(shape))
    return total
