"""Label tables: the Cityscapes class table and the VOC palette.

The Cityscapes table is written out once, as data; every lookup used by the
readers is derived from it below. The values are those of the official
``cityscapesscripts`` table (``tests/test_datasets.py`` compares them when the
package is installed).
"""
from collections import namedtuple

import numpy as np

VOID = 255

CityscapesLabel = namedtuple("CityscapesLabel", [
    "name",       # class name as in the Cityscapes documentation
    "label_id",   # value stored in *_gtFine_labelIds.png (-1: license plate, never stored)
    "train_id",   # 0..18 for the 19 evaluated classes, VOID (255) for everything else
    "category",   # coarse category (flat, construction, object, ...)
    "color",      # (R, G, B) used by the official visualisations
])

CITYSCAPES_LABELS = [
    #                name                  id  train  category        color
    CityscapesLabel("unlabeled",             0, VOID, "void",         (0, 0, 0)),
    CityscapesLabel("ego vehicle",           1, VOID, "void",         (0, 0, 0)),
    CityscapesLabel("rectification border",  2, VOID, "void",         (0, 0, 0)),
    CityscapesLabel("out of roi",            3, VOID, "void",         (0, 0, 0)),
    CityscapesLabel("static",                4, VOID, "void",         (0, 0, 0)),
    CityscapesLabel("dynamic",               5, VOID, "void",         (111, 74, 0)),
    CityscapesLabel("ground",                6, VOID, "void",         (81, 0, 81)),
    CityscapesLabel("road",                  7,    0, "flat",         (128, 64, 128)),
    CityscapesLabel("sidewalk",              8,    1, "flat",         (244, 35, 232)),
    CityscapesLabel("parking",               9, VOID, "flat",         (250, 170, 160)),
    CityscapesLabel("rail track",           10, VOID, "flat",         (230, 150, 140)),
    CityscapesLabel("building",             11,    2, "construction", (70, 70, 70)),
    CityscapesLabel("wall",                 12,    3, "construction", (102, 102, 156)),
    CityscapesLabel("fence",                13,    4, "construction", (190, 153, 153)),
    CityscapesLabel("guard rail",           14, VOID, "construction", (180, 165, 180)),
    CityscapesLabel("bridge",               15, VOID, "construction", (150, 100, 100)),
    CityscapesLabel("tunnel",               16, VOID, "construction", (150, 120, 90)),
    CityscapesLabel("pole",                 17,    5, "object",       (153, 153, 153)),
    CityscapesLabel("polegroup",            18, VOID, "object",       (153, 153, 153)),
    CityscapesLabel("traffic light",        19,    6, "object",       (250, 170, 30)),
    CityscapesLabel("traffic sign",         20,    7, "object",       (220, 220, 0)),
    CityscapesLabel("vegetation",           21,    8, "nature",       (107, 142, 35)),
    CityscapesLabel("terrain",              22,    9, "nature",       (152, 251, 152)),
    CityscapesLabel("sky",                  23,   10, "sky",          (70, 130, 180)),
    CityscapesLabel("person",               24,   11, "human",        (220, 20, 60)),
    CityscapesLabel("rider",                25,   12, "human",        (255, 0, 0)),
    CityscapesLabel("car",                  26,   13, "vehicle",      (0, 0, 142)),
    CityscapesLabel("truck",                27,   14, "vehicle",      (0, 0, 70)),
    CityscapesLabel("bus",                  28,   15, "vehicle",      (0, 60, 100)),
    CityscapesLabel("caravan",              29, VOID, "vehicle",      (0, 0, 90)),
    CityscapesLabel("trailer",              30, VOID, "vehicle",      (0, 0, 110)),
    CityscapesLabel("train",                31,   16, "vehicle",      (0, 80, 100)),
    CityscapesLabel("motorcycle",           32,   17, "vehicle",      (0, 0, 230)),
    CityscapesLabel("bicycle",              33,   18, "vehicle",      (119, 11, 32)),
    CityscapesLabel("license plate",        -1, VOID, "vehicle",      (0, 0, 142)),
]

CITYSCAPES_NUM_CLASSES = 19
CITYSCAPES_MAX_LABEL_ID = max(label.label_id for label in CITYSCAPES_LABELS)

# Derived lookups, built once.
CITYSCAPES_BY_NAME = {label.name: label for label in CITYSCAPES_LABELS}
CITYSCAPES_BY_LABEL_ID = {label.label_id: label for label in CITYSCAPES_LABELS}
CITYSCAPES_BY_TRAIN_ID = {label.train_id: label for label in CITYSCAPES_LABELS
                          if label.train_id != VOID}
CITYSCAPES_CLASS_NAMES = tuple(CITYSCAPES_BY_TRAIN_ID[t].name
                               for t in range(CITYSCAPES_NUM_CLASSES))


def _label_id_to_train_id_lut():
    # 256 entries so any uint8 can index it; ids above the table stay marked
    # invalid (-1) so the reader can report them instead of mapping them to void.
    lut = np.full(256, -1, dtype=np.int16)
    for label in CITYSCAPES_LABELS:
        if label.label_id >= 0:
            lut[label.label_id] = label.train_id
    return lut


LABEL_ID_TO_TRAIN_ID = _label_id_to_train_id_lut()
LABEL_ID_TO_TRAIN_ID.setflags(write=False)


def cityscapes_palette():
    """Colours indexed by trainId.

    Returns
    -------
    palette : (256, 3) uint8, RGB; entries 19..254 and 255 (void) are black.
    """
    palette = np.zeros((256, 3), dtype=np.uint8)
    for train_id, label in CITYSCAPES_BY_TRAIN_ID.items():
        palette[train_id] = label.color
    return palette


VOC_CLASS_NAMES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car",
    "cat", "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
    "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
VOC_NUM_CLASSES = len(VOC_CLASS_NAMES)


def voc_palette():
    """The standard VOC colour map (bits of the index spread over R, G, B).

    Returns
    -------
    palette : (256, 3) uint8, RGB; index 255 (void) is (224, 224, 192).
    """
    palette = np.zeros((256, 3), dtype=np.uint8)
    for index in range(256):
        rgb = [0, 0, 0]
        code = index
        for bit in range(8):
            for channel in range(3):
                # channel c takes bit (3*k + c) of the index, placed from the MSB down
                rgb[channel] |= ((code >> channel) & 1) << (7 - bit)
            code >>= 3
        palette[index] = rgb
    return palette
