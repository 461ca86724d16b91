"""Issue 14 end to end: every bad input is one `error:` line and exit 2, nothing is lost.

Each test replays a row of the issue's table through the real CLIs on a small
synthetic set and the committed tiny_synthetic model.
"""
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

caffe = pytest.importorskip("caffe")

from caffe_attacks import run  # noqa: E402
from caffe_attacks import transfer  # noqa: E402
from caffe_attacks.datasets import synthetic  # noqa: E402
from caffe_attacks.runner import RunOptions  # noqa: E402
from caffe_attacks.store import ResultsStore  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "prototxt" / "tiny_synthetic.prototxt"
TINY_WEIGHTS = ROOT / "caffe_attacks" / "data" / "tiny_synthetic.caffemodel"
TINY_MD5 = "32ba2cd3ff1bebd78f2a4c4d8ab23e67"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("fail") / "data"
    synthetic.write_voc(str(d), n=16, seed=1)
    return d


def _model_args(data, out, *extra):
    return ["--model", "tiny_synthetic", "--dataset", "synthetic", "--data-dir", str(data),
            "--out", str(out), "--quiet", *extra]


def _prototxt_args(data, out, prototxt=TINY, *extra):
    return ["--prototxt", str(prototxt), "--dataset", "synthetic", "--data-dir", str(data),
            "--out", str(out), "--quiet", *extra]


def _one_error_line(capsys, *expected):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert "Traceback" not in err and len(errors) == 1, err
    for text in expected:
        assert text in errors[0], errors[0]
    return errors[0]


def _rows(out):
    return {(r["attack"], r["eps"]): r for r in
            json.load(open(str(out)[:-3] + ".json"))["rows"]}


# --- row 1: repeated values --------------------------------------------------------------

def test_repeated_values_collapse_with_a_note(caplog):
    options = RunOptions(attacks=["fgsm", "ifgsm", "fgsm"], eps=[8, "8", 8.0, 2])
    assert options.attacks == ("fgsm", "ifgsm") and options.eps == (8.0, 2.0)
    assert "--attack repeats fgsm" in caplog.text and "--eps repeats 8" in caplog.text


def test_repeated_eps_then_a_longer_run_equals_a_fresh_store(data, tmp_path, caplog):
    out, fresh = tmp_path / "d1.h5", tmp_path / "fresh.h5"
    assert run.main(_model_args(data, out, "--attack", "fgsm", "--limit", "1",
                                "--eps", "8", "8", "8")) == 0
    assert "--eps repeats 8" in caplog.text
    assert run.main(_model_args(data, out, "--attack", "fgsm", "--limit", "4", "--eps", "8")) == 0
    assert run.main(_model_args(data, fresh, "--attack", "fgsm", "--limit", "4",
                                "--eps", "8")) == 0
    got, want = _rows(out)[("fgsm", 8.0)], _rows(fresh)[("fgsm", 8.0)]
    assert got["n_images"] == want["n_images"] == 4
    assert got["miou"] == want["miou"]
    store = ResultsStore(out, readonly=True)
    assert all(len(store.records(k)) == 4 for k in store.configs())


def test_a_repeated_transfer_target_runs_once(data, tmp_path, capsys, caplog):
    out = tmp_path / "t.h5"
    assert transfer.main(["--source", "tiny_synthetic", "--target", "tiny_synthetic",
                          "tiny_synthetic", "--dataset", "synthetic", "--data-dir", str(data),
                          "--attack", "fgsm", "--eps", "4", "--limit", "1", "--out", str(out),
                          "--quiet"]) == 0
    assert "--target repeats tiny_synthetic" in caplog.text
    assert capsys.readouterr().out.count("-> target tiny_synthetic") == 1


# --- row 2: weights that do not fill the net ----------------------------------------------

def test_a_zero_byte_caffemodel_is_refused(data, tmp_path, capsys):
    empty = tmp_path / "z.caffemodel"
    empty.write_bytes(b"")
    assert run.main(_prototxt_args(data, tmp_path / "d2.h5", TINY, "--weights", str(empty),
                                   "--limit", "1", "--attack", "fgsm", "--eps", "2")) == 2
    _one_error_line(capsys, str(empty), "fills none of its 10 parameter layers")
    assert not (tmp_path / "d2.h5").exists()


def test_another_nets_caffemodel_is_refused_naming_the_layers(data, tmp_path, capsys):
    other = tmp_path / "other.prototxt"
    other.write_text(TINY.read_text().replace('name: "conv', 'name: "other_conv'))
    assert run.main(_prototxt_args(data, tmp_path / "d2.h5", other, "--weights",
                                   str(TINY_WEIGHTS), "--limit", "1", "--attack", "fgsm",
                                   "--eps", "2")) == 2
    _one_error_line(capsys, "leaves 6 of its parameter layers unfilled: other_conv1_1")


def test_a_prototxt_without_weights_needs_random_init(data, tmp_path, capsys):
    out = tmp_path / "d2.h5"
    args = _prototxt_args(data, out, TINY, "--limit", "1", "--attack", "fgsm", "--eps", "2")
    assert run.main(args) == 2
    _one_error_line(capsys, "--prototxt without --weights", "--random-init")
    assert run.main(args + ["--random-init"]) == 0
    assert "weights: none (--random-init" in capsys.readouterr().out
    store = ResultsStore(out, readonly=True)
    assert {c["init"] for c in store.configs().values()} == {"fillers"}


def test_prototxt_weights_print_and_record_the_md5_and_the_manifest_match(data, tmp_path,
                                                                          capsys):
    out = tmp_path / "d2.h5"
    assert run.main(_prototxt_args(data, out, TINY, "--weights", str(TINY_WEIGHTS),
                                   "--limit", "1", "--attack", "fgsm", "--eps", "2")) == 0
    printed = capsys.readouterr().out
    assert "md5 %s, the manifest's md5 for tiny_synthetic, tiny_synthetic+crf" % TINY_MD5 \
        in printed
    meta = json.load(open(str(out)[:-3] + ".json"))["meta"]
    assert meta["weights_md5"] == TINY_MD5
    assert meta["weights_manifest_match"] == ["tiny_synthetic", "tiny_synthetic+crf"]
    store = ResultsStore(out, readonly=True)
    assert {c["weights_md5"] for c in store.configs().values()} == {TINY_MD5}


# --- rows 3 and 4: numbers ------------------------------------------------------------------

@pytest.mark.parametrize("extra, message", [
    (["--attack", "ifgsm", "--eps", "2", "--alpha", "nan"], "bad --alpha"),
    (["--attack", "ifgsm", "--eps", "2", "--alpha", "0"], "bad --alpha"),
    (["--attack", "ifgsm", "--eps", "1e9"], "eps must be at most 255"),
    (["--attack", "fgsm", "--eps", "2", "--protocol",
      '{"mean_bgr": [1, NaN, 3], "resize": null, "pad": null}'], "mean_bgr must be"),
    (["--attack", "fgsm", "--eps", "2", "--protocol", '{"mean_bgr": 5}'], "mean_bgr must be"),
    (["--attack", "fgsm", "--eps", "2", "--gpu", "-1"], "--gpu must be"),
    (["--attack", "fgsm", "--eps", "2", "--save-examples", "EX", "-1"], "K must be >= 0"),
], ids=["alpha-nan", "alpha-0", "eps-1e9", "protocol-nan", "protocol-mean-5", "gpu-neg",
        "examples-neg"])
def test_bad_numbers_are_one_line(data, tmp_path, capsys, extra, message):
    out = tmp_path / "d3.h5"
    assert run.main(_model_args(data, out, "--limit", "1", *extra)) == 2
    _one_error_line(capsys, message)
    assert not out.exists()


def test_non_finite_scores_name_the_image_and_store_nothing(data, tmp_path, capsys):
    net = caffe.Net(str(TINY), caffe.TEST)
    from caffe_attacks.caffemodel_reader import load_caffemodel_into
    load_caffemodel_into(net, TINY_WEIGHTS)
    net.params["conv1_1"][0].data[0, 0, 0, 0] = np.nan     # one NaN weight
    bad = tmp_path / "nan.caffemodel"
    net.save(str(bad))
    out = tmp_path / "d3.h5"
    assert run.main(_prototxt_args(data, out, TINY, "--weights", str(bad), "--limit", "2",
                                   "--attack", "ifgsm", "--eps", "2")) == 2
    first = open(data / "ImageSets" / "Segmentation" / "val.txt").readline().strip()
    _one_error_line(capsys, "image %s: the net's scores hold" % first, "nothing was stored")
    assert ResultsStore(out, readonly=True).configs() == {}


# --- rows 6, 7, 9, 11: the store through the CLI --------------------------------------------

def test_a_locked_or_unusable_out_is_one_line(data, tmp_path, capsys):
    args = ["--limit", "1", "--attack", "fgsm", "--eps", "2"]
    with ResultsStore(tmp_path / "locked.h5"):
        assert run.main(_model_args(data, tmp_path / "locked.h5", *args)) == 2
        _one_error_line(capsys, "in use by another run (pid %d)" % os.getpid())
    (tmp_path / "dir.h5").mkdir()
    assert run.main(_model_args(data, tmp_path / "dir.h5", *args)) == 2
    _one_error_line(capsys, str(tmp_path / "dir.h5"), "is a directory")
    (tmp_path / "text.h5").write_text("hello\n")
    assert run.main(_model_args(data, tmp_path / "text.h5", *args)) == 2
    _one_error_line(capsys, "is not an HDF5 results store")
    assert (tmp_path / "text.h5").read_text() == "hello\n"


def test_empty_prototxt_and_directory_weights_are_one_line(data, tmp_path, capsys):
    empty = tmp_path / "empty.prototxt"
    empty.write_text("")
    args = ["--limit", "1", "--attack", "fgsm", "--eps", "2"]
    assert run.main(_prototxt_args(data, tmp_path / "a.h5", empty, "--weights",
                                   str(TINY_WEIGHTS), *args)) == 2
    _one_error_line(capsys, str(empty), "defines no layers")
    assert run.main(_model_args(data, tmp_path / "b.h5", "--weights", str(tmp_path), *args)) == 2
    _one_error_line(capsys, str(tmp_path), "is a directory")


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace('type: "Convolution"', 'type: "NoSuchLayer"'), "type 'NoSuchLayer'"),
    (lambda t: t.replace('bottom: "data"', 'bottom: "nodata"', 1), "reads blob 'nodata'"),
], ids=["unknown-type", "unknown-bottom"])
def test_a_bad_definition_is_one_line_not_an_abort(data, tmp_path, capsys, edit, message):
    bad = tmp_path / "bad.prototxt"
    bad.write_text(edit(TINY.read_text()))
    assert run.main(_prototxt_args(data, tmp_path / "d8.h5", bad, "--weights", str(TINY_WEIGHTS),
                                   "--limit", "1", "--attack", "fgsm", "--eps", "2")) == 2
    _one_error_line(capsys, message)


def test_an_empty_split_is_one_line(data, tmp_path, capsys):
    import shutil
    empty = tmp_path / "data"
    shutil.copytree(data, empty)
    (empty / "ImageSets" / "Segmentation" / "val.txt").write_text("")
    assert run.main(_model_args(empty, tmp_path / "d12.h5", "--attack", "fgsm",
                                "--eps", "2")) == 2
    _one_error_line(capsys, "split 'val' has no images")


def _run_in_child(args, fsize=None):
    """`python -m caffe_attacks.run ARGS` in a child, optionally under `ulimit -f` (bytes)."""
    def limit():
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, resource.RLIM_INFINITY))
    env = dict(os.environ, PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "caffe_attacks.run", *args], cwd=str(ROOT),
                          env=env, capture_output=True, text=True, timeout=600,
                          preexec_fn=limit)


def test_a_file_size_limit_during_compaction_is_one_line_and_the_resume_is_identical(
        data, tmp_path):
    args = ["--limit", "3", "--attack", "fgsm", "ifgsm", "--eps", "2", "8"]
    limited, fresh = tmp_path / "d6.h5", tmp_path / "fresh.h5"
    proc = _run_in_child(_model_args(data, limited, *args), fsize=20_000)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "File too large" in errors[0]
    assert "Traceback" not in proc.stderr and "HDF5" not in proc.stderr
    journal = Path(str(limited) + ".journal").read_text()
    assert journal.count("\n") == 3 * 5                       # 3 images x (clean + 4) records
    assert _run_in_child(_model_args(data, limited, *args)).returncode == 0
    assert _run_in_child(_model_args(data, fresh, *args)).returncode == 0
    got, want = _rows(limited), _rows(fresh)
    assert got.keys() == want.keys()
    for key in want:
        assert (got[key]["miou"], got[key]["n_images"]) == (want[key]["miou"],
                                                            want[key]["n_images"])


def test_a_symlinked_out_writes_the_target(data, tmp_path):
    (tmp_path / "real").mkdir()
    link = tmp_path / "link.h5"
    link.symlink_to(tmp_path / "real" / "r.h5")
    assert run.main(_model_args(data, link, "--limit", "2", "--attack", "fgsm",
                                "--eps", "2")) == 0
    assert link.is_symlink()
    assert len(ResultsStore(tmp_path / "real" / "r.h5", readonly=True).configs()) == 2


# --- Ctrl-C ----------------------------------------------------------------------------------

def test_ctrl_c_exits_130_with_a_resume_hint_in_every_cli(data, tmp_path, capsys, monkeypatch):
    from caffe_attacks.weights import __main__ as weights_cli
    from caffe_attacks.zoo import __main__ as zoo_cli

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "run_white_box", interrupt)
    assert run.main(_model_args(data, tmp_path / "c.h5", "--attack", "fgsm", "--eps", "2")) == 130
    assert "resume" in capsys.readouterr().err
    monkeypatch.setattr(weights_cli.weights, "verify_dir", interrupt)
    assert weights_cli.main(["verify", "--dir", str(tmp_path)]) == 130
    monkeypatch.setattr(zoo_cli, "_list", interrupt)
    assert zoo_cli.main(["list"]) == 130
    monkeypatch.setattr(synthetic, "write_voc", interrupt)
    assert synthetic.main(["--format", "voc", "--out", str(tmp_path / "s")]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("interrupted") == 3
