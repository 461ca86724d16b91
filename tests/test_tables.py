"""Tables from a store filled with hand-made records: paper / ours / delta in the right cells.

The expected IoUs are worked out by hand from 2x2 confusion matrices
(IoU_c = TP / (TP + FP + FN)), independently of metrics.py.
"""
import csv
import io
import json

import numpy as np
import pytest

from caffe_attacks import experiments as E
from caffe_attacks.report import tables
from caffe_attacks.store import Record, ResultsStore

BASE = {"weights_md5": "abc", "dataset": "voc", "split": "val", "protocol": {},
        "engine": "caffe", "score_blob": "score"}


def config(model, attack, eps, **options):
    if attack == "clean":
        return dict(BASE, model=model, attack="clean", eps=0.0, options={})
    opts = E.default_options(attack)
    opts.update(options)
    return dict(BASE, model=model, attack=attack, eps=float(eps), options=opts)


def cm_with_iou(iou0, iou1, n=10 ** 6):
    """A 2-class confusion matrix whose per-class IoUs are exactly iou0 and iou1.

    With one off-diagonal count b (gt 0 -> pred 1) and no other error:
    IoU0 = a / (a + b), IoU1 = d / (d + b).
    """
    b = n
    a = round(iou0 * b / (1 - iou0))
    d = round(iou1 * b / (1 - iou1))
    return np.array([[a, b], [0, d]], np.int64)


def record(cfg, image_id, cm, cm_clean=None):
    return Record(cfg, image_id, cm_clean if cm_clean is not None else cm, cm, 0.9 * 100,
                  0.1 * 100, 100, float(cfg["eps"]), 0.0)


DEFN = {
    "id": "table_T1", "kind": "table", "title": "Table T1: test", "dataset": "voc",
    "split": "val", "metric": "miou", "attack": "fgsm",
    "columns": {"eps": [0, 1, 2]},
    "rows": [
        {"label": "Net one", "model": "m1", "paper": [60.0, 50.0, 40.0]},
        {"label": "Net two", "model": "m2", "paper": [70.0, None, 30.0]},
    ],
}


@pytest.fixture
def store(tmp_path):
    # m1, per image: clean IoUs (0.5, 0.7) -> mIoU 60; fgsm eps 1 -> (0.4, 0.5) = 45;
    # eps 2 -> (0.2, 0.4) = 30. Both images identical, so the sums keep those IoUs.
    path = tmp_path / "s.h5"
    with ResultsStore(path) as s:
        clean = cm_with_iou(0.5, 0.7)
        for image in ("a", "b"):
            s.add_image([record(config("m1", "clean", 0), image, clean),
                         record(config("m1", "fgsm", 1), image, cm_with_iou(0.4, 0.5), clean),
                         record(config("m1", "fgsm", 2), image, cm_with_iou(0.2, 0.4), clean)])
        # m2: clean on images a and c, attacked only on a: the row uses a alone.
        s.add_image([record(config("m2", "clean", 0), "a", cm_with_iou(0.8, 0.8)),
                     record(config("m2", "fgsm", 2), "a", cm_with_iou(0.3, 0.3))])
        s.add_image([record(config("m2", "clean", 0), "c", cm_with_iou(0.1, 0.1))])
        # m2 at eps 1: a white-box record (99 %) and a transfer record (98 %) that must
        # never fill a white-box cell.
        s.add_image([record(config("m2", "fgsm", 1), "a", cm_with_iou(0.99, 0.99))])
        s.add_image([record(dict(config("m2", "fgsm", 1), source={"model": "m1"}), "a",
                            cm_with_iou(0.98, 0.98))])
    return ResultsStore(path, readonly=True)


def test_each_cell_holds_paper_ours_and_delta(store):
    t = tables.build(DEFN, store)
    v = t.values
    assert v[0][0].paper == 60.0 and v[0][0].ours == pytest.approx(60.0, abs=0.01)
    assert v[0][1].ours == pytest.approx(45.0, abs=0.01)
    assert v[0][1].delta == pytest.approx(-5.0, abs=0.01)
    assert v[0][2].ours == pytest.approx(30.0, abs=0.01)
    assert v[0][2].delta == pytest.approx(-10.0, abs=0.01)
    # m2 eps 1: the white-box record fills the cell (99 %), not the transfer one (98 %).
    assert v[1][1].paper is None and v[1][1].ours == pytest.approx(99.0, abs=0.01)
    assert v[1][1].delta is None


def test_row_cells_share_their_images(store):
    t = tables.build(DEFN, store)
    # m2's attacked records cover image a only, so the clean cell is over a too (80 %,
    # not the mean over a and c), and the table notes the row's image count.
    assert t.values[1][0].ours == pytest.approx(80.0, abs=0.01)
    assert t.values[1][2].ours == pytest.approx(30.0, abs=0.01)
    assert t.values[1][0].n_images == 1
    assert t.partial        # 1 or 2 images of VOC val's 1449


def test_markdown_csv_latex_put_values_in_the_right_cells(store):
    t = tables.build(DEFN, store)
    md = tables.to_markdown(t)
    row_one = next(line for line in md.splitlines() if line.startswith("| Net one"))
    cells = [c.strip() for c in row_one.strip("|").split("|")]
    assert cells == ["Net one", "60.0 / 60.0 / +0.0", "50.0 / 45.0 / -5.0",
                     "40.0 / 30.0 / -10.0"]
    row_two = next(line for line in md.splitlines() if line.startswith("| Net two"))
    assert [c.strip() for c in row_two.strip("|").split("|")][2] == "– / 99.0 / –"
    assert "(partial)" in md.splitlines()[0]

    rows = list(csv.DictReader(io.StringIO(tables.to_csv(t))))
    cell = next(r for r in rows if r["row"] == "Net one" and r["column"] == "2")
    assert float(cell["paper"]) == 40.0
    assert float(cell["ours"]) == pytest.approx(30.0, abs=0.01)
    assert float(cell["delta"]) == pytest.approx(-10.0, abs=0.01)
    assert cell["n_images"] == "2" and cell["partial"] == "1"

    tex = tables.to_latex(t)
    line = next(x for x in tex.splitlines() if x.startswith("Net one"))
    assert line.split(" & ")[3].rstrip(" \\") == "40.0 / 30.0 / -10.0"


def test_non_default_options_and_transfer_records_are_not_white_box_cells(tmp_path):
    path = tmp_path / "s.h5"
    with ResultsStore(path) as s:
        clean = cm_with_iou(0.5, 0.5)
        s.add_image([record(config("m1", "clean", 0), "a", clean),
                     record(config("m1", "ifgsm", 2, alpha=0.5), "a", cm_with_iou(0.1, 0.1), clean),
                     record(dict(config("m1", "ifgsm", 2), source={"model": "m9"}), "a",
                            cm_with_iou(0.2, 0.2), clean)])
    s = ResultsStore(path, readonly=True)
    q = {"model": "m1", "dataset": "voc", "split": "val", "attack": "ifgsm", "eps": 2.0}
    assert E.find_config(s, q) is None
    key = E.find_config(s, dict(q, source={"model": "m9"}))
    assert key is not None and s.configs()[key]["source"] == {"model": "m9"}


def test_empty_store_renders_paper_values_only(tmp_path):
    t = tables.build(DEFN, ResultsStore(tmp_path / "none.h5", readonly=True))
    assert all(v.ours is None for row in t.values for v in row)
    md = tables.to_markdown(t)
    assert "| Net one | 60.0 / – / – | 50.0 / – / – | 40.0 / – / – |" in md


def test_write_gives_three_files(store, tmp_path):
    paths = tables.write(tables.build(DEFN, store), str(tmp_path / "out"))
    assert sorted(p.rsplit(".", 1)[1] for p in paths) == ["csv", "md", "tex"]


def test_transfer_matrix_adapter_cells(tmp_path):
    defn = {"id": "table_X15", "kind": "transfer_matrix", "dataset": "voc", "split": "val",
            "metric": "iou_ratio", "attacks": ["fgsm", "ifgsm_ll"], "eps": 8,
            "sources": ["n@0.5", "n@1"], "targets": ["n@0.5", "n@1"],
            "column_labels": ["50%", "100%"], "row_labels": ["half", "full"],
            "paper": {"iou_ratio_percent": {"fgsm": [[1, 2], [3, 4]],
                                            "ifgsm_ll": [[5, 6], [7, 8]]}}}
    (tmp_path / "table_X15.json").write_text(json.dumps(defn))
    d = E.load("table_X15", tmp_path)
    rows, cols, cells = E.table_cells(d)
    assert cols == ["FGSM 50%", "FGSM 100%", "Iterative FGSM II 50%", "Iterative FGSM II 100%"]
    cell = next(c for c in cells if c.row == 1 and c.col == 2)   # full, from 50 %, ifgsm_ll
    assert cell.paper == 7
    assert cell.query["model"] == "n@1" and cell.query["source"] == {"model": "n@0.5"}
    assert cell.query["attack"] == "ifgsm_ll" and cell.query["eps"] == 8.0
    assert not cell.runnable      # the transfer CLI makes these, not the runner

    path = tmp_path / "s.h5"
    with ResultsStore(path) as s:
        clean = cm_with_iou(0.8, 0.6)     # mIoU 0.7
        cfg = dict(config("n@1", "ifgsm_ll", 8), source={"model": "n@0.5"})
        s.add_image([record(cfg, "a", cm_with_iou(0.4, 0.3), clean)])   # mIoU 0.35
    t = tables.build(d, ResultsStore(path, readonly=True))
    assert t.values[1][2].ours == pytest.approx(50.0, abs=0.01)        # 0.35 / 0.7
    assert t.values[1][2].delta == pytest.approx(43.0, abs=0.01)
