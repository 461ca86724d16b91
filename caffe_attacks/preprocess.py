"""Per-model input protocols: image -> network canvas, and scores -> label grid.

A protocol is data (the "input" block of a model in weights_manifest.json):

    {"mean_bgr": [104.0, 116.7, 122.7] | null,
     "resize": null | {"size": [W, H]} | {"long_side": 473, "shrink_only": false},
     "pad": null | {"mode": "constant", "canvas": [H, W]}
                 | {"mode": "reflect101", "margin": 186, "canvas": [H, W] (optional)},
     "scores_to_labels": "crop" | "resize",
     "score_align": "corners" | "stride" | "half_pixel"   (optional, "resize" only),
     "target_blob": "logits" | "probabilities"   (optional; the blob the attacks'
                    labels and least-likely targets are read from, default logits)}

Forward (`prepare`): float BGR image, minus the mean, bilinear resize
(cv2.INTER_LINEAR), then padding. A constant pad fills the bottom/right up to
the canvas with 0, i.e. the mean colour. A reflect-101 pad adds `margin` px on
every side (cv2.BORDER_REFLECT_101) and, when a canvas is given, reflects
further at the bottom/right up to it (the dilation nets' predict.py).

The image therefore always sits at (margin, margin) of the canvas, and the
net's output grid covers the canvas minus the margins (the dilation nets use
valid convolutions; for the other nets margin = 0 and the output grid is the
canvas). Inverse (`scores_to_label_grid`): scores on a coarser grid
("resize") are first resized bilinearly onto that output region, then the
image's rectangle is cropped, then a forward resize is undone by a bilinear
resize of the scores to the image size. See docs/FIDELITY.md.
"""
from dataclasses import dataclass

import cv2
import numpy as np

from caffe_attacks.class_rank import TARGET_BLOBS

PAD_MODES = ("constant", "reflect101")
SCORE_MODES = ("crop", "resize")
ALIGNS = ("corners", "stride", "half_pixel")
# the keys every manifest "input" block writes, and every key an "input" block
# may have (score_align is optional: its default follows the pad; target_blob
# defaults to the logits)
REQUIRED_INPUT_KEYS = ("mean_bgr", "resize", "pad", "scores_to_labels")
INPUT_KEYS = REQUIRED_INPUT_KEYS + ("score_align", "target_blob")


@dataclass(frozen=True)
class Placement:
    """Where one image sits on a protocol's canvas (the `ctx` of the methods).

    image_hw : (H, W) of the image given to prepare
    resized_hw : (H, W) after the protocol's resize (= image_hw without one)
    canvas_hw : (H, W) of the network input
    margin : int, px of reflect-101 margin on every side (0 for other pads)
    """
    image_hw: tuple
    resized_hw: tuple
    canvas_hw: tuple
    margin: int

    @property
    def output_hw(self):
        """(H, W) of the canvas region the net's output grid covers."""
        return (self.canvas_hw[0] - 2 * self.margin, self.canvas_hw[1] - 2 * self.margin)


def resize_chw(array, out_hw, align="half_pixel"):
    """Bilinear resize of a (C, h, w) array to (C, H, W).

    align gives the source coordinate of output pixel i along an axis of
    input size n and output size N:
      "corners"    i * (n - 1) / (N - 1)      Caffe's Interp layer (PSPNet, DeepLab)
      "stride"     i * n / N                  dilation's interp_map (zoom by N/n)
      "half_pixel" (i + 0.5) * n / N - 0.5    cv2.INTER_LINEAR
    Coordinates are clamped to [0, n - 1].

    Returns
    -------
    (C, H, W) float32
    """
    if align not in ALIGNS:
        raise ValueError(f"align must be one of {ALIGNS}, not {align!r}")
    out = np.asarray(array, dtype=np.float64)
    for axis, size in ((1, out_hw[0]), (2, out_hw[1])):
        n = out.shape[axis]
        if n == size:
            continue
        i = np.arange(size, dtype=np.float64)
        if align == "corners":
            src = i * ((n - 1) / (size - 1)) if size > 1 else np.zeros(1)
        elif align == "stride":
            src = i * (n / size)
        else:
            src = (i + 0.5) * (n / size) - 0.5
        src = np.clip(src, 0, n - 1)
        lo = np.floor(src).astype(np.int64)
        hi = np.minimum(lo + 1, n - 1)
        t = src - lo
        shape = [1, 1, 1]
        shape[axis] = size
        t = t.reshape(shape)
        out = np.take(out, lo, axis=axis) * (1 - t) + np.take(out, hi, axis=axis) * t
    return out.astype(np.float32)


def _score_positions(align, n, big):
    """The output-region pixel (nearest) that each of n score cells sits on under `align`."""
    i = np.arange(n, dtype=np.float64)
    if align == "corners":
        pos = i * (big - 1) / (n - 1) if n > 1 else np.zeros(1)
    elif align == "stride":
        pos = i * big / n
    else:
        pos = (i + 0.5) * big / n - 0.5
    return np.clip(np.floor(pos + 0.5), 0, big - 1).astype(np.int64)


def _resize_hwc(image, hw):
    if tuple(image.shape[:2]) == tuple(hw):
        return image
    return cv2.resize(image, (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)


def _default_align(pad_mode):
    # Caffe's Interp (DeepLab, PSPNet) aligns corners; the dilation nets (the
    # reflect-101 ones) zoom by the stride in interp_map. For DeepLab's
    # 65 -> 513 the two coincide.
    return "stride" if pad_mode == "reflect101" else "corners"


def _round_half_up(value):
    return int(np.floor(value + 0.5))


MAX_SIDE = 16384    # pixels; a larger canvas, margin or resize is a typo, not a protocol


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_count(value, minimum):
    """An int (not a bool) in [minimum, MAX_SIDE]."""
    return (isinstance(value, int) and not isinstance(value, bool)
            and minimum <= value <= MAX_SIDE)


def _is_hw(value):
    return isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_count(v, 1) for v in value)


def _parse_mean(mean):
    if mean is None:
        return None
    # a NaN or inf mean would reach the net (and its NaN scores the store)
    if not (isinstance(mean, (list, tuple)) and len(mean) == 3
            and all(_is_number(v) and 0 <= v <= 255 for v in mean)):
        raise ValueError(f"mean_bgr must be null or 3 numbers in [0, 255] (B, G, R), "
                         f"got {mean!r}")
    return tuple(float(v) for v in mean)


def _parse_resize(resize):
    if resize is None:
        return {}
    keys = set(resize) if isinstance(resize, dict) else None
    if keys == {"size"} and _is_hw(resize["size"]):
        w, h = resize["size"]
        return dict(resize_size=(w, h))
    if (keys in ({"long_side"}, {"long_side", "shrink_only"}) and _is_count(resize["long_side"], 1)
            and isinstance(resize.get("shrink_only", False), bool)):
        return dict(resize_long_side=resize["long_side"],
                    shrink_only=resize.get("shrink_only", False))
    raise ValueError('resize must be null, {"size": [W, H]} or '
                     f'{{"long_side": n[, "shrink_only": bool]}}, got {resize!r}')


def _parse_pad(pad):
    if pad is None:
        return {}
    mode = pad.get("mode") if isinstance(pad, dict) else None
    if mode not in PAD_MODES:
        raise ValueError(f"pad must be null or an object with mode one of {PAD_MODES}, "
                         f"got {pad!r}")
    if mode == "constant":
        if set(pad) != {"mode", "canvas"} or not _is_hw(pad["canvas"]):
            raise ValueError(f'a constant pad is {{"mode": "constant", "canvas": [H, W]}}, '
                             f"got {pad!r}")
        return dict(pad_mode=mode, canvas=tuple(pad["canvas"]))
    if (not {"mode", "margin"} <= set(pad) <= {"mode", "margin", "canvas"}
            or not _is_count(pad["margin"], 0) or ("canvas" in pad and not _is_hw(pad["canvas"]))):
        raise ValueError(f'a reflect101 pad is {{"mode": "reflect101", "margin": n'
                         f'[, "canvas": [H, W]]}}, got {pad!r}')
    canvas = tuple(pad["canvas"]) if "canvas" in pad else None
    return dict(pad_mode=mode, margin=pad["margin"], canvas=canvas)


@dataclass(frozen=True)
class Protocol:
    """One model's input protocol; build it with `Protocol.from_dict`."""
    mean_bgr: tuple = None          # (3,) or None (SegNet, ENet)
    resize_size: tuple = None       # (W, H) or None
    resize_long_side: int = None    # long side after resize, or None
    shrink_only: bool = False       # long_side: only ever shrink (CRF-RNN's "max side <= 500")
    pad_mode: str = None            # None | "constant" | "reflect101"
    canvas: tuple = None            # (H, W) or None
    margin: int = 0                 # reflect-101 px on every side
    scores_to_labels: str = "crop"  # "crop" | "resize"
    score_align: str = "corners"    # used when scores_to_labels == "resize"
    target_blob: str = "logits"     # "logits" | "probabilities" (caffe_attacks.class_rank)

    @classmethod
    def from_dict(cls, d):
        """Parse and validate an "input" block (see the module docstring).

        The one schema of the block: the weights manifest validates its
        blocks with this too.  Absent keys take their defaults.

        Raises
        ------
        ValueError naming the offending key, on any block this class would
        not write back unchanged in meaning (wrong keys, types or values).
        """
        if not isinstance(d, dict):
            raise ValueError(f"an input protocol must be an object, got {d!r}")
        unknown = set(d) - set(INPUT_KEYS)
        if unknown:
            raise ValueError(f"unknown input-protocol keys {sorted(unknown)}")
        kwargs = dict(mean_bgr=_parse_mean(d.get("mean_bgr")))
        kwargs.update(_parse_resize(d.get("resize")))
        kwargs.update(_parse_pad(d.get("pad")))
        mode = d.get("scores_to_labels", "crop")
        if mode not in SCORE_MODES:
            raise ValueError(f"scores_to_labels must be one of {SCORE_MODES}, got {mode!r}")
        kwargs["scores_to_labels"] = mode
        align = d.get("score_align", _default_align(kwargs.get("pad_mode")))
        if align not in ALIGNS:
            raise ValueError(f"score_align must be one of {ALIGNS}, got {align!r}")
        kwargs["score_align"] = align
        target_blob = d.get("target_blob", "logits")
        if target_blob not in TARGET_BLOBS:
            raise ValueError(f"target_blob must be one of {TARGET_BLOBS}, got {target_blob!r}")
        kwargs["target_blob"] = target_blob
        return cls(**kwargs)

    def to_dict(self):
        """The manifest form (inverse of from_dict), for records."""
        resize = None
        if self.resize_size is not None:
            resize = {"size": list(self.resize_size)}
        elif self.resize_long_side is not None:
            resize = {"long_side": self.resize_long_side}
            if self.shrink_only:
                resize["shrink_only"] = True
        pad = None
        if self.pad_mode == "constant":
            pad = {"mode": "constant", "canvas": list(self.canvas)}
        elif self.pad_mode == "reflect101":
            pad = {"mode": "reflect101", "margin": self.margin}
            if self.canvas is not None:
                pad["canvas"] = list(self.canvas)
        d = {"mean_bgr": list(self.mean_bgr) if self.mean_bgr else None, "resize": resize,
             "pad": pad, "scores_to_labels": self.scores_to_labels}
        if self.score_align != _default_align(self.pad_mode):
            d["score_align"] = self.score_align  # only then, so manifests keep the 4 keys
        d["target_blob"] = self.target_blob
        return d

    # -- geometry ---------------------------------------------------------
    def placement(self, image_hw):
        """The Placement of an image of size image_hw; ValueError if it does not fit."""
        h, w = (int(v) for v in image_hw)
        if self.resize_size is not None:
            resized = (self.resize_size[1], self.resize_size[0])
        elif self.resize_long_side is not None and not (
                self.shrink_only and max(h, w) <= self.resize_long_side):
            scale = self.resize_long_side / max(h, w)
            resized = (_round_half_up(h * scale), _round_half_up(w * scale))
        else:
            resized = (h, w)
        padded = (resized[0] + 2 * self.margin, resized[1] + 2 * self.margin)
        canvas = padded if self.canvas is None else self.canvas
        if padded[0] > canvas[0] or padded[1] > canvas[1]:
            raise ValueError(f"image {w}x{h} (placed {padded[1]}x{padded[0]}) does not fit the "
                             f"{canvas[1]}x{canvas[0]} canvas; tiling is not supported")
        return Placement((h, w), resized, tuple(canvas), self.margin)

    def _to_canvas(self, image, ctx):
        """Resize and pad an (H, W, 3) float image (already mean-subtracted)."""
        image = _resize_hwc(np.ascontiguousarray(image, dtype=np.float32), ctx.resized_hw)
        m = ctx.margin
        bottom = ctx.canvas_hw[0] - ctx.resized_hw[0] - 2 * m
        right = ctx.canvas_hw[1] - ctx.resized_hw[1] - 2 * m
        if self.pad_mode == "reflect101":
            image = cv2.copyMakeBorder(image, m, m, m, m, cv2.BORDER_REFLECT_101)
            if bottom or right:
                image = cv2.copyMakeBorder(image, 0, bottom, 0, right, cv2.BORDER_REFLECT_101)
        elif self.pad_mode == "constant" and (bottom or right):
            image = cv2.copyMakeBorder(image, 0, bottom, 0, right, cv2.BORDER_CONSTANT, value=0)
        return np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32)

    def _from_canvas(self, x, ctx):
        """The image rectangle of a (1, 3, H, W) canvas tensor, back at image size, (H, W, 3)."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 4:
            x = x[0]
        if tuple(x.shape[1:]) != tuple(ctx.canvas_hw):
            raise ValueError(f"tensor {x.shape} does not match the canvas {ctx.canvas_hw}")
        m = ctx.margin
        rect = x[:, m:m + ctx.resized_hw[0], m:m + ctx.resized_hw[1]].transpose(1, 2, 0)
        return _resize_hwc(np.ascontiguousarray(rect), ctx.image_hw)

    # -- the interface ----------------------------------------------------
    def prepare(self, image_bgr):
        """Image -> network input.

        Parameters
        ----------
        image_bgr : (H, W, 3) uint8 (or float) BGR, 0..255

        Returns
        -------
        x : (1, 3, H_canvas, W_canvas) float32, BGR, mean-subtracted
        ctx : Placement
        """
        # float64 up to the canvas, rounded to float32 once: the authors' arrays
        # (float image minus a float64 mean) as their float32 data blob held them
        image = np.asarray(image_bgr, dtype=np.float64)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) BGR image, got shape {image.shape}")
        ctx = self.placement(image.shape[:2])
        if self.mean_bgr is not None:
            image = image - np.asarray(self.mean_bgr, dtype=np.float64)
        return self._to_canvas(image, ctx), ctx

    def scores_to_label_grid(self, scores, ctx):
        """Network scores -> scores on the image's label grid.

        Parameters
        ----------
        scores : (1, C, h, w) or (C, h, w); (h, w) = ctx.output_hw for "crop",
            any grid covering the output region for "resize"
        ctx : Placement from prepare

        Returns
        -------
        (C, H_image, W_image) float32
        """
        scores = np.asarray(scores, dtype=np.float32)
        if scores.ndim == 4:
            if scores.shape[0] != 1:
                raise ValueError(f"batch of {scores.shape[0]}; expected 1")
            scores = scores[0]
        out_hw = ctx.output_hw
        if tuple(scores.shape[1:]) != tuple(out_hw):
            if self.scores_to_labels == "crop":
                raise ValueError(f"score grid {scores.shape[1:]} differs from the output region "
                                 f"{out_hw}; the protocol says 'crop' (use 'resize')")
            scores = resize_chw(scores, out_hw, self.score_align)
        scores = scores[:, :ctx.resized_hw[0], :ctx.resized_hw[1]]
        if ctx.resized_hw != ctx.image_hw:
            scores = resize_chw(scores, ctx.image_hw, "half_pixel")
        return np.array(scores, dtype=np.float32)

    def label_to_score_grid(self, label, ctx, score_hw=None, void=255):
        """Image label grid -> labels on the net's score grid (nearest), void outside the image.

        The forward twin of :meth:`scores_to_label_grid`: the label is resized
        (nearest) as the image is, placed on the output region, and each score
        cell takes the label of the output pixel it sits on under the
        protocol's ``score_align`` (the alignment ``scores_to_label_grid``
        resizes with). The strong attacks use it for ground-truth labels.

        Parameters
        ----------
        label : (H_image, W_image) integers in 0..255
        ctx : Placement from prepare
        score_hw : (h, w) of the score grid, default ctx.output_hw
        void : label of cells outside the image (the losses' ignore label)

        Returns
        -------
        (h, w) uint8
        """
        label = np.asarray(label)
        if tuple(label.shape) != tuple(ctx.image_hw):
            raise ValueError(f"label {label.shape} does not match the image {ctx.image_hw}")
        label = label.astype(np.uint8)
        if ctx.resized_hw != ctx.image_hw:
            label = cv2.resize(label, (ctx.resized_hw[1], ctx.resized_hw[0]),
                               interpolation=cv2.INTER_NEAREST)
        out_hw = tuple(ctx.output_hw)
        score_hw = out_hw if score_hw is None else tuple(int(v) for v in score_hw)
        grid = np.full(out_hw, void, dtype=np.uint8)
        grid[:label.shape[0], :label.shape[1]] = label
        if score_hw == out_hw:
            return grid
        if self.scores_to_labels == "crop":
            raise ValueError(f"score grid {score_hw} differs from the output region {out_hw}; "
                             f"the protocol says 'crop'")
        rows, cols = (_score_positions(self.score_align, n, big)
                      for n, big in zip(score_hw, out_hw))
        return grid[np.ix_(rows, cols)]

    def input_to_image(self, x, ctx):
        """Network input -> (H_image, W_image, 3) float32 BGR image (mean added, canvas removed)."""
        image = self._from_canvas(x, ctx)
        if self.mean_bgr is not None:
            image = image + np.asarray(self.mean_bgr, dtype=np.float32)
        return image

    def map_delta(self, delta, ctx_src, dst_protocol, ctx_dst):
        """Carry a perturbation from this protocol's canvas to another's, through image space.

        The image rectangle of `delta` is cut out and resized back to the image
        (bilinear), then placed as `dst_protocol` places an image: resized and
        padded, constant pads with 0 and reflect-101 pads reflecting the
        perturbation (what dst.prepare(image + delta_image) would do, since
        both steps are linear). Perturbation that lies in this canvas's padding
        is not part of the image and is dropped, except when both protocols
        and placements are the same: then the canvas is shared and the whole
        delta carries over unchanged (the multiscale transfer of Tables
        A15-A18 perturbs one 513x513 canvas fed to every net).

        Parameters
        ----------
        delta : (1, 3, H_src, W_src) float32
        ctx_src, ctx_dst : Placements of the same image under the two protocols

        Returns
        -------
        (1, 3, H_dst, W_dst) float32
        """
        if tuple(ctx_src.image_hw) != tuple(ctx_dst.image_hw):
            raise ValueError(f"placements are of different images: {ctx_src.image_hw} vs "
                             f"{ctx_dst.image_hw}")
        if dst_protocol == self and ctx_dst == ctx_src:
            delta = np.asarray(delta, dtype=np.float32)
            if delta.shape[-2:] != tuple(ctx_src.canvas_hw):
                raise ValueError(f"delta {delta.shape} does not match the canvas "
                                 f"{ctx_src.canvas_hw}")
            return delta.reshape((1, 3) + tuple(ctx_src.canvas_hw)).copy()
        return dst_protocol._to_canvas(self._from_canvas(delta, ctx_src), ctx_dst)
