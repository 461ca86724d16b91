"""Experiment definitions (experiments/*.json): load, validate, expand into store queries.

A definition names what a table or figure of the supplementary shows (models,
dataset, attacks, eps, options) and the paper's printed values for it; the
format is documented in experiments/README.md. This module loads and
validates definitions (``load``, ``validate``), expands a table into cells,
each a store query plus the paper's value (``table_cells``), and spells out
the query of a CRF variant (``sweep_points``, ``crf_variant_query``). It
reads files only: no store, no network.
"""
import copy
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path

from caffe_attacks import resources
from caffe_attacks.attacks import PAPER_NAMES
from caffe_attacks.errors import UsageError
from caffe_attacks.runner.registry import names as attack_names

# experiments/ of the checkout, or the installed package's copy
EXPERIMENTS_DIR = resources.experiments_dir()

# Images in the full evaluation split: a table over fewer is marked partial.
FULL_SPLIT_SIZE = {("voc", "val"): 1449, ("cityscapes", "val"): 500}
# The make variable (and CLI option) that points at each dataset.
DATA_VARIABLE = {"voc": "VOC_DIR", "cityscapes": "CITYSCAPES_DIR", "synthetic": "SYNTHETIC_DIR"}
# Fields of a query that the runner understands; any other field (a transfer
# source, a CRF variant) needs the experiment runner of its kind (experiments.ensure.RUNNERS).
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


class ExperimentError(UsageError):
    """A definition that cannot be used, or one that does not exist."""


# --------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------
def normalize_id(text, prefix=None):
    """'A5', 'table-A5', 'table_A5', 'tableA5' -> 'table_A5' (prefix 'table' or 'fig').

    The B series (issue 17's stronger attacks) is spelled the same way.

    A bare 'A5' needs `prefix`; 'figure' is spelled 'fig' in file names.
    """
    m = re.fullmatch(r"(?i)(table|fig|figure)?[-_ ]?([ab]\d+)", text.strip())
    if not m:
        return text.strip()
    kind = (m.group(1) or prefix or "").lower()
    kind = "fig" if kind.startswith("fig") else kind
    if not kind:
        raise ExperimentError("say table or figure: %r" % text)
    return "%s_%s" % (kind, m.group(2).upper())


def _sort_key(exp_id):
    m = re.fullmatch(r"(\w+?)_([AB])(\d+)", exp_id)
    return (m.group(1), m.group(2), int(m.group(3))) if m else (exp_id, "", 0)


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
        if a is not None and a not in attack_names() + ("clean",):
            problems.append("unknown attack %r" % a)
    for a in defn.get("attacks", ()):
        if a not in attack_names():
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


# --------------------------------------------------------------------------
# CRF variants (Figures A9-A14): which records a sweep point is
# --------------------------------------------------------------------------
def sweep_points(defn):
    """[(label, crf overrides)] of a crf_sweep definition (one line each)."""
    sweep = defn["sweep"]
    names = list(sweep)
    if defn.get("sweep_mode") == "grid" or len(names) == 1:
        combos = itertools.product(*[sweep[n] for n in names])
    else:
        combos = zip(*[sweep[n] for n in names])
    return [(", ".join("%s=%g" % (n, v) for n, v in zip(names, c)), dict(zip(names, c)))
            for c in combos]


def crf_variant_query(defn, overrides):
    """Store query fields of a CRF variant: the public model itself at the baseline.

    A variant's records carry ``"crf"``: the overrides as given to the runner
    (``run --crf KEY=VALUE``, caffe_attacks.crf.record_field), with
    ``"w2_mode"`` beside a ``w2``.
    """
    base = {"model": defn["model"], "dataset": defn["dataset"], "split": defn.get("split", "val")}
    baseline = defn.get("baseline", {})
    if overrides and any(baseline.get(k) != v for k, v in overrides.items()):
        base["crf"] = dict(overrides)
        if "w2" in overrides:
            base["crf"]["w2_mode"] = defn.get("w2_mode", "scale_learned")
    return base
