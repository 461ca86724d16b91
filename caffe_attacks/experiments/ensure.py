"""Run whatever a definition needs that the store lacks; never raises for missing inputs.

Plain tables and IoU-ratio figures become runner jobs (:mod:`.jobs`); the
qualitative figures save examples (:mod:`.examples`); the CRF and
multiscale/transfer kinds have experiment runners of their own, looked up in
:data:`RUNNERS` by kind (or by the definition's ``"runner"`` name).
"""
from caffe_attacks.errors import UsageError
from caffe_attacks.experiments import crf, transfer
from caffe_attacks.experiments.definitions import EXPERIMENTS_DIR
from caffe_attacks.experiments.examples import default_examples_dir, example_jobs, save_examples
from caffe_attacks.experiments.jobs import EnsureReport, check_job, plan, queries_of, run_job
from caffe_attacks.runner.units import DEFAULT_UNIT_IMAGES

# Experiment runners: run_experiment(defn, context) -> EnsureReport.
RUNNERS = {"crf": crf.run_experiment, "transfer": transfer.run_experiment}
# Which runner makes the runs of a kind that is not plain runner jobs.
KIND_RUNNERS = {"crf_sweep": "crf", "crf_confidence": "crf", "crf_deeplab": "crf",
                "multiscale_clean": "transfer", "transfer_matrix": "transfer",
                "transfer_curves": "transfer"}
EXAMPLE_KINDS = ("perturbation", "qualitative_grid")


def runner_of(defn):
    """The name of the experiment runner a definition needs, or None for plain runner jobs."""
    return defn.get("runner") or KIND_RUNNERS.get(defn.get("adapted_from") or defn["kind"])


def ensure(defn, store_path, data_dirs=None, weights_dir="weights", limit=None,
           progress=True, gpu=None, examples_dir=None, overrides=None, experiments_dir=None,
           executor=None, unit_images=DEFAULT_UNIT_IMAGES):
    """Run whatever ``defn`` needs that the store lacks; never raises for missing inputs.

    overrides: {model: {"weights": path, "protocol": input block}} (see check_job).

    A definition whose kind (or own "runner" field) names an experiment runner
    is handed to it; context is a dict with store_path, data_dirs,
    weights_dir, limit, progress, gpu, experiments_dir, executor, unit_images.
    executor: where the runs' units go (None: this process; see .executors).
    """
    name = runner_of(defn)
    if name:
        if name not in RUNNERS:
            report = EnsureReport()
            report.failed.append((defn["id"], "unknown experiment runner %r (one of %s)"
                                  % (name, ", ".join(RUNNERS))))
            return report
        return RUNNERS[name](defn, dict(
            store_path=store_path, data_dirs=data_dirs or {}, weights_dir=weights_dir,
            limit=limit, progress=progress, gpu=gpu,
            experiments_dir=experiments_dir or EXPERIMENTS_DIR, executor=executor,
            unit_images=unit_images))
    report = EnsureReport()
    examples = defn["kind"] in EXAMPLE_KINDS
    jobs = example_jobs(defn) if examples else plan(queries_of(defn))
    seen = set()
    for job in jobs:
        override = (overrides or {}).get(job.model)
        missing = [m for m in check_job(job, data_dirs, weights_dir, override)
                   if m.what not in seen]
        if missing:
            seen.update(m.what for m in missing)
            report.missing.extend(missing)
            continue
        try:
            if examples:
                save_examples(defn, job, examples_dir or default_examples_dir(store_path),
                              data_dirs, weights_dir, gpu=gpu, override=override)
            else:
                report.ids[(job.model, job.dataset, job.split)] = run_job(
                    job, store_path, data_dirs, weights_dir, limit, progress, gpu, override,
                    executor=executor, unit_images=unit_images)
            report.ran.append(job.describe())
        except UsageError as e:
            report.failed.append((job.describe(), str(e)))
    return report
