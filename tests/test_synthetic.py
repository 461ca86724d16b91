"""Synthetic generator: real layouts, exact round trips, determinism, learnable scenes."""
import filecmp
import json
import os
import re

import cv2
import numpy as np
import pytest

from caffe_attacks.datasets import open_dataset
from caffe_attacks.datasets.labels import LABEL_ID_TO_TRAIN_ID
from caffe_attacks.datasets.synthetic import (cityscapes_id, main, render_cityscapes, render_voc,
                                              write_cityscapes, write_voc)


@pytest.fixture(scope="module")
def voc_set(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("synth_voc"))
    main(["--format", "voc", "--out", out, "--n", "16", "--seed", "7"])
    return out


@pytest.fixture(scope="module")
def cs_set(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("synth_cs"))
    main(["--format", "cityscapes", "--out", out, "--n", "8", "--seed", "7",
          "--width", "96", "--height", "48"])
    return out


def test_voc_layout_and_splits(voc_set):
    seg = os.path.join(voc_set, "ImageSets", "Segmentation")
    splits = {s: open(os.path.join(seg, s + ".txt")).read().split()
              for s in ("train", "val", "trainval")}
    assert len(splits["train"]) == 12 and len(splits["val"]) == 4
    assert splits["trainval"] == splits["train"] + splits["val"]
    for sample_id in splits["trainval"]:
        assert os.path.isfile(os.path.join(voc_set, "JPEGImages", sample_id + ".jpg"))
        assert os.path.isfile(os.path.join(voc_set, "SegmentationClass", sample_id + ".png"))
    meta = json.load(open(os.path.join(voc_set, "synthetic.json")))
    assert meta["format"] == "voc" and meta["num_classes"] == 5 and len(meta["class_names"]) == 5


def test_voc_round_trip(voc_set):
    ds = open_dataset("synthetic", voc_set, split="trainval")
    assert ds.num_classes == 5 and len(ds) == 16
    errors = []
    for index, sample in enumerate(ds):
        image, label = render_voc(7, index)
        np.testing.assert_array_equal(sample.label, label)  # PNG: exact
        # JPEG: exactly what the codec makes of the rendered scene at quality 95 ...
        ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
        np.testing.assert_array_equal(sample.image, cv2.imdecode(encoded, cv2.IMREAD_COLOR))
        # ... which is close to the scene itself
        diff = sample.image.astype(np.float64) - image
        errors.append(np.abs(diff).mean())
        psnr = 10 * np.log10(255.0 ** 2 / np.mean(diff ** 2))
        assert psnr > 26, f"{sample.id}: JPEG round trip PSNR {psnr:.1f} dB"
    assert np.mean(errors) < 7.0


def test_cityscapes_layout_and_round_trip(cs_set):
    names = []
    for root, _, files in os.walk(os.path.join(cs_set, "leftImg8bit")):
        names += [os.path.relpath(os.path.join(root, f), cs_set) for f in files]
    pattern = re.compile(r"leftImg8bit/(train|val)/([a-z]+)/\2_\d{6}_\d{6}_leftImg8bit\.png$")
    assert len(names) == 8 and all(pattern.match(n) for n in names)
    for split, count in (("train", 6), ("val", 2)):
        ds = open_dataset("synthetic", cs_set, split=split)
        assert len(ds) == count and ds.num_classes == 19
        for sample in ds:
            index = next(i for i in range(8) if cityscapes_id(split, i) == sample.id)
            image, label_ids = render_cityscapes(7, index, (96, 48))
            np.testing.assert_array_equal(sample.image, image)  # PNG: exact
            np.testing.assert_array_equal(sample.label, LABEL_ID_TO_TRAIN_ID[label_ids])
            assert 255 in sample.label and 0 in sample.label  # ego vehicle (void) and road


def test_cityscapes_kind_resizes_synthetic_to_the_paper_size(cs_set):
    ds = open_dataset("cityscapes", cs_set)
    assert ds.load(ds.ids[0]).image.shape == (512, 1024, 3)


def test_deterministic_for_a_seed(tmp_path):
    a, b, c = (str(tmp_path / name) for name in "abc")
    write_voc(a, n=4, seed=11)
    write_voc(b, n=4, seed=11)
    write_voc(c, n=4, seed=12)
    for sub in ("JPEGImages", "SegmentationClass"):
        files = sorted(os.listdir(os.path.join(a, sub)))
        _, mismatch, errors = filecmp.cmpfiles(os.path.join(a, sub), os.path.join(b, sub),
                                               files, shallow=False)
        assert not mismatch and not errors
        _, mismatch, _ = filecmp.cmpfiles(os.path.join(a, sub), os.path.join(c, sub), files,
                                          shallow=False)
        assert mismatch == files
    # a scene depends on (seed, index) only, not on how many are written
    np.testing.assert_array_equal(render_voc(11, 3)[1], render_voc(11, 3)[1])
    write_cityscapes(str(tmp_path / "d"), n=2, seed=11, size=(32, 16))
    write_cityscapes(str(tmp_path / "e"), n=2, seed=11, size=(32, 16))
    assert filecmp.cmp(
        str(tmp_path / "d/gtFine/val/lindau/lindau_000000_000020_gtFine_labelIds.png"),
        str(tmp_path / "e/gtFine/val/lindau/lindau_000000_000020_gtFine_labelIds.png"),
        shallow=False)


def test_void_bands_separate_every_pair_of_regions():
    for index in range(10):
        _, label = render_voc(5, index)
        for a, b in ((label[1:], label[:-1]), (label[:, 1:], label[:, :-1])):
            touching = (a != b) & (a != 255) & (b != 255)
            assert not touching.any(), "two classes touch without a void band"
        objects = (label != 0) & (label != 255)
        if objects.any():
            assert (label == 255).any()
    _, no_void = render_voc(5, 0, void_width=0)
    assert 255 not in no_void


def test_scene_statistics():
    counts = np.zeros(256, np.int64)
    sizes = []
    for index in range(40):
        image, label = render_voc(1, index)
        assert image.shape == (96, 128, 3) and image.dtype == np.uint8
        counts += np.bincount(label.ravel(), minlength=256)
        sizes.append(((label != 0) & (label != 255)).mean())
    for cls in range(5):
        assert counts[cls] > 0, f"class {cls} never drawn"
    assert set(np.nonzero(counts)[0]) <= {0, 1, 2, 3, 4, 255}
    assert 0.02 < np.mean(sizes) < 0.5 and np.std(sizes) > 0.02  # varied object sizes


def test_classes_are_separable_by_local_colour():
    """A nearest-mean classifier on 5x5-blurred colour already labels most pixels:
    the scenes are learnable by a small conv net."""
    def features(image):
        return cv2.blur(image.astype(np.float32), (5, 5)).reshape(-1, 3)

    sums, counts = np.zeros((5, 3)), np.zeros(5)
    for index in range(30):
        image, label = render_voc(2, index)
        f, y = features(image), label.ravel()
        for cls in range(5):
            sums[cls] += f[y == cls].sum(0)
            counts[cls] += (y == cls).sum()
    means = sums / counts[:, None]
    confusion = np.zeros((5, 5), np.int64)
    for index in range(30, 50):
        image, label = render_voc(2, index)
        f, y = features(image), label.ravel()
        keep = y != 255
        pred = np.argmin(((f[keep, None, :] - means[None]) ** 2).sum(-1), axis=1)
        np.add.at(confusion, (y[keep], pred), 1)
    tp = np.diag(confusion)
    recall = tp / confusion.sum(1)
    iou = tp / (confusion.sum(0) + confusion.sum(1) - tp)
    assert recall.min() > 0.85 and iou.mean() > 0.75, (recall, iou)
