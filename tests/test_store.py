"""The results store: durability, dedupe, separation of configurations."""
import json

import numpy as np
import pytest

from caffe_attacks.metrics import mean_iou
from caffe_attacks.store import Record, ResultsStore, StoreLocked, config_key

CFG = {"model": "m", "weights_md5": "abc", "dataset": "synthetic", "attack": "fgsm", "eps": 2.0,
       "options": {"clip_to_image": False}}


def _rec(config, image_id, seed):
    rng = np.random.default_rng(seed)
    cm = rng.integers(0, 50, (3, 3))
    return Record(config, image_id, cm, cm // 2, 1.5, 0.5, 10, 2.0, 0.1)


def test_records_survive_reopen_and_compaction(tmp_path):
    path = tmp_path / "r.h5"
    with ResultsStore(path, compact_every=2) as s:
        for i in range(5):
            s.add_image([_rec(CFG, "img%d" % i, i)])
    s = ResultsStore(path, readonly=True)
    key = config_key(CFG)
    assert all(s.has(key, "img%d" % i) for i in range(5))
    rows = s.records(key)
    assert sorted(r["id"] for r in rows) == ["img%d" % i for i in range(5)]
    summary = s.summary(key)
    expected_cm = sum(_rec(CFG, "x", i).cm_adv for i in range(5))
    assert summary["miou"] == pytest.approx(mean_iou(expected_cm))
    assert summary["n_images"] == 5


def test_torn_journal_line_is_ignored_and_truncated(tmp_path):
    path = tmp_path / "r.h5"
    s = ResultsStore(path, compact_every=100)
    s.add_image([_rec(CFG, "a", 0)])
    s.add_image([_rec(CFG, "b", 1)])
    s._lock.close()   # simulate a kill: no compaction, lock released by the OS
    with open(str(path) + ".journal", "ab") as f:
        f.write(_rec(CFG, "c", 2).to_json()[:40].encode())
    s2 = ResultsStore(path)
    key = config_key(CFG)
    assert s2.has(key, "a") and s2.has(key, "b") and not s2.has(key, "c")
    s2.add_image([_rec(CFG, "c", 2)])
    s2.close()
    assert sorted(r["id"] for r in ResultsStore(path, readonly=True).records(key)) == ["a", "b", "c"]


def test_records_in_both_journal_and_file_count_once(tmp_path):
    path = tmp_path / "r.h5"
    s = ResultsStore(path)
    s.add_image([_rec(CFG, "a", 0)])
    journal = open(str(path) + ".journal").read()
    s.close()                                     # compacts, empties the journal
    with open(str(path) + ".journal", "w") as f:  # as if killed before emptying it
        f.write(journal)
    s = ResultsStore(path)
    assert s.summary(config_key(CFG))["n_images"] == 1
    s.close()
    assert len(ResultsStore(path, readonly=True).records(config_key(CFG))) == 1


def test_configurations_never_mix(tmp_path):
    other = dict(CFG, eps=4.0)
    with ResultsStore(tmp_path / "r.h5") as s:
        s.add_image([_rec(CFG, "a", 0), _rec(other, "a", 1)])
        assert s.summary(config_key(CFG))["miou"] != s.summary(config_key(other))["miou"]
        assert s.configs() == {config_key(CFG): CFG, config_key(other): other}
    assert config_key(CFG) == config_key(json.loads(json.dumps(CFG)))


def test_second_writer_is_refused(tmp_path):
    with ResultsStore(tmp_path / "r.h5"):
        with pytest.raises(StoreLocked):
            ResultsStore(tmp_path / "r.h5")


def test_summary_restricted_to_ids(tmp_path):
    with ResultsStore(tmp_path / "r.h5") as s:
        for i in range(4):
            s.add_image([_rec(CFG, "i%d" % i, i)])
        assert s.summary(config_key(CFG), ids=["i0", "i1"])["n_images"] == 2
        assert s.summary(config_key(CFG), ids=["zz"]) is None
