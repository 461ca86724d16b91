"""Jobs: the (model, dataset) runs a definition needs, what each lacks, and running one.

:func:`plan` returns data (a list of :class:`Job`, each one white-box run of
the runner) and runs nothing; :func:`check_job` says what a job is missing
(weights, prototxt, data) and how to get it; :func:`run_job` runs one job
through the runner into the store, resumably.
"""
import json
import os
from dataclasses import dataclass, field

from caffe_attacks import weights as W
from caffe_attacks import zoo
from caffe_attacks.experiments.definitions import DATA_VARIABLE, Cell, table_cells
from caffe_attacks.runner import RunOptions
from caffe_attacks.runner.registry import names as attack_names
from caffe_attacks.runner.units import DEFAULT_UNIT_IMAGES
from caffe_attacks.runner.whitebox import run_white_box

@dataclass
class Job:
    """One runner invocation: a model on a dataset with some attacks and eps."""
    model: str
    dataset: str
    split: str = "val"
    attacks: list = field(default_factory=list)
    eps: list = field(default_factory=list)

    def describe(self):
        what = ", ".join(self.attacks) or "clean only"
        return "%s on %s/%s (%s)" % (self.model, self.dataset, self.split, what)


def plan(cells_or_queries):
    """Group runnable queries into Jobs, one per (model, dataset, split)."""
    jobs = {}
    for item in cells_or_queries:
        q = item.query if isinstance(item, Cell) else item
        if isinstance(item, Cell) and not item.runnable:
            continue
        if q is None:
            continue
        key = (q["model"], q["dataset"], q.get("split", "val"))
        job = jobs.setdefault(key, Job(*key))
        attack = q.get("attack", "clean")
        if attack != "clean":
            if attack not in job.attacks:
                job.attacks.append(attack)
            e = float(q["eps"])
            if e not in job.eps:
                job.eps.append(e)
    for job in jobs.values():
        job.attacks.sort(key=attack_names().index)
        job.eps.sort()
    return list(jobs.values())


def queries_of(defn):
    """Every store query a definition needs (tables and the store-backed figures)."""
    kind = defn["kind"]
    if kind == "table":
        return [c.query for c in table_cells(defn)[2] if c.runnable and c.query]
    if kind == "iou_ratio_curves":
        out = []
        for m in defn["models"]:
            out.append({"model": m, "dataset": defn["dataset"], "split": defn.get("split", "val"),
                        "attack": "clean", "eps": 0.0})
            for a in defn["attacks"]:
                for e in defn["eps"]:
                    if e:
                        out.append({"model": m, "dataset": defn["dataset"],
                                    "split": defn.get("split", "val"), "attack": a,
                                    "eps": float(e)})
        return out
    return []


@dataclass
class Missing:
    """Something a run needs and does not have, with how to get it."""
    what: str
    message: str


def data_dir_for(dataset, data_dirs):
    return (data_dirs or {}).get(dataset)


def check_job(job, data_dirs, weights_dir, override=None):
    """Missing weights, prototxt or data for a job (empty list: it can run).

    override: {"weights": caffemodel path, "protocol": input block} used
    instead of the manifest's (a model trained by hand, before its entry exists).
    """
    out = []
    try:
        zoo.get(job.model)
        entry = W.model_entry(job.model)
    except KeyError:
        entry = None
        if not (override and override.get("weights") and override.get("protocol")):
            return [Missing(job.model, "%s is not a zoo model with a weights manifest entry"
                            % job.model)]
    wpath = override["weights"] if override and override.get("weights") else \
        W.weights_file(entry, weights_dir)
    if override and override.get("weights"):
        if not os.path.exists(wpath):
            out.append(Missing("weights:" + job.model, "weights not found: %s" % wpath))
    elif not os.path.exists(wpath):
        if job.model in W.fetchable_names():
            how = "get them with `make fetch-weights NAMES=%s` (WEIGHTS_DIR=%s)" % (
                job.model, weights_dir)
        elif entry.get("weights_path"):
            how = "train the embedded model with `make train-tiny`"
        else:
            how = ("these weights are not public (retrained by the paper's authors); put the "
                   "caffemodel there or point WEIGHTS_DIR= at its directory")
        out.append(Missing("weights:" + job.model,
                           "weights for %s not found: %s; %s" % (job.model, wpath, how)))
    if not os.path.exists(zoo.prototxt_path(job.model)):
        out.append(Missing("prototxt:" + job.model, "prototxt not found: %s (run `make prototxt`)"
                           % zoo.prototxt_path(job.model)))
    d = data_dir_for(job.dataset, data_dirs)
    var = DATA_VARIABLE.get(job.dataset, job.dataset.upper() + "_DIR")
    if not d:
        out.append(Missing("data:" + job.dataset, "%s needs the %s dataset: pass %s=/path/to/it"
                           % (job.model, job.dataset, var)))
    elif not os.path.isdir(d):
        out.append(Missing("data:" + job.dataset, "%s=%s is not a directory" % (var, d)))
    return out


def job_options(job, data_dirs, weights_dir, limit=None, gpu=None, override=None, crf=None,
                progress=True):
    """The RunOptions of one job: its model, dataset and attacks, and the runner's defaults.

    override: {"weights": caffemodel, "protocol": input block} instead of the
    manifest's (the records keep the job's model name).
    crf: a record's "crf" field (overrides plus "w2_mode"), None for the net as defined.
    """
    fields = dict(model=job.model, dataset=job.dataset,
                  data_dir=data_dir_for(job.dataset, data_dirs), split=job.split, weights_dir=str(weights_dir), limit=limit or None, gpu=gpu,
                  attacks=tuple(job.attacks), eps=tuple(job.eps) or (0.0,), quiet=not progress)
    if override and override.get("weights"):
        fields.update(weights=str(override["weights"]), allow_unverified=True,
                      protocol=json.dumps(override["protocol"]))
    if crf:
        fields["crf"] = {k: v for k, v in crf.items() if k != "w2_mode"}
        if "w2_mode" in crf:
            fields["crf_w2_mode"] = crf["w2_mode"]
    return RunOptions(**fields)


def run_job(job, store_path, data_dirs, weights_dir, limit=None, progress=True, gpu=None,
            override=None, crf=None, executor=None, unit_images=DEFAULT_UNIT_IMAGES):
    """Run one job through the runner (resumable); returns the ids it covered.

    crf: a CRF variant's record field (see :func:`job_options`).
    executor: None runs here; else units of ``unit_images`` images go to its workers.
    Raises UsageError with the runner's message for anything it rejects.
    """
    options = job_options(job, data_dirs, weights_dir, limit, gpu, override, crf, progress)
    return run_white_box(options, store_path, progress=progress, executor=executor,
                         unit_images=unit_images).ids


@dataclass
class EnsureReport:
    ran: list = field(default_factory=list)        # Job descriptions that ran
    missing: list = field(default_factory=list)    # Missing entries
    failed: list = field(default_factory=list)     # (job description, message)
    notes: list = field(default_factory=list)      # cells another tool produces
    ids: dict = field(default_factory=dict)        # (model, dataset, split) -> ids run
