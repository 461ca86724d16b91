"""Cityscapes reader (the gtFine download layout).

    <root>/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    <root>/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

labelIds are mapped to the 19 trainIds (everything else -> 255) with the table
in labels.py. As in the paper (Table A3), images are brought to 1024x512 by
default: image bilinear (cv2.INTER_LINEAR), labels nearest (cv2.INTER_NEAREST,
so no class is invented); `size=None` keeps the native 2048x1024.
"""
import os

import cv2
import numpy as np

from .common import DatasetError, Sample, SegmentationDataset, read_image_bgr, read_label_png
from .labels import (CITYSCAPES_CLASS_NAMES, CITYSCAPES_MAX_LABEL_ID, CITYSCAPES_NUM_CLASSES,
                     LABEL_ID_TO_TRAIN_ID, cityscapes_palette)

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"
PAPER_SIZE = (1024, 512)  # (W, H) used for every Cityscapes model in the paper


def label_ids_to_train_ids(label_ids, path="<array>"):
    """Map a labelId map to trainIds.

    Parameters
    ----------
    label_ids : (H, W) uint8, Cityscapes labelIds 0..33
    path : str, named in the error for values outside the table

    Returns
    -------
    (H, W) uint8 trainIds, 255 = void
    """
    train_ids = LABEL_ID_TO_TRAIN_ID[label_ids]
    if (train_ids < 0).any():
        bad = np.unique(label_ids[train_ids < 0])
        shown = ", ".join(str(v) for v in bad[:8])
        raise DatasetError(path, f"labelId value(s) {shown} outside the Cityscapes table "
                                 f"(0..{CITYSCAPES_MAX_LABEL_ID})")
    return train_ids.astype(np.uint8)


def find_cityscapes_root(root):
    if os.path.isdir(os.path.join(root, "leftImg8bit")):
        return root
    raise DatasetError(root, "not a Cityscapes directory (no leftImg8bit/ under it)")


def _ids_in(split_dir, suffix):
    """{id: path} of files ending in `suffix` in the city folders of split_dir."""
    found = {}
    for city in sorted(os.listdir(split_dir)):
        city_dir = os.path.join(split_dir, city)
        if not os.path.isdir(city_dir):
            continue
        for name in os.listdir(city_dir):
            if name.endswith(suffix):
                found[name[:-len(suffix)]] = os.path.join(city_dir, name)
    return found


class CityscapesSegmentation(SegmentationDataset):
    """Cityscapes fine annotations as trainIds.

    Parameters
    ----------
    root : str, the directory holding leftImg8bit/ and gtFine/
    split : "train" | "val" | "test"
    size : (W, H) or None; default (1024, 512) as in the paper; None = native
    image_dtype : "uint8" (default) or "float32". uint8 rounds the bilinear
        resize to integers; "float32" keeps the fractions, matching the authors'
        demo, which resized the float image.
    skip_bad : bool, see SegmentationDataset
    """

    def __init__(self, root, split="val", size=PAPER_SIZE, image_dtype="uint8",
                 skip_bad=False):
        super().__init__(skip_bad=skip_bad)
        if image_dtype not in ("uint8", "float32"):
            raise ValueError(f"image_dtype must be 'uint8' or 'float32', not {image_dtype!r}")
        self.root = find_cityscapes_root(root)
        self.split = split
        self.size = tuple(size) if size is not None else None
        self.image_dtype = image_dtype
        self.num_classes = CITYSCAPES_NUM_CLASSES
        self.class_names = CITYSCAPES_CLASS_NAMES
        self.palette = cityscapes_palette()
        image_dir = os.path.join(self.root, "leftImg8bit", split)
        label_dir = os.path.join(self.root, "gtFine", split)
        for path in (image_dir, label_dir):
            if not os.path.isdir(path):
                raise DatasetError(path, f"missing split directory for split {split!r}")
        images = _ids_in(image_dir, IMAGE_SUFFIX)
        labels = _ids_in(label_dir, LABEL_SUFFIX)
        self._paths = {}
        for sample_id in sorted(set(images) | set(labels)):
            try:
                if sample_id not in labels:
                    raise DatasetError(self._expected(label_dir, sample_id, LABEL_SUFFIX),
                                       f"missing label for image {images[sample_id]}")
                if sample_id not in images:
                    raise DatasetError(self._expected(image_dir, sample_id, IMAGE_SUFFIX),
                                       f"missing image for label {labels[sample_id]}")
            except DatasetError as err:
                if not skip_bad:
                    raise
                self._skip(sample_id, str(err))
                continue
            self._paths[sample_id] = (images[sample_id], labels[sample_id])
            self.ids.append(sample_id)

    @staticmethod
    def _expected(split_dir, sample_id, suffix):
        city = sample_id.rsplit("_", 2)[0]
        return os.path.join(split_dir, city, sample_id + suffix)

    def image_path(self, sample_id):
        return self._paths[sample_id][0]

    def label_path(self, sample_id):
        return self._paths[sample_id][1]

    def _load(self, sample_id):
        image_path, label_path = self._paths[sample_id]
        image = read_image_bgr(image_path)
        label = label_ids_to_train_ids(read_label_png(label_path), label_path)
        self._check_pair(image_path, label_path, image, label)
        if self.image_dtype == "float32":
            image = image.astype(np.float32)
        if self.size is not None and (image.shape[1], image.shape[0]) != self.size:
            image = cv2.resize(image, self.size, interpolation=cv2.INTER_LINEAR)
            label = cv2.resize(label, self.size, interpolation=cv2.INTER_NEAREST)
        return Sample(sample_id, image, label)
