"""experiments.cost: the pass counts of a plan are what the pipeline really runs.

A counting wrapper around the tiny model counts every forward and backward
row the real attacks and the real pipeline ask for (a backward whose input is
not the last forward's counts the forward the engine re-runs); the plan's
counts must equal them, on an empty store and on a store holding part of the
records.
"""
import numpy as np
import pytest

pytest.importorskip("caffe")

from caffe_attacks.attacks import num_iterations  # noqa: E402
from caffe_attacks.datasets import synthetic  # noqa: E402
from caffe_attacks.experiments import cost  # noqa: E402
from caffe_attacks.runner import (RunOptions, Target, image_ids, make_configs,  # noqa: E402
                                  open_data, record_base, resolve_model, sweep)
from caffe_attacks.runner.registry import record_options  # noqa: E402
from caffe_attacks.store import ResultsStore  # noqa: E402


class Counting:
    """The model protocol around a model, counting forward and backward rows."""

    def __init__(self, model):
        self.model = model
        self.num_classes = model.num_classes
        self.score_blob = getattr(model, "score_blob", None)
        self.forwards = self.backwards = 0
        self.last = None

    def forward(self, x):
        self.forwards += x.shape[0]
        self.last = np.array(x, copy=True)
        return self.model.forward(x)

    def input_gradient(self, x, dscores):
        if self.last is None or self.last.shape != x.shape or not np.array_equal(self.last, x):
            self.forwards += x.shape[0]
            self.last = np.array(x, copy=True)
        self.backwards += x.shape[0]
        return self.model.input_gradient(x, dscores)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("cost") / "data"
    synthetic.main(["--format", "voc", "--out", str(d), "--n", "24", "--seed", "7",
                    "--width", "40", "--height", "32"])
    return d


def counted_sweep(data, store_path, limit=None, **fields):
    """Sweep tiny_synthetic through the real pipeline; returns (forwards, backwards)."""
    opts = RunOptions(model="tiny_synthetic", dataset="synthetic", data_dir=str(data),
                      quiet=True, limit=limit, **fields)
    dataset = open_data(opts)
    rm = resolve_model(opts)
    rm.model = Counting(rm.model)
    targets = [Target(rm, make_configs(record_base(rm, opts), opts))]
    with ResultsStore(str(store_path)) as store:
        sweep(dataset, image_ids(dataset, limit), rm, targets, store, opts, progress=False)
    return rm.model.forwards, rm.model.backwards


def planned(data, store_path, attacks, eps, limit=None, **fields):
    opts = RunOptions(model="tiny_synthetic", dataset="synthetic", data_dir=str(data),
                      limit=limit, attacks=tuple(attacks), eps=tuple(eps), **fields)
    ids = image_ids(open_data(opts), limit)
    run = cost.Run("tiny_synthetic", ["tiny_synthetic"], list(attacks), list(eps),
                   "synthetic", "val")
    with ResultsStore(str(store_path)) as store:
        c = cost.run_cost(run, store, ids, options_of=lambda a: record_options(opts, a))
    return c


def test_single_attack_closed_forms():
    assert cost.attack_passes("fgsm", [1, 2, 4]) == (1, 1)
    steps = num_iterations(0.5) + num_iterations(8) + num_iterations(32)
    assert steps == 1 + 10 + 36
    assert cost.attack_passes("ifgsm", [0.5, 8, 32]) == (1 + steps, steps)
    assert cost.attack_passes("ifgsm_ll", [0.5, 8, 32]) == (steps, steps)
    assert cost.attack_passes("ifgsm_ll", [8], {"target": "clean"}) == (11, 10)
    assert cost.attack_passes("no_such_attack", [8]) is None


@pytest.mark.parametrize("attacks, eps, fields", [
    (["fgsm"], [2, 8], {}),
    (["fgsm_ll"], [0.5], {}),
    (["ifgsm"], [0.5, 2, 8], {}),
    (["ifgsm_ll"], [1, 4], {}),
    (["ifgsm_ll"], [1, 4], {"ifgsm_ll_target": "clean"}),
    (["ifgsm", "ifgsm_ll"], [2, 8], {"batch_eps": True}),
    (["fgsm", "fgsm_ll", "ifgsm", "ifgsm_ll"], [0.25, 2, 8], {"batch_images": 2}),
    # the strong attacks: counted from the registry's per-record cost
    (["pgd"], [2, 8], {"iterations": 3}),
    (["segpgd", "cospgd"], [0.5, 4], {"iterations": 3}),
    (["pgd"], [4], {"iterations": 2, "restarts": 3}),
    (["apgd_mce", "apgd_js"], [2, 8], {"iterations": 5}),
    (["apgd_mce_bal"], [1], {"iterations": 12}),
    (["sea"], [2, 8], {"iterations": 4}),
    (["ifgsm", "pgd", "sea"], [0.5, 4], {"iterations": 3, "batch_images": 2}),
    # ground-truth labels: no clean-label forward
    (["pgd", "cospgd"], [2, 8], {"iterations": 3, "strong_labels": "ground_truth"}),
    (["segpgd"], [4], {"iterations": 2, "restarts": 3, "strong_labels": "ground_truth"}),
    (["sea"], [2], {"iterations": 4, "strong_labels": "ground_truth"}),
    (["ifgsm", "pgd", "apgd_js"], [0.5, 4], {"iterations": 3, "batch_images": 2,
                                            "strong_labels": "ground_truth"}),
], ids=["fgsm", "fgsm_ll", "ifgsm", "ifgsm_ll", "ifgsm_ll-clean", "batch-eps", "all-batched",
        "pgd", "segpgd-cospgd", "pgd-restarts", "apgd", "apgd-bal-12", "sea", "mixed-batched",
        "gt-pgd-cospgd", "gt-segpgd-restarts", "gt-sea", "gt-mixed-batched"])
def test_plan_counts_what_the_pipeline_runs(data, tmp_path, attacks, eps, fields):
    c = planned(data, tmp_path / "s.h5", attacks, eps, **fields)
    assert c.held == 0 and c.images == 6
    ran = counted_sweep(data, tmp_path / "s.h5", attacks=tuple(attacks), eps=tuple(eps),
                        **fields)
    assert c.totals() == ran
    # and the plan of the finished store is empty
    after = planned(data, tmp_path / "s.h5", attacks, eps, **fields)
    assert after.totals() == (0, 0) and after.held == 6 and after.units == 0


def test_strong_attacks_count_their_registry_cost_per_eps():
    from caffe_attacks.runner.registry import cost as registry_cost
    from caffe_attacks.strong_attacks.auto_pgd import expected_passes
    opts = record_options(RunOptions(iterations=7, restarts=2), "pgd")
    # PGD: the clean forward, restarts x steps, one forward per restart to keep the best
    assert cost.attack_passes("pgd", [1, 2, 4], opts) == (3 * (1 + 14 + 2), 3 * 14)
    assert registry_cost("pgd", opts) == {"forward": 17, "backward": 14}
    f, b = expected_passes(300)
    assert cost.attack_passes("apgd_js", [2]) == (f, b)
    # SEA: its three members, nothing of its own; eps 0 is no attack
    assert cost.attack_passes("sea", [0, 2, 8]) == (6 * f, 6 * b)
    # ground truth: the same schedule without the clean-label forward
    gt = record_options(RunOptions(iterations=7, restarts=2, strong_labels="ground_truth"), "pgd")
    assert registry_cost("pgd", gt) == {"forward": 16, "backward": 14}
    gt = record_options(RunOptions(strong_labels="ground_truth"), "apgd_js")
    assert registry_cost("apgd_js", gt) == {"forward": f - 1, "backward": b}
    assert cost.attack_passes("sea", [2], gt) == (3 * (f - 1), 3 * b)


def test_a_ground_truth_transfer_plans_the_source_forward_for_its_score_grid():
    opts = record_options(RunOptions(iterations=3, strong_labels="ground_truth"), "pgd")
    run = cost.Run("src", ["tgt"], ["pgd"], [2, 8], "synthetic", "val", transfer=True)
    missing = {("tgt", "clean", 0.0), ("tgt", "pgd", 2.0), ("tgt", "pgd", 8.0)}
    passes, _ = cost.image_passes(run, missing, lambda a: opts)
    assert passes[("src", "label grid")] == (1, 0)
    assert passes[("src", "pgd")] == (2 * 3, 2 * 3)
    # white-box: the clean forward of the source gives the grid
    run = cost.Run("tgt", ["tgt"], ["pgd"], [2, 8], "synthetic", "val")
    passes, _ = cost.image_passes(run, missing, lambda a: opts)
    assert ("tgt", "label grid") not in passes


def test_sea_plan_needs_no_passes_once_its_members_are_stored(data, tmp_path):
    store = tmp_path / "members.h5"
    counted_sweep(data, store, attacks=("apgd_mce", "apgd_mce_bal", "apgd_js"), eps=(2.0,),
                  iterations=3)
    c = planned(data, store, ["sea"], [2], iterations=3)
    assert c.totals() == (0, 0) and c.held == 6 and c.units == 0
    # a member computed with other options is not SEA's
    c = planned(data, store, ["sea"], [2], iterations=4)
    assert c.held == 0 and c.totals()[1] == 6 * 3 * cost.attack_passes("apgd_mce", [2], {
        "iterations": 4})[1]


def test_plan_counts_only_what_the_store_lacks(data, tmp_path):
    store = tmp_path / "part.h5"
    counted_sweep(data, store, limit=2, attacks=("fgsm", "ifgsm"), eps=(2.0,))
    counted_sweep(data, store, limit=4, attacks=("ifgsm",), eps=(8.0,))
    c = planned(data, store, ["fgsm", "ifgsm"], [2, 8])
    assert c.held == 0 and c.units == 2     # 6 images lacking something, 4 per unit
    ran = counted_sweep(data, store, attacks=("fgsm", "ifgsm"), eps=(2.0, 8.0))
    assert c.totals() == ran
    full = planned(data, tmp_path / "empty.h5", ["fgsm", "ifgsm"], [2, 8])
    assert c.totals() < full.totals()


def test_every_table_has_a_plan():
    from caffe_attacks.experiments import list_ids, load
    for table in list_ids("table"):
        defn = load(table)
        runs = cost.table_runs(defn)
        if defn["kind"] == "params":
            assert runs == []
            continue
        assert runs, table
        costs = [cost.run_cost(r, None, n_images=10) for r in runs]
        f, b = map(sum, zip(*(c.totals() for c in costs)))
        assert f > 0 and f >= b, table
        assert cost.format_plan(table, costs).startswith(table)


@pytest.mark.parametrize("labels", ["prediction", "ground_truth"])
def test_a_transfer_plan_counts_what_the_pipeline_runs(data, tmp_path, labels):
    """Source and target are distinct nets: with ground truth the source runs once for its grid."""
    from caffe_attacks.runner import transfer_source_fields
    opts = RunOptions(model="tiny_synthetic", dataset="synthetic", data_dir=str(data), quiet=True,
                      attacks=("pgd", "apgd_mce"), eps=(2.0, 8.0), iterations=3, batch_images=2,
                      strong_labels=labels)
    dataset = open_data(opts)
    source, target = resolve_model(opts), resolve_model(opts)
    source.model, target.model = Counting(source.model), Counting(target.model)
    targets = [Target(target, make_configs(record_base(target, opts), opts,
                                           source=transfer_source_fields(source, opts)))]
    ids = image_ids(dataset, None)
    with ResultsStore(str(tmp_path / "t.h5")) as store:
        sweep(dataset, ids, source, targets, store, opts, progress=False)
    ran = (source.model.forwards + target.model.forwards,
           source.model.backwards + target.model.backwards)
    run = cost.Run("src", ["tgt"], ["pgd", "apgd_mce"], [2, 8], "synthetic", "val", True)
    c = cost.run_cost(run, None, ids, options_of=lambda a: record_options(opts, a))
    assert c.totals() == ran
