"""The CRF experiments (supplementary A5, Figures A9-A14): what they need, and running it.

:func:`run_experiment` is the experiment runner of the crf_sweep,
crf_confidence and crf_deeplab kinds: every CRF variant is a white-box job of
the runner with CRF overrides (:mod:`caffe_attacks.crf`), and Figure A12 (b)'s
panel a transfer (crafted on the unary net, evaluated on the +crf net).
"""
import json
import logging

from caffe_attacks.errors import UsageError
from caffe_attacks.experiments.definitions import (EXPERIMENTS_DIR, ExperimentError,
                                                   crf_variant_query, load, sweep_points)
from caffe_attacks.experiments.jobs import EnsureReport, Job, run_job
from caffe_attacks.experiments.transfer import ExperimentSession, describe_run, missing_inputs
from caffe_attacks.runner.units import DEFAULT_UNIT_IMAGES

log = logging.getLogger(__name__)


def sweep_variants(sweep):
    """[(model, "crf" field or None)] of a crf_sweep definition's points."""
    return [(sweep["model"], crf_variant_query(sweep, overrides).get("crf"))
            for _, overrides in sweep_points(sweep)]


def plan_runs(defn, experiments_dir=None):
    """What a CRF definition needs, as runner jobs and transfers.

    Returns
    -------
    runs : list of (model, crf field or None, attacks, eps): runner jobs, one
        per net (a CRF variant is a net of its own)
    transfers : list of (source, target, attacks, eps)
    """
    eps = [float(e) for e in defn["eps"] if e]
    jobs = {}          # (model, crf key) -> [model, crf, attacks, eps]

    def want(model, crf, attacks):
        key = (model, json.dumps(crf, sort_keys=True))
        job = jobs.setdefault(key, [model, crf, [], list(eps)])
        job[2] += [a for a in attacks if a not in job[2]]

    transfers = []
    kind = defn["kind"]
    if kind == "crf_sweep":
        for model, crf in sweep_variants(defn):
            want(model, crf, [defn["attack"]])
    elif kind == "crf_confidence":
        for model in defn["models"]:
            want(model, None, [defn["attack"]])
        for sweep_id in defn.get("variants_from", ()):
            try:
                sweep = load(sweep_id, experiments_dir or EXPERIMENTS_DIR)
            except ExperimentError as e:
                log.warning("%s: %s", defn["id"], e)
                continue
            for model, crf in sweep_variants(sweep):
                want(model, crf, [defn["attack"]])
    elif kind == "crf_deeplab":
        for p in defn["panels"]:
            if p["source"] == p["target"] or p.get("compare_white_box"):
                want(p["target"], None, [p["attack"]])
            if p["source"] != p["target"]:
                transfers.append((p["source"], p["target"], [p["attack"]], eps))
            if p.get("compare"):
                want(p["compare"], None, [p["attack"]])
    else:
        raise ExperimentError("%s is not a CRF experiment (kind %r)" % (defn["id"], kind))
    return [tuple(j) for j in jobs.values()], transfers


def run_experiment(defn, context):
    """The experiment runner of crf_sweep, crf_confidence and crf_deeplab.

    Runs (resumably, into context["store_path"]) every CRF variant through the
    runner and every transfer through the transfer runner. Returns an
    EnsureReport; missing weights or data are listed there, nothing raises for them.
    """
    report = EnsureReport()
    split = defn.get("split", "val")
    runs, transfers = plan_runs(defn, context.get("experiments_dir"))
    labels = sorted({m for m, _, _, _ in runs} | {n for s, t, _, _ in transfers for n in (s, t)})
    report.missing = missing_inputs(labels, defn["dataset"], split, context)
    if report.missing:
        return report
    for model, crf, attacks, eps in runs:
        job = Job(model, defn["dataset"], split, attacks, eps)
        what = job.describe() + (" with CRF %s" % json.dumps(crf, sort_keys=True) if crf else "")
        try:
            run_job(job, context["store_path"], context.get("data_dirs"),
                    context.get("weights_dir", "weights"), context.get("limit"),
                    context.get("progress", True), context.get("gpu"), crf=crf,
                    executor=context.get("executor"),
                    unit_images=context.get("unit_images", DEFAULT_UNIT_IMAGES))
            report.ran.append(what)
        except UsageError as e:
            report.failed.append((what, str(e)))
    session = None
    for source, target, attacks, eps in transfers:
        what = describe_run(source, [target], attacks, eps)
        try:
            session = session or ExperimentSession(defn["dataset"], split, context)
            session.run(source, [target], attacks, eps)
            report.ran.append(what)
        except UsageError as e:
            report.failed.append((what, str(e)))
    return report
