"""Real-weights tier: ENet's published caffemodel and output on a Cityscapes test image.

Runs wherever ../shared/real/ (or /work/shared/real) holds the files listed in
its SOURCES.md; skips elsewhere. ENet's own preprocessing (TimoSaemann/ENet
scripts/test_segmentation.py): the image resized to 1024x512 by OpenCV as
float, BGR, 0..255, no mean; the argmax coloured with their table must equal
their published colour output on >= 98.9 % of pixels, through both engines.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SHARED, requires_caffe

REAL = SHARED / "real"
WEIGHTS = REAL / "cityscapes_weights.caffemodel"
IMAGE = REAL / "munich_000000_000019_leftImg8bit.png"
PUBLISHED = REAL / "munich_000000_000019_leftImg8bit_enet_reference_output.png"
LUT = REAL / "enet_cityscapes19_lut.png"
ROOT = Path(__file__).resolve().parents[1]
# the issue asks >= 98.9 % (SOURCES.md: 98.96 %, which is what a uint8 resize gives);
# ENet's own float resize reproduces the published output on every pixel here
MIN_AGREEMENT = 0.999

pytestmark = [
    requires_caffe,
    pytest.mark.skipif(not all(p.exists() for p in (WEIGHTS, IMAGE, PUBLISHED, LUT)),
                       reason="real-weights tier: no ENet files in %s" % REAL),
]


def _enet_input():
    import cv2
    image = cv2.imread(str(IMAGE)).astype(np.float32)
    image = cv2.resize(image, (1024, 512))
    return image.transpose(2, 0, 1)[None].copy()


def _agreement(prediction):
    """Fraction of pixels whose colour (their table, their cv2.LUT use) equals the published PNG."""
    import cv2
    lut = cv2.imread(str(LUT))[..., ::-1]
    stacked = np.dstack([prediction.astype(np.uint8)] * 3)
    coloured = cv2.LUT(stacked, lut)
    published = cv2.imread(str(PUBLISHED))
    return float((coloured == published).all(axis=2).mean())


@pytest.fixture(scope="module")
def caffe_prediction():
    from caffe_attacks import zoo
    from caffe_attacks.caffe_net import CaffeNet
    spec = zoo.get("enet_cityscapes")
    model = CaffeNet(str(zoo.prototxt_path("enet_cityscapes")), str(WEIGHTS),
                     input_blob=spec.input_blob, score_blob=spec.score_blob)
    return model.forward(_enet_input())[0].argmax(0)


def test_weights_verify_ok():
    out = subprocess.run([sys.executable, "-m", "caffe_attacks.weights", "verify", "--dir",
                          str(REAL), "--json", "enet_cityscapes"], cwd=ROOT, check=True,
                         capture_output=True, text=True, env=_env()).stdout
    (row,) = json.loads(out)
    assert row["status"] == "ok" and row["md5"] == "d9aabd630cf6bc29c48ea55a86124e14"


def test_caffe_forward_matches_the_published_output(caffe_prediction):
    assert _agreement(caffe_prediction) >= MIN_AGREEMENT


def test_torch_forward_matches_the_published_output(caffe_prediction):
    from caffe_attacks import zoo
    from caffe_attacks.torch_net import TorchNet
    spec = zoo.get("enet_cityscapes")
    model = TorchNet(str(zoo.prototxt_path("enet_cityscapes")), str(WEIGHTS),
                     input_blob=spec.input_blob, score_blob=spec.score_blob)
    prediction = model.forward(_enet_input())[0].argmax(0)
    assert _agreement(prediction) >= MIN_AGREEMENT
    assert (prediction == caffe_prediction).mean() > 0.999


def _env():
    env = dict(os.environ, PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1")
    return env


def _cityscapes_dir(root, prediction):
    """A one-image Cityscapes layout: the real image, ENet's prediction as its labelIds."""
    import cv2
    from caffe_attacks.datasets.labels import LABEL_ID_TO_TRAIN_ID
    train_to_label = {int(t): i for i, t in reversed(list(enumerate(LABEL_ID_TO_TRAIN_ID)))
                      if 0 <= t < 255}
    label_ids = np.vectorize(train_to_label.get)(prediction).astype(np.uint8)
    full = cv2.resize(label_ids, (2048, 1024), interpolation=cv2.INTER_NEAREST)
    image_dir = root / "leftImg8bit" / "val" / "munich"
    label_dir = root / "gtFine" / "val" / "munich"
    image_dir.mkdir(parents=True)
    label_dir.mkdir(parents=True)
    os.symlink(IMAGE, image_dir / IMAGE.name)
    cv2.imwrite(str(label_dir / "munich_000000_000019_gtFine_labelIds.png"), full)
    return root


def test_dilation10_canvas_of_the_real_image_is_the_authors_blob(tmp_path):
    """2048x1024 -> 1024x512 -> 1396x884 (demo_cityscapes.sh): the reader's default and the
    manifest protocol give the float32 blob of the authors' dilated.py, bit for bit."""
    import cv2
    from caffe_attacks import weights
    from caffe_attacks.datasets.cityscapes import CityscapesSegmentation
    from caffe_attacks.preprocess import Protocol
    from tests.authors_loop import authors_dilated_canvas
    root = _cityscapes_dir(tmp_path / "cs", np.zeros((512, 1024), np.int64))
    data = CityscapesSegmentation(str(root), split="val")
    entry = weights.model_entry("dilated_context_cityscapes")
    protocol = Protocol.from_dict(dict(entry["input"], pad={"mode": "reflect101",
                                                            "margin": 186, "canvas": [884, 1396]}))
    ours, _ = protocol.prepare(data.load(data.ids[0]).image)
    theirs = authors_dilated_canvas(cv2.imread(str(IMAGE)), entry["input"]["mean_bgr"],
                                    (1024, 512), (1396, 884))
    assert ours.shape == (1, 3, 884, 1396)
    np.testing.assert_array_equal(ours, theirs.astype(np.float32))
    rounded = CityscapesSegmentation(str(root), split="val", image_dtype="uint8")
    coarse, _ = protocol.prepare(rounded.load(rounded.ids[0]).image)
    assert np.abs(coarse - theirs).max() > 0.25


# a reduced canvas (the image at 512x256, scores resized back) keeps the tier short
REDUCED = json.dumps({"mean_bgr": None, "resize": {"size": [512, 256]}, "pad": None,
                      "scores_to_labels": "crop"})


def _reduced_prediction():
    """ENet's prediction on the reduced canvas, on the 1024x512 label grid (torch engine)."""
    import cv2
    from caffe_attacks import zoo
    from caffe_attacks.preprocess import Protocol
    from caffe_attacks.torch_net import TorchNet
    spec = zoo.get("enet_cityscapes")
    model = TorchNet(str(zoo.prototxt_path("enet_cityscapes")), str(WEIGHTS),
                     input_blob=spec.input_blob, score_blob=spec.score_blob)
    protocol = Protocol.from_dict(json.loads(REDUCED))
    image = cv2.resize(cv2.imread(str(IMAGE)).astype(np.float32), (1024, 512))
    x, ctx = protocol.prepare(image)
    return protocol.scores_to_label_grid(model.forward(x), ctx).argmax(0)


def test_fgsm_and_iterative_fgsm_ii_run_on_enet(tmp_path):
    data = _cityscapes_dir(tmp_path / "cityscapes", _reduced_prediction())
    out = tmp_path / "enet.h5"
    subprocess.run([sys.executable, "-m", "caffe_attacks.run", "--model", "enet_cityscapes",
                    "--weights", str(WEIGHTS), "--engine", "torch", "--protocol", REDUCED,
                    "--dataset", "cityscapes", "--data-dir", str(data), "--split", "val",
                    "--limit", "1", "--attack", "fgsm", "ifgsm_ll", "--eps", "0.25",
                    "--out", str(out), "--quiet"],
                   cwd=ROOT, check=True, env=_env(), capture_output=True, text=True)
    rows = {(r["attack"], r["eps"]): r for r in json.load(open(str(out)[:-3] + ".json"))["rows"]}
    assert set(rows) == {("clean", 0.0), ("fgsm", 0.25), ("ifgsm_ll", 0.25)}
    clean = rows[("clean", 0.0)]
    # labels: ENet's own prediction with the run's protocol and engine
    assert clean["miou"] > 0.99, clean
    for key in (("fgsm", 0.25), ("ifgsm_ll", 0.25)):
        assert rows[key]["n_images"] == 1
        assert rows[key]["miou"] < clean["miou"] - 0.01, (rows[key], clean)
