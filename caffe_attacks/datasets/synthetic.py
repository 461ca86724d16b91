"""Synthetic segmentation scenes written in the real VOC or Cityscapes layout.

    python -m caffe_attacks.datasets.synthetic --format voc --out D --n 200 --seed 0

Each scene is a textured, low-saturation background with a few filled shapes;
each class has its own shape, saturated colour and texture, so a small net can
learn it in minutes on a CPU. VOC format: JPEGImages/*.jpg, palette PNGs in
SegmentationClass/ with 255 void bands along every region boundary (as VOC's
boundaries), ImageSets/Segmentation/{train,val,trainval}.txt. Cityscapes
format: leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png and
gtFine/<split>/<city>/..._gtFine_labelIds.png holding labelIds (road,
sidewalk, sky, ... and ignored ids such as "ego vehicle"). A synthetic.json
records the format, classes and generator settings.

Every image depends only on (seed, index) and the settings, so a set is
reproducible for a seed whatever --n is.
"""
import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from .labels import CITYSCAPES_BY_NAME, voc_palette

log = logging.getLogger(__name__)

VOID = 255
GENERATOR_VERSION = 1


@dataclass(frozen=True)
class ShapeClass:
    name: str
    shape: str         # circle | square | triangle | cross | diamond | hexagon | rect | ellipse
    color_bgr: tuple   # saturated base colour
    texture: str       # plain | stripes | dots | checker | grid | rings


VOC_SHAPE_CLASSES = (
    ShapeClass("circle", "circle", (40, 40, 210), "dots"),          # red
    ShapeClass("square", "square", (50, 190, 40), "stripes"),       # green
    ShapeClass("triangle", "triangle", (210, 90, 30), "checker"),   # blue
    ShapeClass("cross", "cross", (30, 210, 230), "plain"),          # yellow
    ShapeClass("diamond", "diamond", (200, 40, 200), "grid"),       # magenta
    ShapeClass("hexagon", "hexagon", (220, 210, 40), "rings"),      # cyan
)
MAX_VOC_CLASSES = len(VOC_SHAPE_CLASSES)

# Cityscapes scenes: stuff bands (sky / building / sidewalk / road), objects on
# top, and regions with ignored labelIds so 255 appears after the trainId map.
CITYSCAPES_OBJECTS = (
    ShapeClass("car", "rect", (120, 20, 10), "stripes"),
    ShapeClass("person", "ellipse", (60, 20, 220), "plain"),
    ShapeClass("traffic sign", "triangle", (0, 220, 220), "plain"),
    ShapeClass("vegetation", "circle", (40, 150, 60), "dots"),
    ShapeClass("static", "square", (90, 90, 90), "checker"),   # labelId 4: ignored
)
CITYSCAPES_CITIES = {"val": ("frankfurt", "lindau", "munster"),
                     "train": ("aachen", "bochum", "bremen")}


def _texture(kind, yy, xx, center, rng):
    """Values in [0, 1] on the pixel grid; `center` = (y, x) of the shape."""
    period = rng.uniform(5.0, 8.0)
    if kind == "plain":
        return np.full(yy.shape, 0.8)
    if kind == "stripes":
        theta = rng.uniform(0, np.pi)
        return 0.5 + 0.5 * np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period)
    if kind == "dots":
        return ((np.sin(2 * np.pi * xx / period) * np.sin(2 * np.pi * yy / period)) > 0.2) * 1.0
    if kind == "checker":
        cell = int(period * 0.7)
        return (((xx // cell) + (yy // cell)) % 2) * 1.0
    if kind == "grid":
        cell = int(period)
        return ((xx % cell < 2) | (yy % cell < 2)) * 1.0
    if kind == "rings":
        radius = np.hypot(yy - center[0], xx - center[1])
        return 0.5 + 0.5 * np.cos(2 * np.pi * radius / period)
    raise ValueError(f"unknown texture {kind!r}")


def _polygon(kind, cy, cx, r, angle):
    if kind in ("square", "rect"):
        corners = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
        sy = 0.6 if kind == "rect" else 1.0
        pts = [(x * r, y * r * sy) for x, y in corners]
    elif kind == "diamond":
        pts = [(0, -r), (0.75 * r, 0), (0, r), (-0.75 * r, 0)]
    elif kind == "triangle":
        pts = [(r * np.cos(a), r * np.sin(a)) for a in np.deg2rad([-90, 30, 150])]
    elif kind == "hexagon":
        pts = [(r * np.cos(a), r * np.sin(a)) for a in np.deg2rad(np.arange(0, 360, 60))]
    elif kind == "cross":
        w = 0.35 * r
        pts = [(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r),
               (-w, w), (-r, w), (-r, -w), (-w, -w)]
    else:
        raise ValueError(f"unknown polygon {kind!r}")
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[cx + x * c - y * s, cy + x * s + y * c] for x, y in pts],
                    dtype=np.float64)


def _shape_mask(kind, hw, cy, cx, r, rng):
    """Boolean (H, W) mask of one filled shape."""
    mask = np.zeros(hw, np.uint8)
    if kind == "circle":
        cv2.circle(mask, (int(round(cx)), int(round(cy))), int(round(r)), 1, -1)
    elif kind == "ellipse":
        axes = (int(round(0.45 * r)), int(round(r)))
        cv2.ellipse(mask, (int(round(cx)), int(round(cy))), axes, 0, 0, 360, 1, -1)
    else:
        # small rotations only, so squares stay distinct from diamonds
        angle = rng.uniform(-0.25, 0.25)
        pts = np.round(_polygon(kind, cy, cx, r, angle)).astype(np.int32)
        cv2.fillPoly(mask, [pts], 1)
    return mask.astype(bool)


def _background(rng, hw, base=None, contrast=30.0):
    """Low-saturation textured background, float (H, W, 3) BGR."""
    h, w = hw
    if base is None:
        grey = rng.uniform(70, 170)
        base = grey + rng.uniform(-15, 15, size=3)  # a tint, never a saturated colour
    coarse = rng.normal(0, 1, size=(max(h // 16, 2), max(w // 16, 2), 1)).astype(np.float32)
    blotches = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)[..., None]
    grain = rng.normal(0, 4, size=(h, w, 3))
    return np.asarray(base, np.float64) + contrast * 0.5 * blotches + grain


def _paint(image, mask, cls, yy, xx, cy, cx, rng):
    color = np.clip(np.array(cls.color_bgr, float) + rng.uniform(-20, 20, 3), 0, 255)
    tex = _texture(cls.texture, yy, xx, (cy, cx), rng)
    shade = (0.55 + 0.45 * tex)[..., None]
    image[mask] = (color * shade)[mask]


def _void_boundaries(label, width):
    """Set a void band of about `width` px along every boundary between regions."""
    if width <= 0:
        return label
    kernel = np.ones((width + 1, width + 1), np.uint8)
    # grey-level dilation/erosion = local max/min: they differ only near a boundary
    band = cv2.dilate(label, kernel) != cv2.erode(label, kernel)
    out = label.copy()
    out[band] = VOID
    return out


def render_voc(seed, index, size=(128, 96), num_classes=5, void_width=2, max_objects=3):
    """One VOC-style scene.

    Parameters
    ----------
    seed, index : int, the scene depends on these only (and the settings)
    size : (W, H)
    num_classes : int, background + (num_classes - 1) shape classes, 4..7
    void_width : int, width in px of the 255 bands along region boundaries

    Returns
    -------
    image : (H, W, 3) uint8 BGR
    label : (H, W) uint8, 0 background, 1..num_classes-1 shapes, 255 void
    """
    if not 2 <= num_classes <= MAX_VOC_CLASSES + 1:
        raise ValueError(f"num_classes must be 2..{MAX_VOC_CLASSES + 1}, not {num_classes}")
    rng = np.random.default_rng([seed, index])
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    image = _background(rng, (h, w))
    label = np.zeros((h, w), np.uint8)
    for _ in range(rng.integers(1, max_objects + 1)):
        class_index = int(rng.integers(1, num_classes))
        cls = VOC_SHAPE_CLASSES[class_index - 1]
        r = rng.uniform(0.12, 0.3) * min(h, w)
        cy, cx = rng.uniform(0.15 * h, 0.85 * h), rng.uniform(0.15 * w, 0.85 * w)
        mask = _shape_mask(cls.shape, (h, w), cy, cx, r, rng)
        _paint(image, mask, cls, yy, xx, cy, cx, rng)
        label[mask] = class_index
    image += rng.normal(0, 2, size=image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8), _void_boundaries(label, void_width)


def render_cityscapes(seed, index, size=(256, 128), max_objects=5):
    """One street-like scene with Cityscapes labelIds.

    Returns
    -------
    image : (H, W, 3) uint8 BGR
    label_ids : (H, W) uint8 Cityscapes labelIds (road 7, sidewalk 8, building 11,
        sky 23, car 26, ..., ego vehicle 1 and static 4 are ignored in training)
    """
    rng = np.random.default_rng([seed, index])
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    ids = {name: CITYSCAPES_BY_NAME[name].label_id for name in
           ("sky", "building", "sidewalk", "road", "ego vehicle")}
    sky_end = int(h * rng.uniform(0.2, 0.35))
    building_end = int(h * rng.uniform(0.45, 0.55))
    sidewalk_end = building_end + int(h * rng.uniform(0.06, 0.12))
    ego_start = int(h * rng.uniform(0.88, 0.95))
    bands = ((0, sky_end, "sky", (200, 150, 90)), (sky_end, building_end, "building", (75, 75, 80)),
             (building_end, sidewalk_end, "sidewalk", (190, 120, 200)),
             (sidewalk_end, ego_start, "road", (110, 80, 110)),
             (ego_start, h, "ego vehicle", (25, 25, 25)))
    image = np.zeros((h, w, 3))
    label = np.zeros((h, w), np.uint8)
    for top, bottom, name, color in bands:
        if bottom <= top:       # a band rounded away on a small image
            continue
        image[top:bottom] = _background(rng, (bottom - top, w), base=np.array(color, float),
                                        contrast=20.0)
        label[top:bottom] = ids[name]
    for _ in range(rng.integers(1, max_objects + 1)):
        cls = CITYSCAPES_OBJECTS[int(rng.integers(len(CITYSCAPES_OBJECTS)))]
        r = rng.uniform(0.08, 0.2) * h
        cy = rng.uniform(sky_end, ego_start - 0.5 * r)
        cx = rng.uniform(0.05 * w, 0.95 * w)
        mask = _shape_mask(cls.shape, (h, w), cy, cx, r, rng)
        mask[ego_start:] = False  # the ego vehicle occludes the scene
        _paint(image, mask, cls, yy, xx, cy, cx, rng)
        label[mask] = CITYSCAPES_BY_NAME[cls.name].label_id
    image += rng.normal(0, 2, size=image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8), label


def _split_of(index, n, val_fraction):
    n_val = max(1, int(round(n * val_fraction))) if n > 1 else n
    return "train" if index < n - n_val else "val"


def _write_palette_png(path, label, palette):
    im = Image.fromarray(label)
    im.putpalette(palette.tobytes())  # makes it a 'P' image holding the indices
    im.save(path)


MAX_SIDE = 8192    # px; the renderers hold a few float64 copies of the image


def check_settings(out, n, seed, size, val_fraction, num_classes=None, jpeg_quality=None,
                   void_width=None):
    """Raise ValueError naming the first setting no set can be written with."""
    checks = [
        (isinstance(n, int) and n >= 1, f"--n must be at least 1 scene, got {n!r}"),
        (isinstance(seed, int) and seed >= 0, f"--seed must be >= 0, got {seed!r}"),
        (all(isinstance(v, int) and 8 <= v <= MAX_SIDE for v in size),
         f"--width and --height must be 8..{MAX_SIDE} px, got {size[0]!r} x {size[1]!r}"),
        (isinstance(val_fraction, (int, float)) and 0 <= val_fraction <= 1,
         f"--val-fraction must be in [0, 1], got {val_fraction!r}"),
        (num_classes is None or isinstance(num_classes, int)
         and 2 <= num_classes <= MAX_VOC_CLASSES + 1,
         f"--num-classes must be 2..{MAX_VOC_CLASSES + 1} (background + "
         f"{MAX_VOC_CLASSES} shape classes), got {num_classes!r}"),
        (jpeg_quality is None or isinstance(jpeg_quality, int) and 0 <= jpeg_quality <= 100,
         f"--jpeg-quality must be 0..100, got {jpeg_quality!r}"),
        (void_width is None or isinstance(void_width, int) and 0 <= void_width <= min(size),
         f"--void-width must be 0..{min(size)} px, got {void_width!r}"),
        (not os.path.exists(out) or os.path.isdir(out),
         f"--out {out} exists and is not a directory"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


def write_voc(out, n, seed, size=(128, 96), num_classes=5, val_fraction=0.25, jpeg_quality=95,
              void_width=2):
    """Write a VOC2012-layout directory; returns {split: [ids]}."""
    check_settings(out, n, seed, size, val_fraction, num_classes, jpeg_quality, void_width)
    for sub in ("JPEGImages", "SegmentationClass", os.path.join("ImageSets", "Segmentation")):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    palette = voc_palette()
    splits = {"train": [], "val": []}
    for index in range(n):
        sample_id = f"2012_{index:06d}"
        image, label = render_voc(seed, index, size, num_classes, void_width)
        cv2.imwrite(os.path.join(out, "JPEGImages", sample_id + ".jpg"), image,
                    [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
        _write_palette_png(os.path.join(out, "SegmentationClass", sample_id + ".png"), label,
                           palette)
        splits[_split_of(index, n, val_fraction)].append(sample_id)
    splits["trainval"] = splits["train"] + splits["val"]
    for split, ids in splits.items():
        with open(os.path.join(out, "ImageSets", "Segmentation", split + ".txt"), "w") as f:
            f.writelines(i + "\n" for i in ids)
    names = ["background"] + [c.name for c in VOC_SHAPE_CLASSES[:num_classes - 1]]
    _write_meta(out, dict(format="voc", num_classes=num_classes, class_names=names, n=n,
                          seed=seed, size=list(size), val_fraction=val_fraction,
                          jpeg_quality=jpeg_quality, void_width=void_width))
    return splits


def cityscapes_id(split, index):
    """`<city>_<seq>_<frame>` for scene `index`, spread over the split's cities."""
    cities = CITYSCAPES_CITIES.get(split, ("city",))
    return f"{cities[index % len(cities)]}_{index // len(cities):06d}_{19 + index:06d}"


def write_cityscapes(out, n, seed, size=(256, 128), val_fraction=0.25):
    """Write a Cityscapes-layout directory (PNG images, labelId PNGs); returns {split: [ids]}."""
    check_settings(out, n, seed, size, val_fraction)
    splits = {"train": [], "val": []}
    for index in range(n):
        split = _split_of(index, n, val_fraction)
        sample_id = cityscapes_id(split, index)
        city = sample_id.rsplit("_", 2)[0]
        image, label_ids = render_cityscapes(seed, index, size)
        image_dir = os.path.join(out, "leftImg8bit", split, city)
        label_dir = os.path.join(out, "gtFine", split, city)
        os.makedirs(image_dir, exist_ok=True)
        os.makedirs(label_dir, exist_ok=True)
        cv2.imwrite(os.path.join(image_dir, sample_id + "_leftImg8bit.png"), image)
        Image.fromarray(label_ids).save(os.path.join(label_dir, sample_id + "_gtFine_labelIds.png"))
        splits[split].append(sample_id)
    _write_meta(out, dict(format="cityscapes", num_classes=19, n=n, seed=seed, size=list(size),
                          val_fraction=val_fraction))
    return splits


def _write_meta(out, meta):
    meta = dict(meta, generator="caffe_attacks.datasets.synthetic",
                generator_version=GENERATOR_VERSION)
    with open(os.path.join(out, "synthetic.json"), "w") as f:
        json.dump(meta, f, indent=1)


def _or(value, default):
    return default if value is None else value     # 0 is a value (and an error), not "unset"


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m caffe_attacks.datasets.synthetic",
        description="Write a synthetic segmentation set in VOC or Cityscapes layout.")
    parser.add_argument("--format", choices=("voc", "cityscapes"), required=True)
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--n", type=int, default=100, help="number of scenes (all splits)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--width", type=int, help="image width (voc 128, cityscapes 256)")
    parser.add_argument("--height", type=int, help="image height (voc 96, cityscapes 128)")
    parser.add_argument("--val-fraction", type=float, default=0.25,
                        help="last fraction of the scenes that form the val split")
    parser.add_argument("--num-classes", type=int, default=5,
                        help=f"voc only: background + shape classes, 2..{MAX_VOC_CLASSES + 1}")
    parser.add_argument("--jpeg-quality", type=int, default=95, help="voc only")
    parser.add_argument("--void-width", type=int, default=2,
                        help="voc only: width of the 255 boundary bands in px")
    args = parser.parse_args(argv)
    try:
        if args.format == "voc":
            size = (_or(args.width, 128), _or(args.height, 96))
            splits = write_voc(args.out, args.n, args.seed, size, args.num_classes,
                               args.val_fraction, args.jpeg_quality, args.void_width)
        else:
            size = (_or(args.width, 256), _or(args.height, 128))
            splits = write_cityscapes(args.out, args.n, args.seed, size, args.val_fraction)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; run the same command again (scenes depend only on --seed)",
              file=sys.stderr)
        return 130
    print(f"wrote {args.format} set to {args.out}: "
          f"{len(splits['train'])} train, {len(splits['val'])} val, {size[0]}x{size[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
