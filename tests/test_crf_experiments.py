"""CRF overrides (caffe_attacks.crf, run --crf) and the experiment runners behind
`make figure-A9` ... `figure-A14`, `table-A13` ... `table-A18`, `figure-A6` ... `A8`.

Pure Python: override parsing; the rewritten definition equals crf_variant's
settings; the blob adjustment equals crf_variant's blobs. Caffe, on the
embedded tiny_synthetic (+crf) and the synthetic set: an override changes the
net to exactly the numpy mean-field with the overridden settings and is
recorded as "crf"; experiment definitions of every CRF and transfer kind,
pointed at the tiny nets, fill every point and cell their figure or table
reads, resumably, with the white-box diagonal equal to the runner's numbers.
"""
import json

import numpy as np
import pytest

from caffe_attacks import crf
from caffe_attacks import experiments as E
from caffe_attacks import run as runner
from caffe_attacks.experiments.__main__ import main as experiments_main
from caffe_attacks.runner import RunOptions, resolve_model
from caffe_attacks import zoo
from caffe_attacks.layers.meanfield import DEFAULTS, W2_MODES, crf_variant, deeplab_crf_layer
from caffe_attacks.store import ResultsStore
from tests.conftest import requires_caffe

EPS = [2, 8]


# ------------------------------------------------------------------ pure Python

def test_overrides_are_typed_and_checked():
    got = crf.parse_overrides(["theta_alpha=1", "num_iterations=5", "w2=10", "theta_alpha=2"])
    assert got == {"theta_alpha": 2.0, "num_iterations": 5, "w2": 10.0}
    assert isinstance(got["theta_alpha"], float) and isinstance(got["num_iterations"], int)
    for bad, message in [(["foo=1"], "unknown CRF key"), (["theta_alpha=0"], "positive"),
                         (["theta_beta=x"], "number"), (["num_iterations=2.5"], "integer"),
                         (["w2=1", "spatial_filter_weight=2"], "not both"),
                         (["theta_alpha"], "KEY=VALUE")]:
        with pytest.raises(crf.CrfError, match=message):
            crf.parse_overrides(bad)
    assert crf.record_field({}) is None
    assert crf.record_field({"w2": 5.0}, "replace_diagonal") == {"w2": 5.0,
                                                               "w2_mode": "replace_diagonal"}


def test_rewritten_definition_has_crf_variants_settings_and_nothing_else_changes():
    text = zoo.prototxt_path("crfrnn_voc").read_text()
    overrides = {"theta_alpha": 1.0, "theta_gamma": 5.0, "num_iterations": 4}
    new, layers = crf.override_definition(text, overrides)
    assert [n for n, _ in layers] == ["inference1"] and layers[0][1] == dict(DEFAULTS)
    assert crf.meanfield_layers(new)[0][1] == crf_variant(overrides)["params"]
    changed = [(a, b) for a, b in zip(text.splitlines(), new.splitlines()) if a != b]
    assert len(changed) == 1 and "param_str" in changed[0][0]
    assert len(text.splitlines()) == len(new.splitlines())
    # w2 is a blob matter: the definition keeps the reference spatial weight
    assert crf.meanfield_layers(crf.override_definition(text, {"w2": 5.0})[0])[0][1] == DEFAULTS
    with pytest.raises(crf.CrfError, match="no MultiStageMeanfield"):
        crf.override_definition(zoo.prototxt_path("tiny_synthetic").read_text(), overrides)


def test_a_crf_query_matches_only_that_variant():
    config = {"model": "m", "engine": "caffe", "crf": {"theta_alpha": 1.0, "w2": 5.0,
                                                       "w2_mode": "scale_learned"}}
    assert E.config_matches(config, {"model": "m", "crf": {"theta_alpha": 1, "w2": 5,
                                                           "w2_mode": "scale_learned"}})
    assert not E.config_matches(config, {"model": "m", "crf": {"theta_alpha": 1}})
    assert not E.config_matches(config, {"model": "m"})     # nor the public model's cells


class _BlobModel:
    """The TorchNet side of the blob interface (params / set_params)."""

    def __init__(self, blobs):
        self._blobs = {"inference1": [np.array(b) for b in blobs]}

    @property
    def params(self):
        return {k: [b.copy() for b in v] for k, v in self._blobs.items()}

    def set_params(self, params):
        for k, v in params.items():
            self._blobs[k] = [np.array(b) for b in v]


@pytest.mark.parametrize("mode", W2_MODES)
def test_w2_on_learned_blobs_equals_crf_variant(mode):
    rng = np.random.default_rng(0)
    learned = [rng.normal(0, 1, (1, 1, 21, 21)).astype(np.float32) for _ in range(3)]
    model = _BlobModel(learned)
    crf.adjust_blobs(model, [("inference1", dict(DEFAULTS))], {"w2": 5.0}, mode)
    expected = crf_variant({"w2": 5.0}, learned, mode)["blobs"]
    for ours, theirs in zip(model.params["inference1"], expected):
        np.testing.assert_allclose(ours, theirs, rtol=1e-6)
    assert not np.allclose(expected[0], learned[0])
    crf.adjust_blobs(model, [("inference1", dict(DEFAULTS))], {"bilateral_filter_weight": 7.0})
    after = model.params["inference1"]
    np.testing.assert_array_equal(after[1], 7 * np.eye(21, dtype=np.float32)[None, None])
    np.testing.assert_array_equal(after[0], expected[0])
    np.testing.assert_array_equal(after[2], learned[2])


# ------------------------------------------------------------------ Caffe

@pytest.fixture
def data_dir(small_synthetic_voc):
    return small_synthetic_voc


def _run(data_dir, out, *extra):
    argv = ["--dataset", "synthetic", "--data-dir", str(data_dir), "--limit", "2", "--quiet",
            "--out", str(out), "--attack", "fgsm", "--eps", "4", *extra]
    return runner.main(argv)


@requires_caffe
def test_crf_override_changes_the_net_exactly_and_is_recorded(data_dir, tmp_path, capsys):
    from caffe_attacks.caffe_net import CaffeNet
    from caffe_attacks.layers.meanfield import MeanfieldInference
    out = tmp_path / "r.h5"
    assert _run(data_dir, out, "--model", "tiny_synthetic+crf") == 0
    assert _run(data_dir, out, "--model", "tiny_synthetic+crf", "--crf", "theta_alpha=1",
                "--crf", "w2=10") == 0
    with ResultsStore(out, readonly=True) as store:
        configs = store.configs()
        plain = {c["attack"]: k for k, c in configs.items() if "crf" not in c}
        variant = {c["attack"]: k for k, c in configs.items() if "crf" in c}
        assert set(plain) == set(variant) == {"clean", "fgsm"}
        for attack in plain:
            a, b = configs[plain[attack]], configs[variant[attack]]
            assert b["crf"] == {"theta_alpha": 1.0, "w2": 10.0, "w2_mode": "scale_learned"}
            assert {k: v for k, v in b.items() if k != "crf"} == a
        sums = [(store.summary(plain[a])["confidence"], store.summary(variant[a])["confidence"])
                for a in plain]
    assert all(p != v for p, v in sums), "the override changed nothing"

    # the overridden net is the numpy mean-field with those settings on the tiny logits
    rm = resolve_model(RunOptions(model="tiny_synthetic+crf", crf=["theta_alpha=1", "w2=10"],
                                  dataset="synthetic", data_dir=str(data_dir), quiet=True))
    assert rm.crf == {"theta_alpha": 1.0, "w2": 10.0, "w2_mode": "scale_learned"}
    x = np.random.default_rng(0).normal(0, 40, (1, 3, 32, 48)).astype(np.float32)
    weights = rm.weights_path
    unary = CaffeNet(zoo.build("tiny_synthetic", input_hw=(32, 48)), weights,
                     score_blob="score").forward(x)
    base = deeplab_crf_layer(5)
    params = dict(base["params"], theta_alpha=1.0)
    blobs = [base["blobs"][0] * 10 / 3, base["blobs"][1], base["blobs"][2]]
    expected = MeanfieldInference(params).forward(unary, unary, x, blobs)
    np.testing.assert_allclose(rm.model.forward(x), expected, rtol=1e-4, atol=1e-4)
    default = MeanfieldInference(base["params"]).forward(unary, unary, x, base["blobs"])
    assert np.abs(expected - default).max() > 0.1


@requires_caffe
def test_crf_errors_are_one_line(data_dir, tmp_path, capsys):
    assert _run(data_dir, tmp_path / "r.h5", "--model", "tiny_synthetic",
                "--crf", "theta_alpha=1") == 2
    assert "no MultiStageMeanfield layer" in capsys.readouterr().err
    # a bad key is reported before the (here missing) weights are looked for
    assert _run(data_dir, tmp_path / "r.h5", "--model", "crfrnn_voc", "--weights-dir",
                str(tmp_path), "--crf", "theta_alfa=1") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: bad --crf: unknown CRF key 'theta_alfa'"), err


def _write(directory, defn):
    (directory / ("%s.json" % defn["id"])).write_text(json.dumps(defn))


def _main(what, names, directory, results, data_dir):
    return experiments_main([what, *names, "--experiments", str(directory), "--results", str(results),
                   "--synthetic-dir", str(data_dir), "--limit", "2", "--quiet"])


def _counts(store_path):
    with ResultsStore(store_path, readonly=True) as store:
        return {k: store.summary(k)["n_images"] for k in store.configs()}


SWEEP = {"id": "fig_T9", "kind": "crf_sweep", "model": "tiny_synthetic+crf",
         "dataset": "synthetic", "split": "val", "attack": "fgsm", "eps": EPS,
         "baseline": {"theta_gamma": 1, "w2": 3}, "sweep": {"theta_gamma": [1, 5], "w2": [3, 10]},
         "sweep_mode": "grid", "w2_mode": "scale_learned", "caption": "tiny sweep"}
CONFIDENCE = {"id": "fig_T13", "kind": "crf_confidence",
              "models": ["tiny_synthetic", "tiny_synthetic+crf"], "variants_from": ["fig_T9"],
              "dataset": "synthetic", "split": "val", "attack": "fgsm", "eps": [0] + EPS,
              "y": "mean_confidence", "caption": "tiny confidence"}
DEEPLAB = {"id": "fig_T12", "kind": "crf_deeplab", "dataset": "synthetic", "split": "val",
           "eps": EPS, "caption": "tiny A12", "panels": [
               {"panel": "a", "attack": "fgsm", "source": "tiny_synthetic+crf",
                "target": "tiny_synthetic+crf", "compare": "tiny_synthetic"},
               {"panel": "b", "attack": "fgsm", "source": "tiny_synthetic",
                "target": "tiny_synthetic+crf", "compare_white_box": True},
               {"panel": "c", "attack": "fgsm_ll", "source": "tiny_synthetic+crf",
                "target": "tiny_synthetic+crf", "compare": "tiny_synthetic"}]}


@requires_caffe
def test_crf_figures_are_filled_and_resumable(data_dir, tmp_path):
    from caffe_attacks.report import figures
    for d in (SWEEP, CONFIDENCE, DEEPLAB):
        _write(tmp_path, d)
    results = tmp_path / "results"
    assert _main("figure", ["fig_T9", "fig_T13", "fig_T12"], tmp_path, results, data_dir) == 0
    store_path = results / "store.h5"
    with ResultsStore(store_path, readonly=True) as store:
        # every sweep point: the baseline is the model itself, the others its variants
        curves = {}
        for label, overrides in E.sweep_points(SWEEP):
            base = E.crf_variant_query(SWEEP, overrides)
            assert ("crf" in base) == (overrides != {"theta_gamma": 1, "w2": 3})
            ratios, n = figures.ratio_curve(store, base, "fgsm", EPS)
            assert n == 2 and np.isfinite(ratios).all(), label
            curves[label] = tuple(ratios) + (figures.summary_at(
                store, dict(base, attack="clean", eps=0.0))["confidence"],)
        assert len(set(curves.values())) == 4, "variants must be different nets"
        # Figure A13/A14: every model and variant at every eps
        for base in [{"model": m, "dataset": "synthetic", "split": "val"}
                     for m in CONFIDENCE["models"]] + [
                E.crf_variant_query(SWEEP, o) for _, o in E.sweep_points(SWEEP)]:
            for e in CONFIDENCE["eps"]:
                q = dict(base, attack="fgsm" if e else "clean", eps=float(e))
                assert figures.summary_at(store, q) is not None, q
        # Figure A12: every line of every panel, the transfer with its source
        for p in DEEPLAB["panels"]:
            base = {"model": p["target"], "dataset": "synthetic", "split": "val"}
            query = dict(base, **figures.transfer_query_fields(p["source"], p["target"]))
            ratios, n = figures.ratio_curve(store, query, p["attack"], EPS, clean_query=base)
            assert n == 2 and np.isfinite(ratios).all(), p
            if p.get("compare"):
                assert np.isfinite(figures.ratio_curve(
                    store, dict(base, model=p["compare"]), p["attack"], EPS)[0]).all()
        transferred = [c for c in store.configs().values() if c.get("source")]
        assert {(c["source"]["model"], c["model"]) for c in transferred} == {
            ("tiny_synthetic", "tiny_synthetic+crf")}
    for name in ("fig_T9", "fig_T13", "fig_T12"):
        assert (results / "figures" / (name + ".png")).stat().st_size > 0
    before = _counts(store_path)
    assert len(before) == 3 * 4 + 3 + 2 + 2 + len(EPS)   # sweep, tiny, fgsm_ll, transfer
    assert _main("figure", ["fig_T9", "fig_T13", "fig_T12"], tmp_path, results, data_dir) == 0
    assert _counts(store_path) == before and set(before.values()) == {2}


NETS = ["tiny_synthetic@0.5", "tiny_synthetic@max", "tiny_synthetic"]
MATRIX = {"id": "table_T15", "kind": "transfer_matrix", "caption": "tiny transfer",
          "dataset": "synthetic", "split": "val", "metric": "iou_ratio",
          "attacks": ["fgsm", "ifgsm_ll"], "eps": 8, "fusion": "max", "sources": NETS,
          "targets": NETS, "column_labels": ["50%", "max", "plain"],
          "row_labels": ["50%", "max", "plain"], "paper": {}}
CLEAN = {"id": "table_T13", "kind": "multiscale_clean", "caption": "tiny scales",
         "dataset": "synthetic", "split": "val", "metric": "miou", "models": NETS,
         "row_labels": ["50%", "max", "plain"], "paper": {}}
CURVES = {"id": "fig_T7", "kind": "transfer_curves", "caption": "tiny curves",
          "dataset": "synthetic", "split": "val", "attacks": ["fgsm"], "eps": EPS,
          "sources": NETS[:2], "targets": NETS[:2], "white_box_only": False}


@requires_caffe
def test_transfer_tables_are_filled_with_the_runners_white_box_diagonal(data_dir, tmp_path):
    from caffe_attacks.report import figures, tables
    for d in (MATRIX, CLEAN, CURVES):
        _write(tmp_path, d)
    results = tmp_path / "results"
    assert _main("table", ["table_T15", "table_T13"], tmp_path, results, data_dir) == 0
    assert _main("figure", ["fig_T7"], tmp_path, results, data_dir) == 0
    white = tmp_path / "white.h5"
    assert runner.main(["--model", "tiny_synthetic", "--dataset", "synthetic", "--data-dir",
                        str(data_dir), "--limit", "2", "--quiet", "--out", str(white),
                        "--attack", "fgsm", "ifgsm_ll", "--eps", "8"]) == 0
    ours = json.loads(white.with_suffix(".json").read_text())["rows"]
    by_attack = {r["attack"]: r for r in ours}
    with ResultsStore(results / "store.h5", readonly=True) as store:
        matrix = tables.build(E.load("table_T15", tmp_path), store)
        clean = tables.build(E.load("table_T13", tmp_path), store)
        for c, attack in enumerate(a for a in MATRIX["attacks"] for _ in NETS):
            source = NETS[c % len(NETS)]
            for r, target in enumerate(NETS):
                v = matrix.values[r][c]
                assert v.ours is not None and v.n_images == 2, (target, source, attack)
                if source == target == "tiny_synthetic":
                    assert v.ours == pytest.approx(100 * by_attack[attack]["iou_ratio"],
                                                   rel=1e-12)
        assert [row[0].ours is not None for row in clean.values] == [True] * len(NETS)
        assert clean.values[2][0].ours == pytest.approx(100 * by_attack["clean"]["miou"],
                                                        rel=1e-12)
        # the transfer figure's every (source, target) line
        for target in CURVES["targets"]:
            base = {"model": target, "dataset": "synthetic", "split": "val"}
            for source in CURVES["sources"]:
                ratios, n = figures.ratio_curve(store, dict(base, source={"model": source}),
                                                "fgsm", EPS, clean_query=base)
                assert n == 2 and np.isfinite(ratios).all(), (source, target)
        # off-diagonal cells are other numbers than the white-box ones
        row = [v.ours for v in matrix.values[0][:len(NETS)]]
        assert len(set(row)) == len(NETS)
    assert (results / "tables" / "table_T15.md").exists()


@pytest.mark.parametrize("what, name, model", [("figure", "A12", "deeplabv2_resnet101_msc_voc"),
                                               ("table", "A15", "deeplabv2_resnet101_msc_voc")])
def test_make_target_without_weights_or_data_names_them_once(tmp_path, what, name, model):
    """As `make figure-A12` runs it (the module is __main__): readable, deduplicated."""
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-m", "caffe_attacks.experiments", what, name,
                           "--results", str(tmp_path), "--weights-dir", str(tmp_path / "w"),
                           "--quiet"], capture_output=True, text=True, timeout=120,
                          cwd=str(E.REPO_ROOT))
    assert proc.returncode == 2, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.startswith("missing")]
    assert "Missing(" not in proc.stderr
    # NAME and NAME+crf share one caffemodel: it is named once
    assert sum("deeplabv2_resnet101_voc.caffemodel" in l for l in lines) == 1, lines
    assert any("weights for %s not found" % model in l for l in lines)
    assert any("VOC_DIR=" in l for l in lines)
    assert "wrote" in proc.stdout
