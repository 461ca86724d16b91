"""Every record says which software computed it, and so do summaries and tables."""
import json

import h5py
import numpy as np

from caffe_attacks import environment
from caffe_attacks.report import tables
from caffe_attacks.store import Record, ResultsStore, config_key, software_sets
from tests.test_tables import DEFN, cm_with_iou, config, record

OTHER = dict(environment.software_versions(), numpy="1.26.4", caffe=None, git_commit=None)


def _rec(image_id, software=None, cfg=None):
    cfg = cfg or config("m1", "fgsm", 1)
    rec = record(cfg, image_id, cm_with_iou(0.4, 0.5))
    if software is not None:
        rec.software = software
    return rec


def test_a_new_record_carries_this_process_versions():
    rec = _rec("a")
    assert rec.software == environment.software_versions()
    assert rec.software["numpy"] == np.__version__


def test_software_survives_the_journal_and_the_hdf5_file(tmp_path):
    rec = _rec("c", OTHER)
    assert Record.from_json(rec.to_json()).software == OTHER      # a journal line
    old_line = json.loads(rec.to_json())
    del old_line["software"]                                      # as earlier versions wrote
    assert Record.from_json(json.dumps(old_line)).software is None
    path = tmp_path / "r.h5"
    key = config_key(config("m1", "fgsm", 1))
    with ResultsStore(path) as store:
        store.add_image([_rec("a")])
        store.add_image([_rec("b", OTHER)])
    rows = {r["id"]: r for r in ResultsStore(path, readonly=True).records(key)}
    assert rows["a"]["software"] == environment.software_versions()
    assert rows["b"]["software"] == OTHER


def test_summary_counts_records_per_software(tmp_path):
    key = config_key(config("m1", "fgsm", 1))
    with ResultsStore(tmp_path / "r.h5") as store:
        for i in range(3):
            store.add_image([_rec("n%d" % i)])
        store.add_image([_rec("o0", OTHER)])
        summary = store.summary(key)
        assert summary["software"] == [
            {"software": environment.software_versions(), "n_records": 3},
            {"software": OTHER, "n_records": 1}]
        assert store.summary(key, ids=["o0"])["software"] == [{"software": OTHER,
                                                                "n_records": 1}]


def test_a_store_from_before_versions_reads_none_and_takes_new_records(tmp_path):
    path = tmp_path / "old.h5"
    key = config_key(config("m1", "fgsm", 1))
    with ResultsStore(path) as store:
        store.add_image([_rec("a")])
    with h5py.File(path, "a") as f:               # as earlier versions wrote it
        del f["configs/%s/software" % key]
    with ResultsStore(path) as store:
        assert store.records(key)[0]["software"] is None
        store.add_image([_rec("b")])
    rows = {r["id"]: r for r in ResultsStore(path, readonly=True).records(key)}
    assert rows["a"]["software"] is None
    assert rows["b"]["software"] == environment.software_versions()
    sets = software_sets(rows.values())
    assert sorted(s["n_records"] for s in sets) == [1, 1]
    assert {json.dumps(s["software"], sort_keys=True) for s in sets} == {
        "null", json.dumps(environment.software_versions(), sort_keys=True)}


def test_a_table_names_the_software_of_its_records(tmp_path):
    with ResultsStore(tmp_path / "r.h5") as store:
        for model in ("m1", "m2"):
            for eps in (0, 1, 2):
                cfg = config(model, "clean" if eps == 0 else "fgsm", eps)
                store.add_image([_rec("i0", cfg=cfg)])
                store.add_image([_rec("i1", OTHER if model == "m2" else None, cfg=cfg)])
        table = tables.build(DEFN, store)
    # 12 records: m1's 6 and m2's i0 (3) by this process, m2's i1 (3) by OTHER
    assert [(s["n_records"], s["software"]) for s in table.software] == [
        (9, environment.software_versions()), (3, OTHER)]
    md = tables.to_markdown(table)
    [mine, other] = [line for line in md.splitlines() if line.startswith("- Software")]
    assert mine.startswith("- Software (9 records): caffe_attacks %s" % environment.__version__)
    assert "numpy %s" % np.__version__ in mine
    assert "numpy 1.26.4" in other and other.endswith("no pycaffe")
    tex = tables.to_latex(table)
    assert "% Software (3 records): " in tex


def test_a_clean_column_shared_by_rows_is_counted_once(tmp_path):
    defn = {"id": "table_T2", "kind": "table", "title": "T2", "dataset": "voc", "split": "val",
            "metric": "miou", "model": "m1", "columns": {"eps": [0, 1]},
            "rows": [{"label": "FGSM", "attack": "fgsm"},
                     {"label": "FGSM II", "attack": "fgsm_ll"}]}
    with ResultsStore(tmp_path / "r.h5") as store:
        for cfg in (config("m1", "clean", 0), config("m1", "fgsm", 1),
                    config("m1", "fgsm_ll", 1)):
            store.add_image([_rec("i0", cfg=cfg), _rec("i1", cfg=cfg)])
        table = tables.build(defn, store)
    assert [v.n_images for row in table.values for v in row] == [2, 2, 2, 2]
    # 3 configurations x 2 images, though both rows show the clean one
    assert [s["n_records"] for s in table.software] == [6]
