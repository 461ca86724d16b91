"""The results store: durability, dedupe, separation of configurations."""
import json

import h5py
import numpy as np
import pytest

from caffe_attacks.metrics import mean_iou
from caffe_attacks.store import (InvalidRecord, Record, ResultsStore, StoreError, StoreLocked,
                                 config_key)

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
    s._release_lock()   # simulate a kill: no compaction, lock released by the OS
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


# --- issue 14: the store's invariants under repeated, corrupt and hostile input ------------

def _summary_fields(s):
    return {k: v for k, v in s.items() if k != "seconds"}


def test_adding_a_record_that_exists_is_a_no_op(tmp_path):
    first, again = _rec(CFG, "a", 0), _rec(CFG, "a", 1)     # same (config, image), other numbers
    with ResultsStore(tmp_path / "r.h5", compact_every=1) as s:
        s.add_image([first, first, again])                 # --eps 8 8: one image, one record
        s.add_image([again])
        assert len(s.records(config_key(CFG))) == 1
    rows = ResultsStore(tmp_path / "r.h5", readonly=True).records(config_key(CFG))
    assert len(rows) == 1 and np.array_equal(rows[0]["cm_adv"], first.cm_adv)
    assert open(str(tmp_path / "r.h5") + ".journal").read() == ""


def _write_old_store(path, records):
    """An HDF5 store as an earlier version wrote it for repeated --eps: ids written twice."""
    key = config_key(records[0].config)
    with h5py.File(path, "w") as f:
        g = f.create_group("configs/" + key)
        g.attrs["config"] = json.dumps(records[0].config, sort_keys=True)
        columns = {"ids": np.array([r.image_id for r in records], dtype=h5py.string_dtype()),
                   "version": np.array([r.version for r in records], dtype=h5py.string_dtype()),
                   "cm_clean": np.stack([r.cm_clean for r in records]),
                   "cm_adv": np.stack([r.cm_adv for r in records]),
                   "npix": np.array([r.npix for r in records], np.int64)}
        for name in ("conf_sum", "ent_sum", "max_delta", "seconds"):
            columns[name] = np.array([getattr(r, name) for r in records], np.float64)
        for name, values in columns.items():
            g.create_dataset(name, data=values, maxshape=(None,) + values.shape[1:])


def test_summary_of_an_old_store_with_duplicates_counts_each_image_once(tmp_path):
    recs = [_rec(CFG, "i%d" % i, i) for i in range(4)]
    _write_old_store(tmp_path / "old.h5", [recs[0]] * 3 + recs[1:])  # image i0 three times
    with ResultsStore(tmp_path / "new.h5") as fresh:
        fresh.add_image(recs)
        expected = fresh.summary(config_key(CFG))
    old = ResultsStore(tmp_path / "old.h5", readonly=True).summary(config_key(CFG))
    assert old["n_images"] == 4 and old["ids"] == expected["ids"]
    assert old["miou"] == expected["miou"] and old["confidence"] == expected["confidence"]
    with ResultsStore(tmp_path / "old.h5") as s:          # and compaction does not add more
        s.add_image([_rec(CFG, "i0", 9), _rec(CFG, "i4", 4)])
    assert ResultsStore(tmp_path / "old.h5", readonly=True).summary(
        config_key(CFG))["n_images"] == 5


def _killed_store_with(path, n):
    """A store whose writer died after n images: everything still in the journal."""
    s = ResultsStore(path, compact_every=1000)
    for i in range(n):
        s.add_image([_rec(CFG, "img%02d" % i, i)])
    s._release_lock()
    return str(path) + ".journal"


@pytest.mark.parametrize("damage", [
    lambda line: line[:10] + b"#" + line[11:],                 # a flipped byte: not JSON
    lambda line: line.replace(b'"npix": 10', b'"npix": "10"'),  # JSON, wrong type
    lambda line: line.replace(b'"eps": 2.0', b'"eps": 3.0'),    # config edited: key disagrees
    lambda line: b"",                                           # an empty line
], ids=["bytes", "type", "key", "empty"])
def test_a_corrupt_journal_line_is_skipped_and_every_valid_record_kept(tmp_path, caplog,
                                                                       damage):
    path = tmp_path / "r.h5"
    journal = _killed_store_with(path, 12)
    lines = open(journal, "rb").read().split(b"\n")
    original = lines[4]
    lines[4] = damage(lines[4])
    as_found = b"\n".join(lines)
    open(journal, "wb").write(as_found)
    s = ResultsStore(path)
    key = config_key(CFG)
    assert [s.has(key, "img%02d" % i) for i in range(12)] == [i != 4 for i in range(12)]
    assert "line 5" in caplog.text
    assert open(journal + ".orig", "rb").read() == as_found       # kept aside ...
    assert lines[4] in open(journal + ".rejected", "rb").read()
    s.add_image([Record.from_json(original.decode())])           # the lost image, redone
    s.close()
    assert not (tmp_path / "r.h5.journal.orig").exists()         # ... until compaction succeeds
    rows = ResultsStore(path, readonly=True).records(key)
    assert sorted(r["id"] for r in rows) == ["img%02d" % i for i in range(12)]


def test_readonly_open_of_a_corrupt_journal_changes_nothing(tmp_path):
    path = tmp_path / "r.h5"
    journal = _killed_store_with(path, 3)
    data = open(journal, "rb").read().replace(b'"id": "img01"', b'"id": img01')
    open(journal, "wb").write(data)
    s = ResultsStore(path, readonly=True)
    assert sorted(r["id"] for r in s.records(config_key(CFG))) == ["img00", "img02"]
    assert open(journal, "rb").read() == data and not (tmp_path / "r.h5.journal.orig").exists()


_LIMITED_WRITER = r"""
import resource, sys
sys.path.insert(0, sys.argv[1])
from tests.test_store import CFG, _rec
from caffe_attacks.store import ResultsStore, StoreWriteError
s = ResultsStore(sys.argv[2], compact_every=1000)
for i in range(int(sys.argv[3])):
    s.add_image([_rec(CFG, "img%d" % i, i)])
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[4]), resource.RLIM_INFINITY))
try:
    if sys.argv[5] == "append":
        s.add_image([_rec(CFG, "late", 99)])
    else:
        s.close()
except StoreWriteError as e:
    print("StoreWriteError:", e)
    sys.exit(3)
"""


@pytest.mark.parametrize("when", ["compact", "append"])
def test_a_file_size_limit_gives_one_clean_error_and_keeps_the_journal(tmp_path, when):
    import subprocess
    import sys
    from pathlib import Path
    path = tmp_path / "r.h5"
    script = tmp_path / "writer.py"
    script.write_text(_LIMITED_WRITER)
    repo = str(Path(__file__).resolve().parents[1])
    # 5 images first; then no file may grow beyond its size (ulimit -f)
    _killed_store_with(tmp_path / "probe.h5", 5)
    limit = (tmp_path / "probe.h5.journal").stat().st_size
    proc = subprocess.run([sys.executable, str(script), repo, str(path), "5", str(limit), when],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "StoreWriteError" in proc.stdout and str(path) in proc.stdout
    assert "HDF5" not in proc.stderr and "Traceback" not in proc.stderr
    journal = open(str(path) + ".journal").read()
    assert journal.count("\n") == 5 and journal.endswith("\n")   # no half line left behind
    assert not (tmp_path / "r.h5.tmp").exists()
    with ResultsStore(path) as s:                                 # resumes: nothing lost
        assert all(s.has(config_key(CFG), "img%d" % i) for i in range(5))
    assert len(ResultsStore(path, readonly=True).records(config_key(CFG))) == 5


def test_a_symlinked_store_is_locked_and_written_at_its_target(tmp_path):
    target = tmp_path / "real" / "r.h5"
    target.parent.mkdir()
    link = tmp_path / "link.h5"
    link.symlink_to(target)
    with ResultsStore(link) as s:
        s.add_image([_rec(CFG, "a", 0)])
        with pytest.raises(StoreLocked):          # the lock is the target's, not the link's
            ResultsStore(target)
    assert link.is_symlink() and target.is_file()
    assert len(ResultsStore(target, readonly=True).records(config_key(CFG))) == 1


def test_compaction_fsyncs_the_directory_after_the_replace(tmp_path, monkeypatch):
    import os
    import stat as stat_mod
    from caffe_attacks import store as store_mod
    events = []
    real_replace, real_fsync = os.replace, os.fsync

    def replace(src, dst):
        events.append("replace")
        return real_replace(src, dst)

    def fsync(fd):
        events.append("fsync dir" if stat_mod.S_ISDIR(os.fstat(fd).st_mode) else "fsync")
        return real_fsync(fd)

    monkeypatch.setattr(store_mod.os, "replace", replace)
    monkeypatch.setattr(store_mod.os, "fsync", fsync)
    with ResultsStore(tmp_path / "r.h5") as s:
        s.add_image([_rec(CFG, "a", 0)])
    assert "fsync dir" in events[events.index("replace"):]


def test_a_locked_store_names_the_holders_pid(tmp_path):
    import os
    with ResultsStore(tmp_path / "r.h5"):
        with pytest.raises(StoreLocked, match=r"\(pid %d\)" % os.getpid()):
            ResultsStore(tmp_path / "r.h5")
    ResultsStore(tmp_path / "r.h5").close()     # released: a later run may write


def _foreign_hdf5(path):
    with h5py.File(path, "w") as f:
        f["weights"] = np.zeros(3)


@pytest.mark.parametrize("make, reason", [
    (lambda p: p.mkdir(), "is a directory"),
    (lambda p: p.write_text("not a store\n"), "is not an HDF5 results store"),
    (lambda p: p.write_bytes(b""), "is not an HDF5 results store"),
    (_foreign_hdf5, "not a results store"),
    (lambda p: __import__("os").mkfifo(p), "not a regular file"),
], ids=["directory", "text", "empty", "foreign-hdf5", "fifo"])
def test_an_unusable_out_path_is_one_clear_error_naming_it(tmp_path, make, reason):
    path = tmp_path / "r.h5"
    make(path)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(StoreError, match=reason) as err:
        ResultsStore(path)
    assert str(path) in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == before   # nothing created, no lock


def test_a_read_only_store_is_refused_for_writing_but_readable(tmp_path):
    path = tmp_path / "r.h5"
    with ResultsStore(path) as s:
        s.add_image([_rec(CFG, "a", 0)])
    path.chmod(0o444)
    with pytest.raises(StoreError, match="read-only") as err:
        ResultsStore(path)
    assert str(path) in str(err.value)
    assert ResultsStore(path, readonly=True).summary(config_key(CFG))["n_images"] == 1


@pytest.mark.parametrize("field, value", [("conf_sum", float("nan")), ("ent_sum", float("inf")),
                                          ("max_delta", float("nan"))])
def test_a_non_finite_result_never_reaches_the_store(tmp_path, field, value):
    bad = _rec(CFG, "img7", 0)
    setattr(bad, field, value)
    with ResultsStore(tmp_path / "r.h5") as s:
        with pytest.raises(InvalidRecord, match="'img7'.*%s" % field):
            s.add_image([_rec(dict(CFG, eps=4.0), "img7", 1), bad])
        assert s.configs() == {}                      # the image's other record neither
    assert not (tmp_path / "r.h5").exists()
