"""Experiment definitions (experiments/*.json): load, expand, run what is missing.

A definition names what a table or figure of the supplementary shows (models,
dataset, attacks, eps, options) and the paper's printed values for it; the
format is documented in experiments/README.md. This module

- loads and validates definitions (``load``, ``validate``);
- expands a table into cells, each a *query* on the results store plus the
  paper's value (``table_cells``), and matches queries to stored
  configurations (``find_config``);
- decides which (model, dataset) runs the store still lacks and runs them
  through the runner, resumably (``plan``, ``ensure``); missing weights or
  data become ``Missing`` entries with a message saying how to get them;
- is the CLI behind ``make table-A5`` / ``make figure-A4``
  (``python -m caffe_attacks.experiments table A5``).

Tables and figures themselves are rendered by tables.py and figures.py from
the store alone.
"""
import argparse
import copy
import importlib
import json
import logging
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from caffe_attacks.attacks import ATTACKS, PAPER_NAMES

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS_DIR = REPO_ROOT / "experiments"

# Images in the full evaluation split: a table over fewer is marked partial.
FULL_SPLIT_SIZE = {("voc", "val"): 1449, ("cityscapes", "val"): 500}
# The make variable (and CLI option) that points at each dataset.
DATA_VARIABLE = {"voc": "VOC_DIR", "cityscapes": "CITYSCAPES_DIR", "synthetic": "SYNTHETIC_DIR"}
# Fields of a query that the runner understands; any other field (a transfer
# source, a CRF variant) needs the definition's own "runner" module.
RUNNER_FIELDS = {"model", "dataset", "split", "attack", "eps", "options", "engine"}
# Keys of rows and columns that describe, rather than select.
DESCRIPTIVE_KEYS = {"label", "paper", "note", "note_run", "run", "paper_only", "text_from",
                    "dataset_label"}
TABLE_KINDS = ("table", "params")
FIGURE_KINDS = ("iou_ratio_curves", "perturbation", "qualitative_grid", "crf_sweep",
                "crf_confidence", "crf_deeplab", "transfer_curves")
# Kinds written in their own shape by the multiscale experiments; ``normalize``
# turns them into the grid form of a "table".
ADAPTED_KINDS = ("multiscale_clean", "transfer_matrix")
TRANSFER_HINT = ("produced by `python -m caffe_attacks.transfer` (see experiments/README.md, "
                 "Multiscale and transfer)")
# Kinds whose runs are not plain runner jobs, and the module whose
# run_experiment(defn, context) makes them (a definition's "runner" wins).
KIND_RUNNERS = {"crf_sweep": "caffe_attacks.crf", "crf_confidence": "caffe_attacks.crf",
                "crf_deeplab": "caffe_attacks.crf", "multiscale_clean": "caffe_attacks.transfer",
                "transfer_matrix": "caffe_attacks.transfer",
                "transfer_curves": "caffe_attacks.transfer"}


class ExperimentError(Exception):
    """A definition that cannot be used, or one that does not exist."""


# --------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------
def normalize_id(text, prefix=None):
    """'A5', 'table-A5', 'table_A5', 'tableA5' -> 'table_A5' (prefix 'table' or 'fig').

    A bare 'A5' needs `prefix`; 'figure' is spelled 'fig' in file names.
    """
    m = re.fullmatch(r"(?i)(table|fig|figure)?[-_ ]?(a\d+)", text.strip())
    if not m:
        return text.strip()
    kind = (m.group(1) or prefix or "").lower()
    kind = "fig" if kind.startswith("fig") else kind
    if not kind:
        raise ExperimentError("say table or figure: %r" % text)
    return "%s_%s" % (kind, m.group(2).upper())


def _sort_key(exp_id):
    m = re.fullmatch(r"(\w+?)_A(\d+)", exp_id)
    return (m.group(1), int(m.group(2))) if m else (exp_id, 0)


def list_ids(kind=None, directory=EXPERIMENTS_DIR):
    """Ids of the definitions in `directory`, in paper order; kind 'table' or 'fig'."""
    ids = [p.stem for p in Path(directory).glob("*.json")]
    if kind:
        ids = [i for i in ids if i.startswith(kind + "_")]
    return sorted(ids, key=_sort_key)


def load(exp_id, directory=EXPERIMENTS_DIR):
    """The definition `exp_id` (e.g. 'table_A5') as a dict; ExperimentError if absent."""
    path = Path(directory) / ("%s.json" % exp_id)
    if not path.exists():
        known = ", ".join(list_ids(directory=directory)) or "none"
        raise ExperimentError("no experiment definition %s (known: %s)" % (path, known))
    try:
        with open(path, encoding="utf-8") as f:
            defn = json.load(f)
    except ValueError as e:
        raise ExperimentError("%s is not valid JSON: %s" % (path, e)) from None
    defn.setdefault("id", exp_id)
    defn = normalize(defn)
    problems = validate(defn)
    if problems:
        raise ExperimentError("%s: %s" % (path, "; ".join(problems)))
    return defn


def normalize(defn):
    """A definition in the grid form this module reads (a copy); other kinds unchanged.

    multiscale_clean (Tables A13, A14): one clean-IoU column, a row per net.
    transfer_matrix (Tables A15-A18): a column per (attack, source), a row per
    target; a cell asks for the target's record whose ``source.model`` is the
    column's source (the transfer CLI's records, white-box on the diagonal).
    """
    kind = defn.get("kind")
    if kind not in ADAPTED_KINDS:
        return defn
    d = copy.deepcopy(defn)
    paper = d.get("paper") or {}
    out = {"id": d["id"], "kind": "table", "title": "Table %s: %s" % (
        d["id"].split("_")[-1], d.get("caption", "")), "caption": d.get("caption", ""),
        "dataset": d["dataset"], "split": d.get("split", "val"), "metric": d.get("metric", "miou"),
        "adapted_from": kind, "original": copy.deepcopy(defn)}
    if d.get("runner"):
        out["runner"] = d["runner"]
    labels = d.get("row_labels") or d.get("models") or d.get("targets")
    if kind == "multiscale_clean":
        values = paper.get("miou_percent") or [None] * len(d["models"])
        out["columns"] = [{"label": "IoU [%]", "attack": "clean", "eps": 0}]
        out["rows"] = [{"label": l, "model": m, "paper": [v], "note_run": TRANSFER_HINT}
                       for l, m, v in zip(labels, d["models"], values)]
        return out
    eps = d["eps"] if not isinstance(d["eps"], list) else d["eps"][0]
    col_labels = d.get("column_labels") or d["sources"]
    out["columns"] = [{"label": "%s %s" % (PAPER_NAMES.get(a, a), cl), "attack": a,
                       "eps": float(eps), "match": {"source": {"model": src}}}
                      for a in d["attacks"] for src, cl in zip(d["sources"], col_labels)]
    ratios = paper.get("iou_ratio_percent") or {}
    rows = []
    for i, (label, target) in enumerate(zip(labels, d["targets"])):
        values = []
        for a in d["attacks"]:
            grid = ratios.get(a)
            values += list(grid[i]) if grid else [None] * len(d["sources"])
        rows.append({"label": label, "model": target, "paper": values})
    out["rows"] = rows
    return out


def validate(defn):
    """Problems with a definition, as sentences (empty list: usable)."""
    problems = []
    kind = defn.get("kind")
    if kind not in TABLE_KINDS + FIGURE_KINDS:
        return ["unknown kind %r (one of %s)" % (kind, ", ".join(TABLE_KINDS + FIGURE_KINDS))]
    if kind in TABLE_KINDS:
        try:
            columns = expand_columns(defn)
        except ExperimentError as e:
            return [str(e)]
        rows = defn.get("rows")
        if not rows:
            problems.append("a table needs rows")
        for i, row in enumerate(rows or ()):
            if "label" not in row:
                problems.append("row %d has no label" % i)
            paper = row.get("paper")
            if paper is not None and len(paper) != len(columns):
                problems.append("row %r has %d paper values for %d columns"
                                % (row.get("label"), len(paper), len(columns)))
            if kind == "table" and not row.get("paper_only"):
                if "model" not in row and "model" not in defn:
                    problems.append("row %r names no model" % row.get("label"))
    for key in ("attack",):
        a = defn.get(key)
        if a is not None and a not in ATTACKS + ("clean",):
            problems.append("unknown attack %r" % a)
    for a in defn.get("attacks", ()):
        if a not in ATTACKS:
            problems.append("unknown attack %r" % a)
    eps = defn.get("eps")
    eps = [eps] if isinstance(eps, (int, float)) else eps
    if eps is not None and any((not isinstance(e, (int, float))) or e < 0 for e in eps):
        problems.append("eps must be non-negative numbers")
    return problems


# --------------------------------------------------------------------------
# Tables as grids of queries
# --------------------------------------------------------------------------
def expand_columns(defn):
    """The table's columns as a list of dicts.

    ``"columns": {"eps": [0, 0.25, ...]}`` is shorthand for one column per
    eps of the table's attack (eps 0 is the clean column).
    """
    cols = defn.get("columns")
    if isinstance(cols, dict):
        if "eps" not in cols:
            raise ExperimentError("columns shorthand needs an 'eps' list")
        out = []
        for e in cols["eps"]:
            col = {"label": "%g" % e, "eps": float(e)}
            if e == 0:
                col["attack"] = "clean"
            out.append(col)
        return out
    if not isinstance(cols, list) or not cols:
        raise ExperimentError("a table needs 'columns' (a list, or {'eps': [...]})")
    return [dict(c) for c in cols]


def _merge(*parts):
    """Later parts override earlier ones; 'options' and 'match' dicts merge key by key."""
    out = {}
    for part in parts:
        for k, v in part.items():
            if k in ("options", "match") and isinstance(v, dict):
                out[k] = dict(out.get(k, {}), **v)
            else:
                out[k] = v
    return out


@dataclass
class Cell:
    """One cell of a table: where it is, what it asks the store, what the paper says.

    query: fields a stored configuration must have (see ``config_matches``);
    None for a cell the project does not measure (a paper-only column).
    runnable: whether ``ensure`` may produce it with the runner.
    """
    row: int
    col: int
    query: dict = None
    paper: float = None
    runnable: bool = True
    note: str = None


_TABLE_LEVEL = ("model", "dataset", "split", "attack", "options", "engine", "match")


def table_cells(defn):
    """(row labels, column labels, [Cell]) of a table definition (row-major)."""
    columns = expand_columns(defn)
    base = {k: defn[k] for k in _TABLE_LEVEL if k in defn}
    cells = []
    for r, row in enumerate(defn["rows"]):
        paper = row.get("paper") or [None] * len(columns)
        row_q = {k: v for k, v in row.items() if k not in DESCRIPTIVE_KEYS}
        for c, col in enumerate(columns):
            value = paper[c]
            if col.get("paper_only") or col.get("text_from"):
                cells.append(Cell(r, c, None, value, False, row.get("note")))
                continue
            col_q = {k: v for k, v in col.items() if k not in DESCRIPTIVE_KEYS}
            q = _merge(base, col_q, row_q)
            if col.get("attack") == "clean":
                q["attack"] = "clean"      # the eps = 0 column is clean whatever the row attacks
            if q.get("attack") == "clean":
                q["eps"] = 0.0
                q.pop("options", None)
            q = _flatten_match(q)
            runnable = (row.get("run", True) and set(q) <= RUNNER_FIELDS
                        and "@" not in str(q.get("model", "")))
            cells.append(Cell(r, c, q, value, runnable, row.get("note")))
    return [row["label"] for row in defn["rows"]], [c["label"] for c in columns], cells


def _flatten_match(q):
    """Fields under 'match' become plain query fields (a transfer source, a variant)."""
    q = dict(q)
    q.update(q.pop("match", {}) or {})
    return q


def default_options(attack, **overrides):
    """The runner's options for an attack with its default arguments (and overrides)."""
    from caffe_attacks import run
    args = run.build_parser().parse_args(["--dataset", "synthetic", "--data-dir", "."])
    for k, v in overrides.items():
        setattr(args, k, v)
    return run.attack_options(args, attack)


def _values_match(have, want):
    if isinstance(want, dict):
        return isinstance(have, dict) and all(
            _values_match(have.get(k), v) for k, v in want.items())
    if isinstance(want, (int, float)) and isinstance(have, (int, float)) \
            and not isinstance(want, bool):
        return math.isclose(float(have), float(want), rel_tol=1e-9, abs_tol=1e-12)
    return have == want


def config_matches(config, query):
    """Whether a stored configuration answers a query.

    Every query field must be present and equal (numbers up to round-off);
    dict fields (options, a CRF variant) match as subsets. An attack's
    options default to the runner's defaults, so a paper cell never picks up
    a run with a non-paper alpha or target. Fields the query omits are free,
    except 'engine' (caffe unless asked) and fields that mark a derived run
    (a transfer 'source', a 'variant'), which must be absent unless asked.
    """
    q = dict(query)
    q.setdefault("engine", "caffe")
    attack = q.get("attack")
    if attack in ATTACKS:
        q["options"] = dict(default_options(attack), **q.get("options", {}))
    for marker in ("source", "variant", "crf"):
        if marker not in q and config.get(marker) is not None:
            return False
    # a CRF variant is all its overrides: {theta_alpha: 1} is not {theta_alpha: 1, w2: 5}
    if isinstance(q.get("crf"), dict) and set(config.get("crf") or {}) != set(q["crf"]):
        return False
    return all(_values_match(config.get(k), v) for k, v in q.items())


def find_config(store, query):
    """The key of the stored configuration answering `query` (most images wins), or None."""
    keys = [k for k, c in store.configs().items() if config_matches(c, query)]
    if not keys:
        return None
    if len(keys) > 1:
        log.info("%d stored configurations match %s; using the one with the most images",
                 len(keys), query)
    return max(keys, key=lambda k: (len(_ids_of(store, k)), k))


def _ids_of(store, key):
    s = store.summary(key)
    return set(s["ids"]) if s else set()


# --------------------------------------------------------------------------
# What to run
# --------------------------------------------------------------------------
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
        job.attacks.sort(key=ATTACKS.index)
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
    from caffe_attacks import weights as W
    from caffe_attacks import zoo
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


def _runner_argv(job, data_dirs, weights_dir, override=None, gpu=None):
    """Runner arguments for a job: --model NAME, or the zoo prototxt with overridden files."""
    from caffe_attacks import weights as W
    from caffe_attacks import zoo
    argv = ["--dataset", job.dataset, "--data-dir", data_dir_for(job.dataset, data_dirs),
            "--split", job.split, "--weights-dir", str(weights_dir)]
    if override and override.get("weights"):
        try:
            W.model_entry(job.model)
            argv += ["--model", job.model, "--weights", str(override["weights"]),
                     "--allow-unverified"]
        except KeyError:
            spec = zoo.get(job.model)
            argv += ["--prototxt", str(zoo.prototxt_path(job.model)),
                     "--weights", str(override["weights"]), "--score-blob", spec.score_blob,
                     "--input-blob", spec.input_blob,
                     "--protocol", json.dumps(override["protocol"])]
    else:
        argv += ["--model", job.model]
    if gpu is not None:
        argv += ["--gpu", str(gpu)]
    return argv


def run_job(job, store_path, data_dirs, weights_dir, limit=None, progress=True, gpu=None,
            override=None, extra_argv=()):
    """Run one job through the runner (resumable); returns the ids it covered.

    extra_argv: more runner options (e.g. ``["--crf", "theta_alpha=1"]``).
    Raises run.UsageError with the runner's message for anything it rejects.
    """
    from caffe_attacks import run
    from caffe_attacks.store import ResultsStore

    argv = _runner_argv(job, data_dirs, weights_dir, override, gpu) + ["--out", str(store_path)]
    if limit:
        argv += ["--limit", str(limit)]
    args = run.build_parser().parse_args(argv + list(extra_argv))
    args.quiet = not progress
    # the job's name, also when the net came from an overridden prototxt/weights pair
    dataset, rm, ids, base = run.prepare(args, model_name=job.model)
    with ResultsStore(store_path) as store:
        run.run(rm, dataset, store, base, job.attacks, job.eps, args, ids, progress=progress)
    return ids


@dataclass
class EnsureReport:
    ran: list = field(default_factory=list)        # Job descriptions that ran
    missing: list = field(default_factory=list)    # Missing entries
    failed: list = field(default_factory=list)     # (job description, message)
    notes: list = field(default_factory=list)      # cells another tool produces
    ids: dict = field(default_factory=dict)        # (model, dataset, split) -> ids run


def runner_of(defn):
    """The module that makes a definition's runs, or None for the runner's own jobs."""
    return defn.get("runner") or KIND_RUNNERS.get(defn.get("adapted_from") or defn["kind"])


def ensure(defn, store_path, data_dirs=None, weights_dir="weights", limit=None,
           progress=True, gpu=None, examples_dir=None, overrides=None, experiments_dir=None):
    """Run whatever `defn` needs that the store lacks; never raises for missing inputs.

    overrides: {model: {"weights": path, "protocol": input block}} (see check_job).

    A definition with a "runner" (a caffe_attacks module with
    ``run_experiment(defn, context)``), or of a kind in KIND_RUNNERS (the CRF
    and multiscale/transfer experiments), is handed to it instead; context is
    a dict with store_path, data_dirs, weights_dir, limit, progress, gpu,
    experiments_dir.
    """
    from caffe_attacks import run
    report = EnsureReport()
    if runner_of(defn):
        return _delegate(defn, report, store_path=store_path, data_dirs=data_dirs or {},
                         weights_dir=weights_dir, limit=limit, progress=progress, gpu=gpu,
                         experiments_dir=experiments_dir or EXPERIMENTS_DIR)
    if defn["kind"] in ("perturbation", "qualitative_grid"):
        jobs = example_jobs(defn)
    else:
        jobs = plan(queries_of(defn))
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
            if defn["kind"] in ("perturbation", "qualitative_grid"):
                save_examples(defn, job, examples_dir or default_examples_dir(store_path),
                              data_dirs, weights_dir, gpu=gpu, override=override)
            else:
                report.ids[(job.model, job.dataset, job.split)] = run_job(
                    job, store_path, data_dirs, weights_dir, limit, progress, gpu, override)
            report.ran.append(job.describe())
        except run.UsageError as e:
            report.failed.append((job.describe(), str(e)))
    return report


def _delegate(defn, report, **context):
    name = runner_of(defn)
    if not re.fullmatch(r"caffe_attacks(\.\w+)+", name):
        report.failed.append((defn["id"], "runner %r must be a caffe_attacks module" % name))
        return report
    try:
        module = importlib.import_module(name)
    except ImportError as e:
        report.failed.append((defn["id"], "runner %s is not available: %s" % (name, e)))
        return report
    result = module.run_experiment(defn, context)
    for m in getattr(result, "missing", ()) or ():
        # duck-typed: under `python -m caffe_attacks.experiments` this module is
        # __main__, and a runner's Missing is caffe_attacks.experiments.Missing
        report.missing.append(Missing(m.what, m.message) if hasattr(m, "message")
                              else Missing(str(m), str(m)))
    report.ran.extend(getattr(result, "ran", ()) or ())
    report.failed.extend(getattr(result, "failed", ()) or ())
    report.notes.extend(getattr(result, "notes", ()) or ())
    return report


# --------------------------------------------------------------------------
# Qualitative examples (Figures A1-A3): arrays saved for figures.py
# --------------------------------------------------------------------------
def default_examples_dir(store_path):
    return os.path.join(os.path.dirname(os.path.abspath(str(store_path))), "examples")


def example_jobs(defn):
    models = defn.get("models") or [defn["model"]]
    attacks = defn.get("attacks") or [defn["attack"]]
    eps = [float(e) for e in defn["eps"] if e]
    return [Job(m, defn["dataset"], defn.get("split", "val"), list(attacks), eps) for m in models]


def example_path(examples_dir, exp_id, model):
    return os.path.join(examples_dir, exp_id, "%s.npz" % model)


def save_examples(defn, job, examples_dir, data_dirs, weights_dir, gpu=None, override=None):
    """Attack one image (defn 'image_index', default 0) and save what the figures show.

    Writes <examples_dir>/<id>/<model>.npz with image_rgb (H, W, 3) uint8,
    label (H, W), palette (256, 3), mean_bgr (3,), clean_pred (H, W), and per
    (attack, eps): delta_<a>_<e> (H, W, 3) float32 BGR perturbation on the
    image grid, adv_rgb_<a>_<e> (H, W, 3) uint8, pred_<a>_<e> (H, W) uint8.
    Skipped when the file exists (resumable).
    """
    import numpy as np

    from caffe_attacks import run
    from caffe_attacks.attacks import get_attack
    from caffe_attacks.visualize import bgr_to_rgb_uint8

    path = example_path(examples_dir, defn["id"], job.model)
    if os.path.exists(path):
        return path
    args = run.build_parser().parse_args(_runner_argv(job, data_dirs, weights_dir, override, gpu))
    args.quiet = True
    dataset = run.open_data(args)
    rm = run.resolve_model(args)
    index = int(defn.get("image_index", 0))
    sample = dataset.load(dataset.ids[index])
    x, ctx = rm.protocol.prepare(sample.image)
    _, _, _, _, pred_clean = run.evaluate_scores(rm.model.forward(x), ctx, rm.protocol,
                                                 sample.label, rm.num_classes)
    mean = np.zeros(3, np.float32) if rm.protocol.mean_bgr is None else \
        np.asarray(rm.protocol.mean_bgr, np.float32)
    arrays = {"image_rgb": bgr_to_rgb_uint8(sample.image), "label": sample.label,
              "palette": np.asarray(dataset.palette, np.uint8), "mean_bgr": mean,
              "clean_pred": pred_clean.astype(np.uint8), "image_id": np.array(sample.id)}
    for attack in job.attacks:
        advs = get_attack(attack)(rm.model, x, job.eps, **_attack_kwargs(attack, args))
        for e, x_adv in zip(job.eps, advs):
            _, _, _, _, pred = run.evaluate_scores(rm.model.forward(x_adv), ctx, rm.protocol,
                                                   sample.label, rm.num_classes)
            tag = "%s_%g" % (attack, e)
            # input_to_image undoes the mean, so the delta comes back with it added
            delta = rm.protocol.input_to_image(x_adv - x, ctx) - mean
            arrays["delta_" + tag] = delta.astype(np.float32)
            arrays["adv_rgb_" + tag] = bgr_to_rgb_uint8(rm.protocol.input_to_image(x_adv, ctx))
            arrays["pred_" + tag] = pred.astype(np.uint8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)
    return path


def _attack_kwargs(attack, args):
    from caffe_attacks import run
    opts = run.attack_options(args, attack)
    kwargs = {"clip_to_image": None}
    if "alpha" in opts:
        kwargs["alpha"] = opts["alpha"]
    if "target" in opts:
        kwargs["target"] = opts["target"]
    return kwargs


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------
def _ids_from_args(what, names, directory):
    prefix = "table" if what == "table" else "fig"
    if names in (["all"], []):
        return list_ids(prefix, directory)
    return [normalize_id(n, prefix) for n in names]


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m caffe_attacks.experiments",
        description="Run what a supplementary table or figure needs (resumably), then render "
                    "it beside the paper's values.")
    p.add_argument("what", choices=("table", "figure", "list", "check"))
    p.add_argument("names", nargs="*", help="A5, table_A5, fig_A4 ... or 'all'")
    p.add_argument("--results", default="results", help="results folder (store.h5 inside)")
    p.add_argument("--store", default=None, help="results store (default RESULTS/store.h5)")
    p.add_argument("--voc-dir", default=None)
    p.add_argument("--cityscapes-dir", default=None)
    p.add_argument("--synthetic-dir", default=None)
    p.add_argument("--weights-dir", default="weights")
    p.add_argument("--limit", type=int, default=None, help="first N images only (partial)")
    p.add_argument("--no-run", action="store_true", help="render from the store only")
    p.add_argument("--gpu", type=int, default=None)
    p.add_argument("--experiments", default=str(EXPERIMENTS_DIR), help=argparse.SUPPRESS)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.limit is not None and args.limit <= 0:
        print("error: LIMIT must be positive", file=sys.stderr)
        return 2
    try:
        if args.what == "list":
            for i in list_ids(directory=args.experiments):
                d = load(i, args.experiments)
                print("%-10s %-18s %s" % (i, d["kind"], d.get("title") or d.get("caption", "")))
            return 0
        ids = _ids_from_args(args.what, args.names, args.experiments)
        defns = [load(i, args.experiments) for i in ids]
    except ExperimentError as e:
        print("error: %s" % e, file=sys.stderr)
        return 2
    data_dirs = {"voc": args.voc_dir, "cityscapes": args.cityscapes_dir,
                 "synthetic": args.synthetic_dir}
    store_path = args.store or os.path.join(args.results, "store.h5")
    status = 0
    for defn in defns:
        status = max(status, _one(defn, args, data_dirs, store_path))
    return status


def _one(defn, args, data_dirs, store_path):
    from caffe_attacks.store import StoreLocked
    status = 0
    if not args.no_run and args.what != "check":
        try:
            report = ensure(defn, store_path, data_dirs, args.weights_dir, args.limit,
                            progress=not args.quiet, gpu=args.gpu,
                            experiments_dir=args.experiments)
        except StoreLocked as e:
            print("error: %s" % e, file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("\ninterrupted; finished images are saved: run the same command to resume",
                  file=sys.stderr)
            raise SystemExit(130)
        for m in report.missing:
            print("missing (%s): %s" % (defn["id"], m.message), file=sys.stderr)
        for note in report.notes:
            print("note: %s" % note, file=sys.stderr)
        for what, msg in report.failed:
            print("failed (%s): %s: %s" % (defn["id"], what, msg), file=sys.stderr)
        if report.missing or report.failed:
            status = 2
    elif args.what == "check":
        for job in plan(queries_of(defn)):
            for m in check_job(job, data_dirs, args.weights_dir):
                print("missing (%s): %s" % (defn["id"], m.message))
                status = 2
        return status
    paths = _render(defn, store_path, args)
    for path in paths:
        print("wrote %s" % path)
    return status


def _render(defn, store_path, args):
    from caffe_attacks.store import ResultsStore
    store = ResultsStore(store_path, readonly=True)
    if defn["kind"] in TABLE_KINDS:
        from caffe_attacks import tables
        table = tables.build(defn, store, limit=args.limit)
        if not args.quiet:
            print(tables.to_markdown(table))
        return tables.write(table, os.path.join(args.results, "tables"))
    from caffe_attacks import figures
    return figures.render(defn, store, os.path.join(args.results, "figures"),
                          examples_dir=default_examples_dir(store_path),
                          experiments_dir=args.experiments)


if __name__ == "__main__":
    sys.exit(main())
