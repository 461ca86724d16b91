"""Segmentation datasets in their real on-disk formats.

`open_dataset(kind, root, split="val", **opts)` returns a reader with
`ids`, `num_classes`, `class_names`, `palette` ((256, 3) uint8 RGB),
`len()`, `load(id) -> Sample(id, image (H, W, 3) uint8 BGR, label (H, W)
uint8, 255 = void)`, iteration over Samples, and `skipped` (list of
(id, message) for samples dropped under `skip_bad=True`).
"""
import json
import os

from .cityscapes import CityscapesSegmentation
from .common import DatasetError, Sample
from .voc import VOCSegmentation

DATASET_KINDS = ("voc", "cityscapes", "synthetic")   # the `kind` of open_dataset
SYNTHETIC_META = "synthetic.json"

__all__ = ["open_dataset", "Sample", "DatasetError", "DATASET_KINDS", "VOCSegmentation",
           "CityscapesSegmentation"]


def detect_format(root):
    """'cityscapes' if root holds leftImg8bit/, else 'voc'."""
    return "cityscapes" if os.path.isdir(os.path.join(root, "leftImg8bit")) else "voc"


def _open_synthetic(root, split, fmt=None, **opts):
    meta_path = os.path.join(root, SYNTHETIC_META)
    meta = {}
    if os.path.isfile(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
    fmt = fmt or meta.get("format") or detect_format(root)
    if fmt == "voc":
        opts.setdefault("num_classes", meta.get("num_classes", 21))
        opts.setdefault("class_names", meta.get("class_names"))
        return VOCSegmentation(root, split, **opts)
    if fmt == "cityscapes":
        # Synthetic scenes keep their native size unless a size is asked for;
        # the paper's 1024x512 applies to the real Cityscapes images.
        opts.setdefault("size", None)
        return CityscapesSegmentation(root, split, **opts)
    raise ValueError(f"unknown synthetic format {fmt!r}; expected 'voc' or 'cityscapes'")


def open_dataset(kind, root, split="val", **opts):
    """Open a dataset directory.

    Parameters
    ----------
    kind : "voc" | "cityscapes" | "synthetic"
        "synthetic" is a directory written by `python -m
        caffe_attacks.datasets.synthetic`, in VOC or Cityscapes layout
        (detected, or given as fmt="voc" | "cityscapes").
    root : str, dataset directory (VOCdevkit, VOC2012, or the Cityscapes root)
    split : str, "val" by default
    **opts : skip_bad (all); num_classes, class_names (voc); size,
        image_dtype (cityscapes); fmt (synthetic)

    Returns
    -------
    VOCSegmentation or CityscapesSegmentation
    """
    root = os.fspath(root)
    if kind == "voc":
        return VOCSegmentation(root, split, **opts)
    if kind == "cityscapes":
        return CityscapesSegmentation(root, split, **opts)
    if kind == "synthetic":
        return _open_synthetic(root, split, **opts)
    raise ValueError(f"unknown dataset kind {kind!r}; expected one of {DATASET_KINDS}")
