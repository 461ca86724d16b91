"""The demo pipeline on the embedded tiny model: honest orderings and complete outputs.

A short run (a few images, a few eps) must show what the paper's tables show:
the IoU falls as eps grows, and at the same eps the iterative attacks are
stronger than their single-step counterparts (measured, not assumed).

Measured on 3 images: Iterative FGSM II with the authors' target (the least
likely class of the *current* iterate) is weaker than FGSM II at eps 16 on
this 5-class model (77.5 vs 76.9 % mIoU) and stronger at 32 (57.9 vs 59.6);
with the target fixed from the clean image it is stronger at both (73.1,
42.3). With five classes the least likely class of the iterate keeps
changing, so successive steps chase different targets; the tests check the
targeted pair where the claim holds for each target rule (README, Demo).
"""
import os

import numpy as np
import pytest

from tests.conftest import requires_caffe, requires_tiny_weights

EPS = [8.0, 32.0]
N_IMAGES = 3


pytestmark = [requires_caffe, requires_tiny_weights]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from caffe_attacks.demo import run_demo
    root = tmp_path_factory.mktemp("demo")
    out = str(root / "out")
    paths, reports, table = run_demo(data_dir=str(root / "synthetic"), out_dir=out,
                                     limit=N_IMAGES, progress=False, eps=EPS)
    return {"paths": paths, "reports": reports, "table": table, "out": out,
            "data": str(root / "synthetic")}


def _row(table, label):
    row = table.values[table.row_labels.index(label)]
    return dict(zip([float(c) for c in table.col_labels], (v.ours for v in row)))


def test_the_run_is_complete_and_partial(demo):
    assert all(not r.missing and not r.failed for r in demo["reports"])
    t = demo["table"]
    assert [float(c) for c in t.col_labels] == [0.0] + EPS
    assert all(v.ours is not None and v.n_images == N_IMAGES for row in t.values for v in row)
    assert t.partial          # 3 of the 100 validation images
    for ext in ("md", "csv", "tex"):
        assert os.path.join(demo["out"], "demo_table." + ext) in demo["paths"]
    for name in ("demo_curves", "demo_perturbation"):
        for ext in ("png", "pdf"):
            path = os.path.join(demo["out"], "%s.%s" % (name, ext))
            assert path in demo["paths"] and os.path.getsize(path) > 1000


@pytest.mark.parametrize("attack", ["FGSM", "FGSM II", "Iterative FGSM", "Iterative FGSM II"])
def test_iou_falls_as_eps_grows(demo, attack):
    row = _row(demo["table"], attack)
    values = [row[e] for e in [0.0] + EPS]
    assert all(a >= b for a, b in zip(values, values[1:])), values
    assert values[-1] < values[0], values


@pytest.mark.parametrize("iterative,single", [("Iterative FGSM", "FGSM"),
                                              ("Iterative FGSM II", "FGSM II")])
def test_iterative_attacks_are_stronger_than_single_step(demo, iterative, single):
    it, one = _row(demo["table"], iterative), _row(demo["table"], single)
    for e in (EPS if single == "FGSM" else [32.0]):
        assert it[e] < one[e], (e, it[e], one[e])


@pytest.mark.slow
def test_iterative_fgsm_ii_with_a_fixed_target_is_stronger_at_eps_16(demo, tmp_path):
    from caffe_attacks import run
    from caffe_attacks.store import ResultsStore
    out = str(tmp_path / "fixed.h5")
    assert run.main(["--model", "tiny_synthetic", "--dataset", "synthetic", "--data-dir",
                     demo["data"], "--limit", str(N_IMAGES), "--attack", "fgsm_ll", "ifgsm_ll",
                     "--eps", "16", "--ifgsm-ll-target", "clean", "--out", out, "--quiet"]) == 0
    s = ResultsStore(out, readonly=True)
    miou = {c["attack"]: s.summary(k)["miou"] for k, c in s.configs().items()}
    assert miou["ifgsm_ll"] < miou["fgsm_ll"] < miou["clean"], miou


def test_saved_fgsm_perturbation_is_eps_times_a_sign(demo):
    """The perturbation figure shows the attack's own delta: +-eps wherever it moved."""
    from caffe_attacks.experiments import example_path
    with np.load(example_path(os.path.join(demo["out"], "examples"), "demo_perturbation",
                              "tiny_synthetic")) as z:
        for e in (8.0, 32.0):
            d = np.abs(z["delta_fgsm_%g" % e])
            moved = d > 1e-3
            assert moved.mean() > 0.5
            np.testing.assert_allclose(d[moved], e, rtol=1e-4)


def test_a_second_run_resumes_without_new_records(demo):
    from caffe_attacks.demo import run_demo
    from caffe_attacks.store import ResultsStore
    store = os.path.join(demo["out"], "store.h5")
    before = {k: ResultsStore(store, readonly=True).summary(k)["n_images"]
              for k in ResultsStore(store, readonly=True).configs()}
    run_demo(data_dir=demo["data"], out_dir=demo["out"], limit=N_IMAGES, progress=False, eps=EPS)
    s = ResultsStore(store, readonly=True)
    assert {k: s.summary(k)["n_images"] for k in s.configs()} == before
