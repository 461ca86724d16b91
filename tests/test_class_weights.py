"""Inverse class-frequency tables (MCE-Bal) from label files."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from caffe_attacks.datasets import class_weights as CW


def test_inverse_frequency_closed_form():
    w = CW.inverse_frequency([60, 30, 10, 0])
    # 1/f = 10/6, 10/3, 10, - ; normalised to sum 1
    expect = np.array([10 / 6, 10 / 3, 10, 0])
    np.testing.assert_allclose(w, expect / expect.sum())
    assert w.sum() == pytest.approx(1.0) and w[3] == 0
    with pytest.raises(ValueError):
        CW.inverse_frequency([0, 0])


def test_counts_match_the_label_files_and_the_table_round_trips(small_synthetic_voc, tmp_path):
    root = small_synthetic_voc
    out = tmp_path / "w.json"
    CW.main(["--dataset", "synthetic", "--data-dir", str(root), "--split", "train",
             "--out", str(out)])
    table = json.loads(out.read_text())
    # brute force over the palette PNGs listed in the split file
    ids = (root / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    counts = np.zeros(table["num_classes"], np.int64)
    for i in ids:
        label = np.array(Image.open(root / "SegmentationClass" / (i + ".png")))
        for c in range(table["num_classes"]):
            counts[c] += int((label == c).sum())
    assert table["pixel_counts"] == counts.tolist()
    assert table["images"] == len(ids)
    np.testing.assert_allclose(CW.load_class_weights(out), CW.inverse_frequency(counts))
    # rarer classes weigh more
    order = np.argsort(counts)
    assert np.all(np.diff(np.asarray(table["weights"])[order]) <= 0)


# The committed tables and the sets they were computed from (README, Stronger attacks).
COMMITTED = [("class_weights_synthetic_voc.json", "voc", "400"),
             ("class_weights_synthetic_cityscapes.json", "cityscapes", "100")]


@pytest.mark.parametrize("name,fmt,n", COMMITTED)
def test_committed_synthetic_tables_are_reproduced(name, fmt, n, tmp_path):
    from caffe_attacks.datasets import synthetic
    path = os.path.join(os.path.dirname(CW.__file__), "..", "data", name)
    committed = json.load(open(path))
    synthetic.main(["--format", fmt, "--out", str(tmp_path / fmt), "--n", n, "--seed", "0"])
    CW.main(["--dataset", "synthetic", "--data-dir", str(tmp_path / fmt), "--split", "train",
             "--out", str(tmp_path / "w.json")])
    assert json.loads((tmp_path / "w.json").read_text()) == committed


def test_bad_data_dir_is_one_line_and_exit_2_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "weights.json"
    status = CW.main(["--dataset", "voc", "--data-dir", str(tmp_path / "absent"),
                      "--split", "train", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(err) == 1 and err[0].startswith("error: ") and "absent" in err[0]
    assert not out.exists()
