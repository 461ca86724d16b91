"""Transfer attacks (caffe_attacks.runner.transfer and the transfer CLI).

Pure numpy: the delta mapping between canvases with a pixel-wise linear
model, for which a transferred FGSM must equal the target's own white-box
FGSM on the image pixels (a misplaced crop or pad would not). Caffe: a
transfer from a net to itself reproduces the runner's white-box summary;
a transfer between two scales of a tiny multiscale net equals crafting and
evaluating by hand; the CLI's errors and its end-to-end run.
"""
import json

import numpy as np
import pytest

from caffe_attacks import runner, transfer
from caffe_attacks.attacks import fgsm
from caffe_attacks.preprocess import Protocol
from caffe_attacks.runner import MemberModel, ResolvedModel, RunOptions, transferred_input
from caffe_attacks.runner.transfer import run_transfer, transfer_targets
from caffe_attacks.store import ResultsStore, config_key
from tests.conftest import requires_caffe
from tests.models import LinearPixelModel

NO_PAD = {"mean_bgr": [100.0, 110.0, 120.0], "resize": None, "pad": None,
          "scores_to_labels": "crop"}
PADDED = dict(NO_PAD, pad={"mode": "constant", "canvas": [40, 56]})


@pytest.fixture
def data_dir(small_synthetic_voc):
    return small_synthetic_voc


def _options(attacks=("fgsm",), eps=(8.0,)):
    return RunOptions(dataset="synthetic", data_dir="d", quiet=True, attacks=attacks, eps=eps)


def _dataset(data_dir):
    from caffe_attacks.datasets import open_dataset
    return open_dataset("synthetic", str(data_dir))


def _linear_rm(protocol, name, seed=0):
    rng = np.random.default_rng(seed)
    model = LinearPixelModel(rng.normal(0, 1, (5, 3)), rng.normal(0, 30, 5))
    return ResolvedModel(model, Protocol.from_dict(protocol), name, None, "md5-" + name,
                         False, 5)


# ------------------------------------------------------------------ pure numpy

def test_transferred_input_on_a_shared_canvas_is_the_adversarial_input():
    p = Protocol.from_dict(PADDED)
    image = np.random.default_rng(0).integers(0, 255, (32, 48, 3)).astype(np.uint8)
    x, ctx = p.prepare(image)
    x_adv = (x + 0.1 * np.random.default_rng(1).normal(0, 1, x.shape)).astype(np.float32)
    out = transferred_input(x, x_adv, ctx, p, x, ctx, p)
    assert out is not x_adv and np.array_equal(out, x_adv)


def test_transferred_input_between_canvases_keeps_image_pixels_and_drops_padding():
    src, dst = Protocol.from_dict(PADDED), Protocol.from_dict(NO_PAD)
    image = np.random.default_rng(0).integers(0, 255, (32, 48, 3)).astype(np.uint8)
    x_s, ctx_s = src.prepare(image)
    x_t, ctx_t = dst.prepare(image)
    delta = np.random.default_rng(2).choice([-8.0, 8.0], x_s.shape).astype(np.float32)
    out = transferred_input(x_s, x_s + delta, ctx_s, src, x_t, ctx_t, dst)
    assert out.shape == x_t.shape
    np.testing.assert_allclose(out - x_t, delta[:, :, :32, :48], atol=1e-4)
    # and back: the target's padding receives no perturbation
    back = transferred_input(x_t, out, ctx_t, dst, x_s, ctx_s, src)
    np.testing.assert_allclose(back[:, :, :32, :48] - x_s[:, :, :32, :48],
                               delta[:, :, :32, :48], atol=1e-3)
    assert np.all(back[:, :, 32:, :] == x_s[:, :, 32:, :])
    assert np.all(back[:, :, :, 48:] == x_s[:, :, :, 48:])


def test_pixelwise_model_transfer_across_canvases_equals_white_box(data_dir, tmp_path):
    """A 1x1-conv model's FGSM sign at a pixel depends on that pixel alone, so the
    perturbation crafted on a padded canvas and carried to an unpadded one is the
    target's own white-box perturbation on every image pixel."""
    source = _linear_rm(PADDED, "padded")
    target = _linear_rm(NO_PAD, "plain")          # same weights, other canvas
    dataset = _dataset(data_dir)
    ids = dataset.ids[:3]
    options = _options(eps=(4.0,))
    with ResultsStore(tmp_path / "r.h5") as store:
        by_target = run_transfer(dataset, ids, source, [target], store, options, progress=False)
        white = _white_box(target, dataset, store, options, ids)
        configs = {k: c for k, c in store.configs().items()}
    rows = by_target["plain"]
    assert [r["attack"] for r in rows] == ["clean", "fgsm"]
    transferred, white_fgsm = rows[1], white[1]
    assert transferred["source"] == "padded"
    assert transferred["iou_ratio"] < 0.99, "the attack should bite for this test to mean much"
    for key in ("miou", "miou_clean", "iou_ratio", "confidence", "entropy", "max_delta"):
        assert transferred[key] == pytest.approx(white_fgsm[key], rel=1e-6), key
    sources = [c.get("source") for c in configs.values() if c["attack"] == "fgsm"]
    assert {"model": "padded", "weights_md5": "md5-padded", "engine": "caffe",
            "protocol": Protocol.from_dict(PADDED).to_dict(), "score_blob": None} in sources


def _white_box(rm, dataset, store, options, ids):
    configs = runner.make_configs(runner.record_base(rm, options), options)
    runner.sweep(dataset, ids, rm, [runner.Target(rm, configs)], store, options, progress=False)
    return runner.summarize(store, configs, ids)


def test_records_name_their_source_and_clean_records_do_not():
    source, target = _linear_rm(PADDED, "a"), _linear_rm(NO_PAD, "b")
    configs = transfer_targets(source, [target], _options(("fgsm", "ifgsm"),
                                                          (0.0, 2.0, 8.0)))[0].configs
    assert [(a, e) for a, e, _ in configs] == [("clean", 0.0), ("fgsm", 2.0), ("fgsm", 8.0),
                                               ("ifgsm", 2.0), ("ifgsm", 8.0)]
    assert "source" not in configs[0][2]
    assert all(c["source"]["model"] == "a" and c["model"] == "b" for _, _, c in configs[1:])
    assert configs[3][2]["options"]["alpha"] == 1.0


# ------------------------------------------------------------------ Caffe

HW = (32, 48)      # the synthetic images; protocol without padding


def _tiny_member(variant, weights):
    from caffe_attacks.caffe_net import CaffeNet
    from caffe_attacks.zoo.multiscale import parse_member

    member = parse_member("tiny_synthetic" + variant)

    def load(path, score_blob):
        return CaffeNet(path, weights, input_blob="data", score_blob=score_blob)
    model = MemberModel(member, load)
    model.build(HW)
    return ResolvedModel(model, Protocol.from_dict(NO_PAD), member.label, weights, "md5",
                         False, 5, member=member)


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    pytest.importorskip("caffe")
    from caffe_attacks import zoo
    from caffe_attacks.caffe_net import CaffeNet
    net = CaffeNet(zoo.build("tiny_synthetic", input_hw=HW)).net
    rng = np.random.default_rng(0)
    for blobs in net.params.values():
        for blob in blobs:
            blob.data[...] = rng.normal(0, 0.03, blob.data.shape)
    path = tmp_path_factory.mktemp("w") / "tiny.caffemodel"
    net.save(str(path))
    return str(path)


@requires_caffe
def test_transfer_from_a_net_to_itself_equals_the_white_box_run(data_dir, tmp_path,
                                                                  tiny_weights):
    rm = _tiny_member("@max", tiny_weights)
    dataset = _dataset(data_dir)
    ids = dataset.ids[:2]
    options = _options(("fgsm", "ifgsm_ll"), (2.0, 8.0))
    with ResultsStore(tmp_path / "r.h5") as store:
        base = runner.record_base(rm, options)
        assert base["score_blob"] == "score_fusion" and base["member"]["fusion"] == "max"
        white = _white_box(rm, dataset, store, options, ids)
        rows = run_transfer(dataset, ids, rm, [rm], store, options, progress=False)[rm.name]
        keys = store.configs()
    assert len(keys) == 1 + 2 * 4     # one shared clean config, white-box and transfer apart
    assert [(r["attack"], r["eps"]) for r in rows] == [(r["attack"], r["eps"]) for r in white]
    assert min(r["iou_ratio"] for r in white) < 0.9
    for w, t in zip(white, rows):
        for key in ("miou", "miou_clean", "iou_ratio", "pixel_accuracy", "confidence",
                    "entropy", "max_delta", "n_images"):
            assert t[key] == w[key], (w["attack"], w["eps"], key)


@requires_caffe
def test_transfer_between_scales_equals_crafting_and_evaluating_by_hand(data_dir, tmp_path,
                                                                         tiny_weights):
    from caffe_attacks.metrics import confusion_matrix
    source, target = _tiny_member("@0.5", tiny_weights), _tiny_member("@1", tiny_weights)
    dataset = _dataset(data_dir)
    sample = dataset.load(dataset.ids[0])
    options = _options()
    plan = transfer_targets(source, [target], options)
    with ResultsStore(tmp_path / "r.h5") as store:
        runner.attack_batch([sample], source, plan, store, options)
        record = store.records(config_key(plan[0].configs[1][2]))[0]
    x, _ = source.protocol.prepare(sample.image)
    x_adv = fgsm(source.model, x, 8.0)
    pred = target.model.forward(x_adv)[0].argmax(0)
    np.testing.assert_array_equal(record["cm_adv"], confusion_matrix(sample.label, pred, 5))
    white = fgsm(target.model, x, 8.0)                   # not what was evaluated
    assert not np.array_equal(np.sign(white - x), np.sign(x_adv - x))
    assert record["max_delta"] == pytest.approx(8.0)


@requires_caffe
def test_cli_errors_are_one_line_and_exit_2(data_dir, tmp_path, capsys, tiny_weights):
    common = ["--dataset", "synthetic", "--data-dir", str(data_dir), "--out",
              str(tmp_path / "r.h5"), "--quiet", "--protocol", json.dumps(NO_PAD)]
    cases = [
        (["--source", "no_such_net@0.5", "--target", "tiny_synthetic"], "unknown zoo model"),
        (["--source", "tiny_synthetic@1.5", "--target", "tiny_synthetic"], "bad variant"),
        (["--source", "tiny_synthetic@0.5", "--target", "tiny_synthetic",
          "--source-weights", str(tmp_path / "missing.caffemodel")], "weights not found"),
        (["--source", "tiny_synthetic", "--target", "tiny_synthetic", "--source-weights",
          tiny_weights, "--target-weights", tiny_weights, "--eps", "-1"], "bad --eps"),
    ]
    for argv, message in cases:
        assert transfer.main(argv + common) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.startswith("error: "), (argv, err)


@requires_caffe
def test_cli_end_to_end_writes_a_summary_per_target(data_dir, tmp_path, capsys, tiny_weights):
    out = tmp_path / "t.h5"
    argv = ["--source", "tiny_synthetic@0.5", "--target", "tiny_synthetic@0.5",
            "tiny_synthetic@max", "--source-weights", tiny_weights, "--target-weights",
            tiny_weights, "--protocol", json.dumps(NO_PAD), "--attack", "fgsm", "--eps", "8",
            "--dataset", "synthetic", "--data-dir", str(data_dir), "--out", str(out),
            "--limit", "2", "--quiet", "--allow-unverified"]
    assert transfer.main(argv) == 0
    text = capsys.readouterr().out
    assert "-> target tiny_synthetic@max" in text
    summary = json.load(open(str(out)[:-3] + ".json"))
    rows = {(r["target"], r["attack"]): r for r in summary["rows"]}
    assert set(rows) == {("tiny_synthetic@0.5", "clean"), ("tiny_synthetic@0.5", "fgsm"),
                         ("tiny_synthetic@max", "clean"), ("tiny_synthetic@max", "fgsm")}
    with ResultsStore(out, readonly=True) as store:
        for key, config in store.configs().items():
            s = store.summary(key)
            row = rows[(config["model"], config["attack"])]
            assert row["iou_ratio"] == pytest.approx(s["iou_ratio"])
            if config["attack"] == "fgsm":
                assert config["source"]["model"] == "tiny_synthetic@0.5"
                assert config["member"]["scales"] in ([0.5], [1.0, 0.75, 0.5])
    # resuming adds nothing
    assert transfer.main(argv) == 0
    with ResultsStore(out, readonly=True) as store:
        assert all(store.summary(k)["n_images"] == 2 for k in store.configs())
