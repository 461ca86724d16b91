"""The strong attacks through the runner: records, costs, projection, SEA from member records."""
import numpy as np
import pytest

from tests.conftest import requires_caffe

pytestmark = requires_caffe


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from caffe_attacks.datasets import synthetic
    root = tmp_path_factory.mktemp("strong_runner") / "voc"
    synthetic.main(["--format", "voc", "--out", str(root), "--n", "8", "--seed", "1"])
    return root


def _options(data, attacks, **kw):
    from caffe_attacks.runner import RunOptions
    fields = dict(model="tiny_synthetic", dataset="synthetic", data_dir=str(data), split="train",
                  limit=3, attacks=tuple(attacks), eps=(2.0,), iterations=4, quiet=True)
    fields.update(kw)
    return RunOptions(**fields)


def _run(data, store, attacks, **kw):
    from caffe_attacks.runner.whitebox import run_white_box
    return run_white_box(_options(data, attacks, **kw), str(store), progress=False)


def _configs(store_path):
    from caffe_attacks.store import ResultsStore
    with ResultsStore(str(store_path), readonly=True) as s:
        return {k: c for k, c in s.configs().items()}, s


def test_records_carry_the_schedule_projection_and_labels(data, tmp_path):
    from caffe_attacks.strong_attacks.auto_pgd import expected_passes
    store = tmp_path / "r.h5"
    _run(data, store, ["pgd", "segpgd", "cospgd", "apgd_js"], restarts=2)
    configs, _ = _configs(store)
    seen = set()
    for c in configs.values():
        if c["attack"] in ("pgd", "segpgd", "cospgd"):
            assert c["passes"] == {"forward": 1 + 2 * 4 + 2, "backward": 2 * 4}
            assert c["options"]["seed"] == 0 and c["options"]["restarts"] == 2
        elif c["attack"] == "apgd_js":
            f, b = expected_passes(4)
            assert c["passes"] == {"forward": f, "backward": b}
        else:
            assert c["attack"] == "clean" and "passes" not in c
            continue
        assert c["options"]["clip_to_image"] is True
        assert c["options"]["labels"] == "prediction"
        seen.add(c["attack"])
    assert seen == {"pgd", "segpgd", "cospgd", "apgd_js"}


def test_a_cost_that_differs_from_the_schedule_is_an_error(data, tmp_path, monkeypatch):
    from caffe_attacks.runner import strong
    monkeypatch.setattr(strong, "expected_passes",
                        lambda n, progressive=True, clean_labels=True: (1, 1))
    with pytest.raises(RuntimeError, match="schedule"):
        _run(data, tmp_path / "r.h5", ["apgd_mce"])


def test_strong_no_clip_is_recorded_and_keys_apart(data, tmp_path):
    store = tmp_path / "r.h5"
    _run(data, store, ["pgd"])
    _run(data, store, ["pgd"], strong_clip=False)
    configs, _ = _configs(store)
    clips = sorted(c["options"]["clip_to_image"] for c in configs.values() if c["attack"] == "pgd")
    assert clips == [False, True]


def _by_id(store, key):
    return {r["id"]: r for r in store.records(key)}


@pytest.mark.parametrize("selection", ["miou", "accuracy"])
def test_sea_is_formed_from_stored_member_records(data, tmp_path, monkeypatch, selection):
    from caffe_attacks.metrics import mean_iou, pixel_accuracy
    from caffe_attacks.runner import registry
    from caffe_attacks.store import ResultsStore
    from caffe_attacks.strong_attacks import SEA_MEMBERS
    store = tmp_path / "r.h5"
    _run(data, store, list(SEA_MEMBERS))
    # the members are stored: SEA must run no attack at all
    for name in SEA_MEMBERS:
        entry = registry.REGISTRY[name]
        monkeypatch.setitem(registry.REGISTRY, name, registry.AttackEntry(
            name, lambda *a, **k: pytest.fail("a member ran again"), entry.record_options,
            entry.cost))
    result = _run(data, store, ["sea"], sea_selection=selection)
    with ResultsStore(str(store), readonly=True) as s:
        members, sea = [], None
        for k, c in s.configs().items():
            if c["attack"] == "sea":
                sea = (k, c)
        for mk in sea[1]["members"]:
            members.append(_by_id(s, mk))
        rows = _by_id(s, sea[0])
        assert sorted(rows) == sorted(result.ids)
        assert sea[1]["passes"] == {k: sum(s.configs()[mk]["passes"][k]
                                           for mk in sea[1]["members"])
                                    for k in ("forward", "backward")}
        for i, r in rows.items():
            options = [m[i]["cm_adv"] for m in members]
            assert any(np.array_equal(r["cm_adv"], o) for o in options)
            if selection == "accuracy":
                assert pixel_accuracy(r["cm_adv"]) == min(pixel_accuracy(o) for o in options)
        if selection == "miou":
            sea_miou = mean_iou(sum(np.asarray(r["cm_adv"]) for r in rows.values()))
            start = mean_iou(sum(np.asarray(members[0][i]["cm_adv"]) for i in rows))
            assert sea_miou <= start
            assert sea[1]["options"]["seed"] == 0 and sea[1]["image_set"]["n"] == 3


def test_a_class_weight_table_of_another_class_count_is_refused(data, tmp_path):
    from caffe_attacks.errors import UsageError
    with pytest.raises(UsageError, match="19 classes, the model 5"):
        _run(data, tmp_path / "r.h5", ["apgd_mce_bal"],
             class_weights="class_weights_synthetic_cityscapes.json")
    with pytest.raises(UsageError, match="not found"):
        _run(data, tmp_path / "r.h5", ["apgd_mce_bal"], class_weights="no_such_table.json")


def _attack_configs(store_path, attack):
    configs, _ = _configs(store_path)
    return [c for c in configs.values() if c["attack"] == attack]


def test_ground_truth_labels_from_the_command_line_are_another_configuration(data, tmp_path):
    import os
    import subprocess
    import sys
    from caffe_attacks import run
    from caffe_attacks.store import config_key
    store = tmp_path / "r.h5"
    args = ["--model", "tiny_synthetic", "--dataset", "synthetic", "--data-dir", str(data),
            "--split", "train", "--limit", "2", "--attack", "pgd", "--eps", "2",
            "--iterations", "3", "--out", str(store), "--quiet"]
    assert run.main(args) == 0
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-m", "caffe_attacks.run", *args,
                           "--strong-labels", "ground_truth"], cwd=root,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    configs = sorted(_attack_configs(store, "pgd"), key=lambda c: c["options"]["labels"])
    assert [c["options"]["labels"] for c in configs] == ["ground_truth", "prediction"]
    gt, pred = configs
    assert config_key(gt) != config_key(pred)
    # the ground-truth run has no clean-label forward, and says so in its passes
    assert gt["passes"] == {"forward": 3, "backward": 3}
    assert pred["passes"] == {"forward": 4, "backward": 3}
    assert {k: v for k, v in gt["options"].items() if k != "labels"} == \
        {k: v for k, v in pred["options"].items() if k != "labels"}


def test_prediction_records_keep_their_options():
    from caffe_attacks.runner import RunOptions
    from caffe_attacks.runner.registry import record_options
    opts = record_options(RunOptions(), "pgd")
    assert opts == {"clip_to_image": True, "labels": "prediction", "steps": 100, "restarts": 1,
                    "alpha": None, "seed": 0}
    assert record_options(RunOptions(), "apgd_js")["labels"] == "prediction"
    # SEA's members and SEA itself follow the option
    from caffe_attacks.runner.strong import sea_record_options
    gt = RunOptions(strong_labels="ground_truth")
    assert sea_record_options(gt)["labels"] == "ground_truth"
    assert all(record_options(gt, m)["labels"] == "ground_truth"
               for m in ("apgd_mce", "apgd_mce_bal", "apgd_js"))
    assert record_options(gt, "ifgsm") == record_options(RunOptions(), "ifgsm")


def test_a_bad_label_source_is_refused():
    from caffe_attacks.errors import UsageError
    from caffe_attacks.runner import RunOptions
    with pytest.raises(UsageError, match="--strong-labels"):
        RunOptions(strong_labels="truth")


@pytest.mark.parametrize("attack, target", [("pgd", "pgd"), ("apgd_mce", "apgd")])
def test_the_attack_receives_the_ground_truth_on_its_score_grid(data, tmp_path, monkeypatch,
                                                                attack, target):
    """A padded canvas: the labels reaching the attack are the image's label, void around it."""
    import json
    from caffe_attacks.datasets import open_dataset
    from caffe_attacks.runner import strong
    from caffe_attacks.strong_attacks import apgd, pgd
    seen = []
    real = {"pgd": pgd, "apgd": apgd}[target]

    def spy(model, x, eps, **kwargs):
        seen.append((x.shape, None if kwargs["labels"] is None
                     else np.array(kwargs["labels"], copy=True)))
        return real(model, x, eps, **kwargs)

    if target == "pgd":
        monkeypatch.setitem(strong._PGD_FUNCTIONS, "pgd", spy)
    else:
        monkeypatch.setattr(strong, "apgd", spy)
    dataset = open_dataset("synthetic", str(data), "train")
    ids = dataset.ids[:2]
    samples = [dataset.load(i) for i in ids]
    h, w = samples[0].label.shape
    protocol = {"mean_bgr": [104.00698793, 116.66876762, 122.67891434], "resize": None,
                "pad": {"mode": "constant", "canvas": [h + 6, w + 10]},
                "scores_to_labels": "crop"}
    _run(data, tmp_path / "r.h5", [attack], limit=2, protocol=json.dumps(protocol),
         strong_labels="ground_truth", batch_images=2)
    assert len(seen) == 1
    shape, labels = seen[0]
    assert shape == (2, 3, h + 6, w + 10) and labels.shape == (2, h + 6, w + 10)
    for got, s in zip(labels, samples):
        np.testing.assert_array_equal(got[:h, :w], s.label)
        assert (got[h:] == 255).all() and (got[:, w:] == 255).all()
    seen.clear()
    _run(data, tmp_path / "p.h5", [attack], limit=2, protocol=json.dumps(protocol))
    assert seen[0][1] is None     # the prediction: the attack makes its own labels
