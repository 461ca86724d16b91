"""The runner's seams: RunOptions, the attack registry, the one pipeline, the CLI boundary.

Pure numpy (a 1x1-conv linear model): the pipeline's records against values
computed by hand, a registered attack flowing through to the records, a
batch of images against one at a time, a transfer to the same net against
the white-box records; the CLI boundary's exit codes.
"""
import json

import numpy as np
import pytest

from caffe_attacks import run, runner, transfer
from caffe_attacks.attacks import ATTACKS, PAPER_EPS, fgsm
from caffe_attacks.cli import run_cli
from caffe_attacks.datasets import Sample
from caffe_attacks.errors import UsageError
from caffe_attacks.metrics import confusion_matrix
from caffe_attacks.preprocess import Protocol
from caffe_attacks.runner import RunOptions, Target, attack_batch, make_configs, record_base
from caffe_attacks.runner import registry
from caffe_attacks.store import ResultsStore, config_key
from tests.models import LinearPixelModel

PROTOCOL = {"mean_bgr": [100.0, 110.0, 120.0], "resize": None, "pad": None,
            "scores_to_labels": "crop"}


def _model(name="lin", seed=0):
    rng = np.random.default_rng(seed)
    model = LinearPixelModel(rng.normal(0, 1, (4, 3)), rng.normal(0, 30, 4))
    return runner.ResolvedModel(model, Protocol.from_dict(PROTOCOL), name, None, "md5", False, 4)


def _samples(n, hw=(6, 8), seed=1):
    rng = np.random.default_rng(seed)
    return [Sample("img%d" % i, rng.integers(0, 255, hw + (3,)).astype(np.uint8),
                   rng.integers(0, 4, hw).astype(np.uint8)) for i in range(n)]


def _options(**kw):
    fields = dict(dataset="synthetic", data_dir="d", attacks=("fgsm", "ifgsm"), eps=(2.0, 8.0))
    return RunOptions(**dict(fields, **kw))


# ------------------------------------------------------------------ RunOptions

@pytest.mark.parametrize("changes, message", [
    ({"limit": 0}, "--limit"), ({"eps": (-1,)}, "bad --eps"), ({"eps": ("nan",)}, "bad --eps"),
    ({"eps": ()}, "bad --eps"), ({"batch_images": 0}, "--batch-images"),
    ({"batch_images": 2, "batch_eps": True}, "cannot be combined"),
    ({"blas_threads": 0}, "--blas-threads"), ({"engine": "tensorflow"}, "unknown engine"),
    ({"dataset": "imagenet"}, "unknown dataset kind"), ({"attacks": ("deepfool",)}, "unknown attack"),
    ({"crf": ["theta_alfa=1"]}, "bad --crf"), ({"crf_w2_mode": "double"}, "--crf-w2-mode"),
    ({"ifgsm_ll_target": "random"}, "--ifgsm-ll-target"),
    ({"save_examples": ("d", "x")}, "integer"), ({"save_examples": ("d", -1)}, ">= 0"),
])
def test_bad_options_are_usage_errors_naming_the_option(changes, message):
    with pytest.raises(UsageError, match=message):
        _options(**changes)


def test_options_normalise_eps_and_crf_overrides():
    o = _options(eps=("1", 2), crf=["theta_alpha=1", "num_iterations=3.0"])
    assert o.eps == (1.0, 2.0)
    assert o.crf == {"theta_alpha": 1.0, "num_iterations": 3}
    assert isinstance(o.crf["num_iterations"], int)
    assert o.crf_record() == {"theta_alpha": 1.0, "num_iterations": 3}
    assert o.replace(crf={"w2": 5}).crf_record() == {"w2": 5.0, "w2_mode": "scale_learned"}
    with pytest.raises(UsageError):
        o.replace(limit=-3)


def test_w2_modes_agree_with_the_meanfield_layer():
    from caffe_attacks.layers import meanfield
    from caffe_attacks.runner import options
    assert options.W2_MODES == meanfield.W2_MODES


@pytest.mark.parametrize("cli", [run, transfer])
def test_cli_defaults_are_the_run_options_defaults(cli):
    argv = ["--dataset", "synthetic", "--data-dir", "d"]
    if cli is transfer:
        argv += ["--source", "a", "--target", "b"]
    opts = cli.options_from_args(cli.build_parser().parse_args(argv))
    defaults = RunOptions(dataset="synthetic", data_dir="d")
    differ = {f for f in RunOptions.__dataclass_fields__
              if getattr(opts, f) != getattr(defaults, f)}
    # transfer's own defaults: FGSM at eps 8 into results/transfer.h5 (Tables A15-A18)
    assert differ == (set() if cli is run else {"attacks", "eps", "out"})
    if cli is run:
        assert opts.eps == PAPER_EPS and opts.attacks == ATTACKS


# ------------------------------------------------------------------ registry

def test_record_options_per_attack():
    o = _options(alpha=0.5, ifgsm_ll_target="clean", clip_to_image=True)
    assert registry.record_options(o, "fgsm") == {"clip_to_image": True}
    assert registry.record_options(o, "ifgsm") == {"clip_to_image": True, "alpha": 0.5}
    assert registry.record_options(o, "ifgsm_ll") == {"clip_to_image": True, "alpha": 0.5,
                                                      "target": "clean"}
    assert registry.record_options(_options(batch_eps=True), "ifgsm")["batch_eps"] is True
    assert registry.attack_kwargs({"clip_to_image": True, "alpha": 0.5}, "box") == {
        "alpha": 0.5, "clip_to_image": "box"}


def test_a_registered_attack_runs_through_the_pipeline_with_its_options(monkeypatch, tmp_path):
    calls = []

    def shift(model, x, eps_list, *, step, clip_to_image=None):
        calls.append((list(eps_list), step))
        return [x + np.float32(min(e, step)) for e in eps_list]

    monkeypatch.setitem(registry.REGISTRY, "shift", registry.AttackEntry(
        "shift", shift, lambda options: {"step": options.alpha}))
    rm, samples = _model(), _samples(2)
    options = _options(attacks=("shift",), eps=(8.0, 2.0), alpha=3.0)
    configs = make_configs(record_base(rm, options), options)
    with ResultsStore(tmp_path / "r.h5") as store:
        added = attack_batch(samples, rm, [Target(rm, configs)], store, options)
        assert added == 2 * 3
        for attack, e, config in configs[1:]:
            assert config["options"] == {"clip_to_image": False, "step": 3.0}
            recs = store.records(config_key(config))
            assert [r["max_delta"] for r in recs] == [pytest.approx(min(e, 3.0))] * 2
    assert calls == [([2.0, 8.0], 3.0)]      # one call over both images and every eps


# ------------------------------------------------------------------ pipeline

def test_pipeline_records_equal_a_hand_computed_fgsm(tmp_path):
    rm, samples = _model(), _samples(3)
    options = _options(attacks=("fgsm",), eps=(4.0,))
    configs = make_configs(record_base(rm, options), options)
    with ResultsStore(tmp_path / "r.h5") as store:
        attack_batch(samples, rm, [Target(rm, configs)], store, options)
        for s in samples:
            x, _ = rm.protocol.prepare(s.image)
            clean = confusion_matrix(s.label, rm.model.forward(x)[0].argmax(0), 4)
            adv = confusion_matrix(s.label, rm.model.forward(fgsm(rm.model, x, 4.0))[0].argmax(0),
                                   4)
            (rec_clean,) = [r for r in store.records(config_key(configs[0][2]))
                            if r["id"] == s.id]
            (rec_adv,) = [r for r in store.records(config_key(configs[1][2])) if r["id"] == s.id]
            np.testing.assert_array_equal(rec_clean["cm_adv"], clean)
            np.testing.assert_array_equal(rec_adv["cm_clean"], clean)
            np.testing.assert_array_equal(rec_adv["cm_adv"], adv)
            assert rec_adv["max_delta"] == pytest.approx(4.0)
        # a second call adds nothing: every record exists
        assert attack_batch(samples, rm, [Target(rm, configs)], store, options) == 0


def test_a_batch_gives_the_records_of_one_image_at_a_time(tmp_path):
    rm, samples = _model(), _samples(4)
    options = _options(attacks=("fgsm_ll", "ifgsm_ll"), eps=(1.0, 8.0))
    configs = make_configs(record_base(rm, options), options)
    with ResultsStore(tmp_path / "a.h5") as a, ResultsStore(tmp_path / "b.h5") as b:
        attack_batch(samples, rm, [Target(rm, configs)], a, options)
        for s in samples:
            attack_batch([s], rm, [Target(rm, configs)], b, options)
        for _, _, config in configs:
            key = config_key(config)
            ra = {r["id"]: r for r in a.records(key)}
            rb = {r["id"]: r for r in b.records(key)}
            assert set(ra) == set(rb) == {s.id for s in samples}
            for i in ra:
                np.testing.assert_array_equal(ra[i]["cm_adv"], rb[i]["cm_adv"])
                assert ra[i]["max_delta"] == rb[i]["max_delta"]


def test_transfer_to_the_source_itself_repeats_the_white_box_records(tmp_path):
    rm, samples = _model(), _samples(2)
    twin = _model()                       # the same net, loaded apart
    options = _options()
    white = make_configs(record_base(rm, options), options)
    from caffe_attacks.runner.transfer import transfer_targets
    plan = transfer_targets(rm, [twin], options)
    with ResultsStore(tmp_path / "r.h5") as store:
        attack_batch(samples, rm, [Target(rm, white)] + plan, store, options)
        assert len(store.configs()) == 1 + 2 * 4      # the clean configuration is shared
        for (_, _, w), (_, _, t) in zip(white[1:], plan[0].configs[1:]):
            assert t["source"]["model"] == "lin" and "source" not in w
            rw = sorted(store.records(config_key(w)), key=lambda r: r["id"])
            rt = sorted(store.records(config_key(t)), key=lambda r: r["id"])
            for a, b in zip(rw, rt):
                np.testing.assert_array_equal(a["cm_adv"], b["cm_adv"])
                assert a["max_delta"] == b["max_delta"]


def test_examples_without_a_store_see_every_configuration():
    rm, (sample,) = _model(), _samples(1)
    options = _options()
    configs = make_configs(record_base(rm, options), options)

    class Sink:
        def save(self, s, model, x, ctx, pred_clean, shown):
            self.got = (s.id, model, pred_clean.shape, [(a, e) for a, e, _, _ in shown])

    sink = Sink()
    assert attack_batch([sample], rm, [Target(rm, configs)], None, options, examples=sink) == 0
    assert sink.got == ("img0", rm, (6, 8), [("fgsm", 2.0), ("fgsm", 8.0), ("ifgsm", 2.0),
                                             ("ifgsm", 8.0)])


# ------------------------------------------------------------------ resolver, CLI boundary

@pytest.mark.parametrize("model, message", [("no_such_model", "unknown zoo model"),
                                            ("tiny_synthetic@1.5", "bad variant"),
                                            (None, "give --model NAME or --prototxt")])
def test_resolver_rejects_unknown_names(model, message):
    with pytest.raises(UsageError, match=message):
        runner.resolve_model(_options(model=model))


def test_protocol_from_json_text_or_file(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(PROTOCOL))
    assert runner.parse_protocol(str(path)) == runner.parse_protocol(json.dumps(PROTOCOL)) \
        == Protocol.from_dict(PROTOCOL)
    with pytest.raises(UsageError, match="--protocol"):
        runner.parse_protocol("{not json")


def test_cli_boundary_exit_codes(capsys):
    def fail(exc):
        def body():
            raise exc
        return body

    assert run_cli(lambda: 0) == 0
    assert run_cli(fail(UsageError("bad input"))) == 2
    assert capsys.readouterr().err == "error: bad input\n"
    assert run_cli(fail(KeyError("unknown thing"))) == 2
    assert capsys.readouterr().err == "error: unknown thing\n"
    assert run_cli(fail(KeyboardInterrupt()), resume_hint="run it again") == 130
    assert capsys.readouterr().err.strip() == "interrupted; run it again"
    with pytest.raises(ZeroDivisionError):      # a bug keeps its traceback
        run_cli(fail(ZeroDivisionError()))


def test_a_closed_pipe_ends_the_cli_without_a_traceback():
    import subprocess
    import sys
    code = ("import sys; from caffe_attacks.cli import run_cli\n"
            "def body():\n"
            "    for i in range(200000):\n"
            "        print('line %d' % i)\n"
            "    return 0\n"
            "sys.exit(run_cli(body))\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()                  # as `| head -1` does
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and "Traceback" not in err, err
