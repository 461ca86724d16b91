"""Pascal VOC 2012 segmentation reader (VOCdevkit layout).

    <root>/JPEGImages/<id>.jpg
    <root>/SegmentationClass/<id>.png     palette PNG: indices 0..20, 255 = void
    <root>/ImageSets/Segmentation/<split>.txt

`root` may be the VOCdevkit directory, its VOC2012 directory, or any
directory laid out like VOC2012 (the synthetic generator writes one).
"""
import os

from .common import (DatasetError, Sample, SegmentationDataset, check_label_values,
                     read_image_bgr, read_label_png)
from .labels import VOC_CLASS_NAMES, VOC_NUM_CLASSES, voc_palette


def find_voc_root(root):
    """The directory that holds JPEGImages/, given VOCdevkit, VOC2012 or itself."""
    for candidate in (root, os.path.join(root, "VOC2012"),
                      os.path.join(root, "VOCdevkit", "VOC2012")):
        if os.path.isdir(os.path.join(candidate, "ImageSets", "Segmentation")):
            return candidate
    raise DatasetError(root, "not a VOC directory (no ImageSets/Segmentation under it, "
                             "its VOC2012/ or VOCdevkit/VOC2012/)")


def read_split(path):
    """Ids listed one per line in a split file, blank lines ignored."""
    if not os.path.isfile(path):
        raise DatasetError(path, "missing split file")
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


class VOCSegmentation(SegmentationDataset):
    """VOC-layout segmentation set.

    Parameters
    ----------
    root : str
    split : str, name of the ImageSets/Segmentation/<split>.txt file
    num_classes : int, 21 for VOC; labels outside 0..num_classes-1 and 255 are errors
    class_names : sequence of str or None
    skip_bad : bool, see SegmentationDataset
    """

    def __init__(self, root, split="val", num_classes=VOC_NUM_CLASSES, class_names=None,
                 skip_bad=False):
        super().__init__(skip_bad=skip_bad)
        self.root = find_voc_root(root)
        self.split = split
        self.num_classes = num_classes
        self.class_names = tuple(class_names) if class_names else (
            VOC_CLASS_NAMES if num_classes == VOC_NUM_CLASSES else
            tuple(str(c) for c in range(num_classes)))
        self.palette = voc_palette()
        split_file = os.path.join(self.root, "ImageSets", "Segmentation", split + ".txt")
        # Missing files are found up front so a long run fails (or skips) before it starts.
        for sample_id in read_split(split_file):
            try:
                for path, what in ((self.image_path(sample_id), "image"),
                                   (self.label_path(sample_id), "label")):
                    if not os.path.isfile(path):
                        raise DatasetError(path, f"missing {what} for id {sample_id!r} "
                                                 f"listed in {split_file}")
            except DatasetError as err:
                if not skip_bad:
                    raise
                self._skip(sample_id, str(err))
                continue
            self.ids.append(sample_id)

    def image_path(self, sample_id):
        return os.path.join(self.root, "JPEGImages", sample_id + ".jpg")

    def label_path(self, sample_id):
        return os.path.join(self.root, "SegmentationClass", sample_id + ".png")

    def _load(self, sample_id):
        image_path, label_path = self.image_path(sample_id), self.label_path(sample_id)
        image = read_image_bgr(image_path)
        label = read_label_png(label_path)
        self._check_pair(image_path, label_path, image, label)
        check_label_values(label_path, label, self.num_classes)
        return Sample(sample_id, image, label)
