"""Dataset readers: palette indices, label tables, resizing, and every bad-input case."""
import os
import shutil

import cv2
import numpy as np
import pytest
from PIL import Image

from caffe_attacks.datasets import DatasetError, open_dataset
from caffe_attacks.datasets.cityscapes import label_ids_to_train_ids
from caffe_attacks.datasets.common import read_label_png
from caffe_attacks.datasets.labels import (CITYSCAPES_LABELS, LABEL_ID_TO_TRAIN_ID,
                                           cityscapes_palette, voc_palette)
from caffe_attacks.datasets.synthetic import write_cityscapes, write_voc


@pytest.fixture(scope="module")
def voc_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("voc")
    write_voc(str(out), n=6, seed=3)
    return str(out)


@pytest.fixture(scope="module")
def cs_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cs")
    write_cityscapes(str(out), n=6, seed=3, size=(64, 32))
    return str(out)


@pytest.fixture
def voc_copy(voc_dir, tmp_path):
    return shutil.copytree(voc_dir, str(tmp_path / "VOCdevkit" / "VOC2012"))


@pytest.fixture
def cs_copy(cs_dir, tmp_path):
    return shutil.copytree(cs_dir, str(tmp_path / "cityscapes"))


# -- palettes and label tables ---------------------------------------------

def test_voc_palette_known_colours():
    # VOClabelcolormap.m: background black, aeroplane (128,0,0), person (192,128,128),
    # tvmonitor (0,64,128), the void/boundary index 255 (224,224,192)
    p = voc_palette()
    assert p.shape == (256, 3) and p.dtype == np.uint8
    for index, rgb in ((0, (0, 0, 0)), (1, (128, 0, 0)), (15, (192, 128, 128)),
                       (20, (0, 64, 128)), (255, (224, 224, 192))):
        assert tuple(p[index]) == rgb
    assert len({tuple(c) for c in p}) == 256  # a bijection: every index its own colour


def test_palette_png_decodes_to_indices_including_void(tmp_path):
    label = np.array([[0, 0, 15, 255], [3, 255, 20, 1]], np.uint8)
    path = str(tmp_path / "l.png")
    im = Image.fromarray(label)
    # scrambled palette: decoding colours instead of indices could not give `label` back
    im.putpalette(np.random.default_rng(0).permutation(voc_palette()).tobytes())
    im.save(path)
    assert Image.open(path).mode == "P"
    out = read_label_png(path)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, label)


def test_cityscapes_train_ids_match_the_zoo_table():
    # cityscapesScripts helpers/labels.py: trainId k <- labelId
    expected = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]
    for train_id, label_id in enumerate(expected):
        assert LABEL_ID_TO_TRAIN_ID[label_id] == train_id
    ignored = set(range(34)) - set(expected)
    assert all(LABEL_ID_TO_TRAIN_ID[i] == 255 for i in ignored)
    assert np.all(LABEL_ID_TO_TRAIN_ID[34:] == -1)


def test_cityscapes_table_equals_cityscapesscripts():
    cs = pytest.importorskip("cityscapesscripts.helpers.labels")
    theirs = {label.id: label for label in cs.labels}
    ours = {label.label_id: label for label in CITYSCAPES_LABELS}
    assert set(theirs) == set(ours)
    for label_id, label in theirs.items():
        train_id = label.trainId if label.trainId not in (-1, 255) else 255
        assert ours[label_id].train_id == train_id, label.name
        assert ours[label_id].name == label.name
        assert tuple(ours[label_id].color) == tuple(label.color)
        assert ours[label_id].category == label.category
    # the uint8 lookup the reader uses, pixel by pixel
    ids = np.arange(34, dtype=np.uint8).reshape(2, 17)
    mapped = label_ids_to_train_ids(ids)
    for label_id, train_id in zip(ids.ravel(), mapped.ravel()):
        t = theirs[int(label_id)].trainId
        assert train_id == (t if t not in (-1, 255) else 255)
    palette = cityscapes_palette()
    for label in cs.labels:
        if label.trainId not in (-1, 255):
            assert tuple(palette[label.trainId]) == tuple(label.color)


# -- VOC reader ---------------------------------------------------------------

@pytest.mark.parametrize("level", ["VOCdevkit", "VOCdevkit/VOC2012"])
def test_voc_reader_accepts_devkit_or_voc2012(voc_copy, level):
    devkit = os.path.dirname(os.path.dirname(voc_copy))
    ds = open_dataset("voc", os.path.join(devkit, level), split="val")
    assert ds.num_classes == 21 and len(ds.class_names) == 21
    with open(os.path.join(voc_copy, "ImageSets", "Segmentation", "val.txt")) as f:
        assert ds.ids == f.read().split()
    sample = ds.load(ds.ids[0])
    assert sample.image.dtype == np.uint8 and sample.image.shape == (96, 128, 3)
    np.testing.assert_array_equal(sample.image, cv2.imread(ds.image_path(ds.ids[0])))
    assert sample.label.shape == (96, 128)
    assert [s.id for s in ds] == ds.ids


# -- Cityscapes reader --------------------------------------------------------

def test_cityscapes_reader_default_resizes_like_the_paper(cs_dir):
    native = open_dataset("cityscapes", cs_dir, size=None)
    paper = open_dataset("cityscapes", cs_dir)
    assert paper.ids == native.ids and paper.num_classes == 19
    for sample_id in paper.ids:
        small, big = native.load(sample_id), paper.load(sample_id)
        assert big.image.shape == (512, 1024, 3) and big.label.shape == (512, 1024)
        assert big.image.dtype == np.uint8
        # labels nearest: never a class that was not there ...
        assert set(np.unique(big.label)) <= set(np.unique(small.label))
        # ... and each 16x16 block is a copy of one native pixel
        np.testing.assert_array_equal(big.label[::16, ::16], small.label)


def test_cityscapes_downscale_is_bilinear_and_labels_nearest(cs_dir, tmp_path):
    """Native 64x32 read at 32x16: half-pixel bilinear by 2 = mean of each 2x2 block."""
    native = open_dataset("cityscapes", cs_dir, size=None)
    half = open_dataset("cityscapes", cs_dir, size=(32, 16), image_dtype="float32")
    for sample_id in native.ids:
        small, big = half.load(sample_id), native.load(sample_id)
        blocks = big.image.astype(np.float64).reshape(16, 2, 32, 2, 3).mean(axis=(1, 3))
        assert small.image.dtype == np.float32
        np.testing.assert_allclose(small.image, blocks, atol=1e-3)
        values = set(np.unique(big.label))
        assert set(np.unique(small.label)) <= values
        # nearest picks one of the four pixels of each block
        quad = big.label.reshape(16, 2, 32, 2).transpose(0, 2, 1, 3).reshape(16, 32, 4)
        assert np.all((quad == small.label[..., None]).any(axis=-1))


def test_cityscapes_labels_are_train_ids_of_the_stored_label_ids(cs_dir):
    ds = open_dataset("cityscapes", cs_dir, size=None)
    for sample_id in ds.ids:
        raw = np.array(Image.open(ds.label_path(sample_id)))
        np.testing.assert_array_equal(ds.load(sample_id).label, LABEL_ID_TO_TRAIN_ID[raw])


# -- bad input ---------------------------------------------------------------

def _truncate(path, keep=0.5):
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:int(len(data) * keep)])


def test_voc_missing_split_file(voc_copy):
    path = os.path.join(voc_copy, "ImageSets", "Segmentation", "test.txt")
    with pytest.raises(DatasetError, match="missing split file") as err:
        open_dataset("voc", voc_copy, split="test")
    assert err.value.path == path and path in str(err.value)


def test_voc_not_a_voc_directory(tmp_path):
    with pytest.raises(DatasetError, match="not a VOC directory"):
        open_dataset("voc", str(tmp_path))


@pytest.mark.parametrize("folder,ext", [("JPEGImages", ".jpg"), ("SegmentationClass", ".png")])
def test_voc_id_without_image_or_label(voc_copy, folder, ext):
    victim = open_dataset("voc", voc_copy).ids[1]
    path = os.path.join(voc_copy, folder, victim + ext)
    os.remove(path)
    with pytest.raises(DatasetError, match="missing") as err:
        open_dataset("voc", voc_copy)
    assert path in str(err.value)
    ds = open_dataset("voc", voc_copy, skip_bad=True)
    assert victim not in ds.ids and len(ds.skipped) == 1 and ds.skipped[0][0] == victim
    assert path in ds.skipped[0][1]


def _rewrite_label(path, edit):
    with Image.open(path) as im:
        palette = im.getpalette()
        label = np.array(im)
    out = Image.fromarray(edit(label))
    out.putpalette(palette)
    out.save(path)


def test_voc_label_value_outside_the_class_set(voc_copy):
    ds = open_dataset("voc", voc_copy)
    victim = ds.ids[0]

    def poison(label):
        label = label.copy()
        label[0, 0] = 21  # VOC has 0..20 and 255
        return label
    _rewrite_label(ds.label_path(victim), poison)
    with pytest.raises(DatasetError, match="21 outside the class set") as err:
        ds.load(victim)
    assert ds.label_path(victim) in str(err.value)
    # skip_bad: iteration warns, counts and goes on
    lenient = open_dataset("voc", voc_copy, skip_bad=True)
    loaded = [s.id for s in lenient]
    assert loaded == ds.ids[1:] and [i for i, _ in lenient.skipped] == [victim]
    # the class set is the reader's: 2 is fine for VOC, not for a 2-class set
    _rewrite_label(ds.label_path(victim), lambda label: np.where(label == 21, 2, label))
    assert 2 in ds.load(victim).label
    with pytest.raises(DatasetError, match="outside the class set 0..1 and 255"):
        open_dataset("voc", voc_copy, num_classes=2).load(victim)


@pytest.mark.parametrize("which", ["image", "label"])
@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_voc_unreadable_files(voc_copy, which, damage):
    ds = open_dataset("voc", voc_copy)
    victim = ds.ids[0]
    path = ds.image_path(victim) if which == "image" else ds.label_path(victim)
    if damage == "truncated":
        _truncate(path)
    else:
        with open(path, "wb") as f:
            f.write(b"this is not an image at all" * 10)
    with pytest.raises(DatasetError) as err:
        ds.load(victim)
    assert path in str(err.value)
    assert ("truncated" in str(err.value)) or ("unreadable" in str(err.value))


def test_voc_rgb_label_is_refused(voc_copy):
    ds = open_dataset("voc", voc_copy)
    victim = ds.ids[0]
    rgb = Image.open(ds.label_path(victim)).convert("RGB")
    rgb.save(ds.label_path(victim))
    with pytest.raises(DatasetError, match="mode 'RGB'") as err:
        ds.load(victim)
    assert ds.label_path(victim) in str(err.value)


def test_voc_label_size_mismatch(voc_copy):
    ds = open_dataset("voc", voc_copy)
    victim = ds.ids[0]
    _rewrite_label(ds.label_path(victim), lambda label: label[:-1])
    with pytest.raises(DatasetError, match="differs from image") as err:
        ds.load(victim)
    assert ds.label_path(victim) in str(err.value)


def test_cityscapes_missing_split(cs_copy):
    with pytest.raises(DatasetError, match="missing split directory") as err:
        open_dataset("cityscapes", cs_copy, split="test")
    assert os.path.join(cs_copy, "leftImg8bit", "test") in str(err.value)


@pytest.mark.parametrize("which", ["image", "label"])
def test_cityscapes_id_without_image_or_label(cs_copy, which):
    ds = open_dataset("cityscapes", cs_copy)
    victim = ds.ids[0]
    path = ds.image_path(victim) if which == "image" else ds.label_path(victim)
    os.remove(path)
    with pytest.raises(DatasetError, match=f"missing {which}") as err:
        open_dataset("cityscapes", cs_copy)
    assert path in str(err.value)
    lenient = open_dataset("cityscapes", cs_copy, skip_bad=True)
    assert lenient.ids == ds.ids[1:] and len(lenient.skipped) == 1


def test_cityscapes_label_id_outside_the_table(cs_copy):
    ds = open_dataset("cityscapes", cs_copy)
    victim = ds.ids[0]
    raw = np.array(Image.open(ds.label_path(victim)))
    raw[3, 3] = 34
    Image.fromarray(raw).save(ds.label_path(victim))
    with pytest.raises(DatasetError, match="34 outside the Cityscapes table") as err:
        ds.load(victim)
    assert ds.label_path(victim) in str(err.value)


def test_cityscapes_truncated_image(cs_copy):
    ds = open_dataset("cityscapes", cs_copy, skip_bad=True)
    victim = ds.ids[1]
    _truncate(ds.image_path(victim), keep=0.7)
    with pytest.raises(DatasetError, match="truncated PNG") as err:
        ds.load(victim)
    assert ds.image_path(victim) in str(err.value)
    assert [s.id for s in ds] == [i for i in ds.ids if i != victim]
    assert [i for i, _ in ds.skipped] == [victim]


def test_open_dataset_rejects_unknown_kind(voc_dir):
    with pytest.raises(ValueError, match="unknown dataset kind"):
        open_dataset("coco", voc_dir)


# -- real data (skipped unless pointed at it) ----------------------------------

@pytest.mark.realdata
@pytest.mark.skipif(not os.environ.get("VOC_ROOT"), reason="set VOC_ROOT to a VOCdevkit")
def test_real_voc_val_has_1449_ids():
    ds = open_dataset("voc", os.environ["VOC_ROOT"])
    assert len(ds) == 1449 and not ds.skipped
    sample = ds.load(ds.ids[0])
    assert set(np.unique(sample.label)) <= set(range(21)) | {255}


@pytest.mark.realdata
@pytest.mark.skipif(not os.environ.get("CITYSCAPES_ROOT"), reason="set CITYSCAPES_ROOT")
def test_real_cityscapes_val_has_500_ids():
    ds = open_dataset("cityscapes", os.environ["CITYSCAPES_ROOT"])
    assert len(ds) == 500
    assert ds.load(ds.ids[0]).image.shape == (512, 1024, 3)
