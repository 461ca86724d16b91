"""Pieces shared by the dataset readers: the sample type, the error type,
checked image/label file readers and the reader base class."""
import logging
import os
from collections import namedtuple

import cv2
import numpy as np
from PIL import Image

from .labels import VOID

log = logging.getLogger(__name__)

Sample = namedtuple("Sample", ["id", "image", "label"])
Sample.__doc__ = """One dataset item.

id : str
image : (H, W, 3) uint8, BGR (as cv2.imread); float32 only if a reader was
    asked for float images
label : (H, W) uint8, class indices with 255 = void
"""

_JPEG_END = b"\xff\xd9"
_PNG_END = b"IEND\xaeB`\x82"


class DatasetError(ValueError):
    """A dataset file is missing, unreadable or holds values outside the class set.

    The message always names the offending file (or directory) and the reason.
    """

    def __init__(self, path, reason):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def require_file(path, what):
    if not os.path.isfile(path):
        raise DatasetError(path, f"missing {what}")


def _check_complete(path, data):
    # Some libjpeg builds decode a truncated JPEG into a grey-filled image with
    # only a warning on stderr, so truncation is caught from the bytes. The
    # end-of-image marker cannot occur inside entropy-coded data (0xFF bytes are
    # stuffed there), so its absence near the end means the file was cut.
    if data[:2] == b"\xff\xd8":
        if _JPEG_END not in data[-1024:]:
            raise DatasetError(path, "truncated JPEG (no end-of-image marker)")
    elif data[:8] == b"\x89PNG\r\n\x1a\n":
        if _PNG_END not in data[-64:]:
            raise DatasetError(path, "truncated PNG (no IEND chunk)")


def read_image_bgr(path):
    """Read a colour image exactly as cv2.imread(path, cv2.IMREAD_COLOR) would.

    Returns
    -------
    image : (H, W, 3) uint8, BGR
    """
    require_file(path, "image")
    with open(path, "rb") as f:
        data = f.read()
    if not data:
        raise DatasetError(path, "empty image file")
    _check_complete(path, data)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetError(path, "unreadable image (cv2 could not decode it)")
    return image


def read_label_png(path):
    """Read the stored indices of a label PNG (palette 'P' or greyscale 'L').

    Palette PNGs are decoded to their indices, never to colours, so the VOC
    boundary index 255 survives.

    Returns
    -------
    label : (H, W) uint8
    """
    require_file(path, "label")
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                raise DatasetError(path, f"label PNG has mode {im.mode!r}; expected "
                                         "palette ('P') or greyscale ('L') indices")
            im.load()
            label = np.array(im, dtype=np.uint8)
    except DatasetError:
        raise
    except (OSError, SyntaxError, ValueError) as err:
        # PIL raises OSError for truncated/corrupt files, SyntaxError for bad chunks
        raise DatasetError(path, f"unreadable label PNG ({err})") from err
    return label


def check_label_values(path, label, num_classes):
    """Raise DatasetError if `label` holds a value outside 0..num_classes-1 and 255."""
    values = np.unique(label)
    bad = values[(values >= num_classes) & (values != VOID)]
    if bad.size:
        shown = ", ".join(str(v) for v in bad[:8])
        raise DatasetError(path, f"label value(s) {shown} outside the class set "
                                 f"0..{num_classes - 1} and {VOID}")


class SegmentationDataset:
    """Base class: a list of ids and a per-id loader.

    Subclasses set `ids`, `num_classes`, `palette`, `class_names` and implement
    `_load(id) -> Sample`. With `skip_bad=True`, iteration turns a DatasetError
    for one sample into a logged warning and an entry in `skipped`
    (a list of (id, message)); `load` always raises.
    """

    def __init__(self, skip_bad=False):
        self.skip_bad = skip_bad
        self.skipped = []
        self.ids = []

    def __len__(self):
        return len(self.ids)

    def load(self, sample_id):
        """Load one sample; raises DatasetError naming the file on bad input."""
        return self._load(sample_id)

    def try_load(self, sample_id):
        """Like load, but with skip_bad a bad sample is recorded and None returned."""
        try:
            return self._load(sample_id)
        except DatasetError as err:
            if not self.skip_bad:
                raise
            self._skip(sample_id, str(err))
            return None

    def _skip(self, sample_id, message):
        log.warning("skipping %s: %s", sample_id, message)
        self.skipped.append((sample_id, message))

    def __iter__(self):
        for sample_id in list(self.ids):
            sample = self.try_load(sample_id)
            if sample is not None:
                yield sample

    def _check_pair(self, image_path, label_path, image, label):
        if image.shape[:2] != label.shape:
            raise DatasetError(label_path, f"label size {label.shape[1]}x{label.shape[0]} "
                                           f"differs from image {image_path} size "
                                           f"{image.shape[1]}x{image.shape[0]}")
