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
