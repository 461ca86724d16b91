"""The runner end to end on a synthetic set: errors, summary, kill-and-resume."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

caffe = pytest.importorskip("caffe")

from caffe_attacks import run as runner  # noqa: E402
from caffe_attacks.datasets import synthetic  # noqa: E402
from caffe_attacks.zoo import prototxt_path  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROTOCOL = json.dumps({"mean_bgr": [104.0, 117.0, 123.0], "resize": None, "pad": None,
                       "scores_to_labels": "crop"})


@pytest.fixture(scope="module")
def setup_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    data = d / "data"
    synthetic.main(["--format", "voc", "--out", str(data), "--n", "24", "--seed", "3",
                    "--width", "48", "--height", "32"])
    from caffe_attacks.caffe_net import CaffeNet
    net = CaffeNet(str(prototxt_path("tiny_synthetic"))).net
    rng = np.random.default_rng(0)
    for name in net.params:
        for blob in net.params[name]:
            if name.startswith("upscore"):
                continue   # keep the bilinear... zeros are fine for a random net
            blob.data[...] = rng.normal(0, 0.1, blob.data.shape)
    weights = d / "random.caffemodel"
    net.save(str(weights))
    return d, data, weights


def _args(setup_dir, out, *extra):
    d, data, weights = setup_dir
    return ["--prototxt", str(prototxt_path("tiny_synthetic")), "--weights", str(weights),
            "--protocol", PROTOCOL, "--dataset", "synthetic", "--data-dir", str(data),
            "--out", str(out), "--quiet", *extra]


def test_summary_rows_and_files(setup_dir, capsys):
    out = setup_dir[0] / "a" / "r.h5"
    assert runner.main(_args(setup_dir, out, "--attack", "fgsm", "ifgsm_ll", "--eps", "1", "4",
                             "--limit", "3")) == 0
    text = capsys.readouterr().out
    assert "Iterative FGSM II" in text and "mIoU%" in text
    summary = json.load(open(str(out)[:-3] + ".json"))
    rows = summary["rows"]
    assert [(r["attack"], r["eps"]) for r in rows] == [
        ("clean", 0.0), ("fgsm", 1.0), ("fgsm", 4.0), ("ifgsm_ll", 1.0), ("ifgsm_ll", 4.0)]
    assert all(r["n_images"] == 3 for r in rows)
    assert summary["meta"]["partial"] is True
    for r in rows:
        assert r["max_delta"] <= r["eps"] + 1e-4
        assert r["miou_clean"] == rows[0]["miou"]
    assert os.path.exists(str(out)[:-3] + ".csv")


@pytest.mark.parametrize("extra, message", [
    (["--attack", "deepfool"], None),                       # argparse choices: exit 2
    (["--eps", "-1"], "eps"),
    (["--eps", "nan"], "eps"),
    (["--limit", "0"], "limit"),
])
def test_bad_arguments_exit_nonzero(setup_dir, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) if message is None else _nothing():
        code = runner.main(_args(setup_dir, tmp_path / "r.h5", *extra))
        assert code == 2
        assert message in capsys.readouterr().err


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_missing_files_and_unknown_model(setup_dir, tmp_path, capsys):
    d, data, weights = setup_dir
    assert runner.main(["--model", "no_such_model", "--dataset", "synthetic",
                        "--data-dir", str(data), "--out", str(tmp_path / "r.h5")]) == 2
    assert "no_such_model" in capsys.readouterr().err
    args = _args(setup_dir, tmp_path / "r.h5")
    args[args.index("--weights") + 1] = str(tmp_path / "gone.caffemodel")
    assert runner.main(args) == 2
    assert "gone.caffemodel" in capsys.readouterr().err
    args = _args(setup_dir, tmp_path / "r.h5")
    args[args.index("--data-dir") + 1] = str(tmp_path / "nodata")
    assert runner.main(args) == 2
    assert "nodata" in capsys.readouterr().err


def test_mismatched_weights_refused_unless_allowed(setup_dir, tmp_path, capsys, monkeypatch):
    """A zoo model whose file's md5 differs from the manifest is refused."""
    d, data, weights = setup_dir
    from caffe_attacks import weights as W
    entry = dict(W.model_entry("tiny_synthetic"), md5="0" * 32, weights_path=None,
                 caffemodel=os.path.basename(weights))
    monkeypatch.setattr(W, "model_entry", lambda name, manifest=None: entry)
    base = ["--model", "tiny_synthetic", "--weights-dir", str(d), "--dataset", "synthetic",
            "--data-dir", str(data), "--out", str(tmp_path / "r.h5"), "--quiet",
            "--attack", "fgsm", "--eps", "1", "--limit", "1", "--protocol", PROTOCOL]
    assert runner.main(base) == 2
    assert "md5" in capsys.readouterr().err
    assert runner.main(base + ["--allow-unverified"]) == 0


def _summary_numbers(path):
    rows = json.load(open(path))["rows"]
    return [(r["attack"], r["eps"], r["miou"], r["confidence"], r["entropy"], r["n_images"],
             r["max_delta"]) for r in rows]


def test_kill_and_resume_gives_the_uninterrupted_summary(setup_dir, tmp_path):
    common = ["--attack", "fgsm", "ifgsm", "--eps", "2", "8"]
    straight = tmp_path / "straight.h5"
    assert runner.main(_args(setup_dir, straight, *common)) == 0

    killed = tmp_path / "killed.h5"
    cmd = [sys.executable, "-m", "caffe_attacks.run", *_args(setup_dir, killed, *common)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = str(killed) + ".journal"
    deadline = time.time() + 120
    while time.time() < deadline:
        if os.path.exists(journal) and open(journal).read().count("\n") >= 10:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    lines = open(journal).read().count("\n")
    assert 10 <= lines < 6 * 6, "the kill should land mid-run (got %d records)" % lines

    assert runner.main(_args(setup_dir, killed, *common)) == 0
    assert _summary_numbers(str(killed)[:-3] + ".json") == \
        _summary_numbers(str(straight)[:-3] + ".json")


def test_image_batches_give_the_per_image_records(setup_dir, tmp_path):
    common = ["--attack", "fgsm", "ifgsm_ll", "--eps", "2", "8", "--limit", "5"]
    single, batched = tmp_path / "single.h5", tmp_path / "batched.h5"
    assert runner.main(_args(setup_dir, single, *common)) == 0
    assert runner.main(_args(setup_dir, batched, *common, "--batch-images", "3")) == 0
    assert _summary_numbers(str(batched)[:-3] + ".json") == \
        _summary_numbers(str(single)[:-3] + ".json")
    from caffe_attacks.store import ResultsStore
    with ResultsStore(single, readonly=True) as a, ResultsStore(batched, readonly=True) as b:
        assert set(a.configs()) == set(b.configs())
        for key in a.configs():
            ra = {r["id"]: r for r in a.records(key)}
            rb = {r["id"]: r for r in b.records(key)}
            assert set(ra) == set(rb) and len(ra) == 5
            for i in ra:
                np.testing.assert_array_equal(ra[i]["cm_adv"], rb[i]["cm_adv"])
                assert ra[i]["max_delta"] == rb[i]["max_delta"]


def test_batch_options_are_checked(setup_dir, tmp_path, capsys):
    assert runner.main(_args(setup_dir, tmp_path / "r.h5", "--batch-images", "0")) == 2
    assert "batch-images" in capsys.readouterr().err
    assert runner.main(_args(setup_dir, tmp_path / "r.h5", "--batch-images", "2",
                             "--batch-eps")) == 2
    assert "cannot be combined" in capsys.readouterr().err
