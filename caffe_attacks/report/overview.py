"""How close each table is to the paper, and why a cell has no number yet.

A measured cell with a paper value falls in a band by the difference the
table prints (ours - paper, rounded to the table's format): within 1 point,
within 3, or more. A cell without our number is "not run", with the reason
(missing weights, data or prototxt, or a cell another experiment runner
makes) and the command that fills it. Columns the project does not measure
(paper only) and descriptive cells are counted apart.

Reads the store through report.tables' ``Table`` and the definitions; never
runs a network.
"""
import re
from dataclasses import dataclass, field

from caffe_attacks.experiments.definitions import DATA_VARIABLE, table_cells
from caffe_attacks.experiments.jobs import Job, check_job

# Band edges in the table's units (IoU points for the IoU tables): |difference| <= edge.
BANDS = (1.0, 3.0)
BAND_NAMES = ("within_1", "within_3", "beyond_3")
# Every count a table summary has, in the order the page shows them.
COUNT_NAMES = BAND_NAMES + ("ours_only", "not_run", "paper_only")


def band(table, delta):
    """'within_1', 'within_3' or 'beyond_3' for a difference, judged as the table prints it."""
    shown = abs(float(table.fmt % delta))
    for edge, name in zip(BANDS, BAND_NAMES):
        if shown <= edge:
            return name
    return BAND_NAMES[-1]


def cell_status(table, value):
    """The summary class of one Value: a band, 'ours_only', 'not_run', 'paper_only' or None.

    None: a descriptive cell (text), counted nowhere.
    """
    if value.text is not None:
        return None
    if not value.measured:
        return "paper_only"
    if value.ours is None:
        return "not_run"
    if value.paper is None:
        return "ours_only"
    return band(table, value.delta)


@dataclass
class NotRun:
    """Cells of one table without our number, for one reason (a missing input, or not run)."""
    what: str            # "data:voc", "weights:segnet_vgg_voc", "not run", ...
    reason: str
    cells: int = 0


@dataclass
class TableSummary:
    id: str
    title: str
    counts: dict
    not_run: list = field(default_factory=list)      # [NotRun], most cells first
    command: str = ""                                # what fills the table's missing cells
    partial: bool = False

    @property
    def measured_with_paper(self):
        return sum(self.counts[b] for b in BAND_NAMES)


def make_command(defn_id, variables=()):
    """The make command that runs (what it can of) a definition, e.g. ``make table-A5``."""
    m = re.fullmatch(r"(table|fig)_([A-Z]\d+)", defn_id)
    if m:
        target = "%s-%s" % ("table" if m.group(1) == "table" else "figure", m.group(2))
    elif defn_id.startswith("demo_"):
        target = "demo"
    else:
        target = "tables"
    return " ".join(["make", target] + list(variables))


class Reasons:
    """Why a query has no stored answer: missing inputs (cached per job) or not run yet."""

    def __init__(self, data_dirs=None, weights_dir="weights"):
        self.data_dirs = data_dirs or {}
        self.weights_dir = weights_dir
        self._missing = {}

    def missing(self, model, dataset, split):
        key = (model, dataset, split)
        if key not in self._missing:
            self._missing[key] = check_job(Job(model, dataset, split), self.data_dirs,
                                           self.weights_dir)
        return self._missing[key]

    def of(self, defn, cell):
        """([(what, reason)], [make variables]) for a cell of ``defn`` without a number."""
        q = cell.query
        row = defn["rows"][cell.row]
        if row.get("run") is False:
            # no input makes this table run it (e.g. a test split scored by a server)
            why = "not run by this table: %s" % (row.get("note") or row.get("note_run") or
                                                 "its row says run: false")
            return [(why, why)], []
        base_model = str(q.get("model", "")).split("@")[0]
        missing = self.missing(base_model, q.get("dataset"), q.get("split", "val"))
        if missing:
            variables = []
            for m in missing:
                if m.what.startswith("data:"):
                    variables.append("%s=/path/to/%s" % (
                        DATA_VARIABLE.get(q.get("dataset"), "DATA_DIR"), q.get("dataset")))
                elif m.what.startswith("weights:"):
                    variables.append("WEIGHTS_DIR=%s" % self.weights_dir)
            # a missing dataset is the same for every net of the table: say it once
            return [(m.what, re.sub(r"^\S+ needs", "needs", m.message) if
                     m.what.startswith("data:") else m.message) for m in missing], variables
        if not cell.runnable:
            hint = row.get("note_run") or "made by the experiment's own runner"
            return [("not run", "not run yet: %s" % hint)], []
        return [("not run", "not run yet (its weights and data are there)")], []


def summarize(defn, table, reasons):
    """TableSummary of a built Table (report.tables.build) of definition ``defn``."""
    counts = dict.fromkeys(COUNT_NAMES, 0)
    by_what, variables = {}, []
    cells = table_cells(defn)[2] if defn["kind"] == "table" else []
    cell_at = {(c.row, c.col): c for c in cells}
    for r, row in enumerate(table.values):
        for c, value in enumerate(row):
            status = cell_status(table, value)
            if status is None:
                continue
            counts[status] += 1
            if status != "not_run":
                continue
            cell = cell_at.get((r, c))
            found, needs = reasons.of(defn, cell) if cell is not None else \
                ([("no number", "no number (see the table's notes)")], [])
            variables += [v for v in needs if v not in variables]
            for what, reason in found:
                by_what.setdefault(what, NotRun(what, reason)).cells += 1
    not_run = sorted(by_what.values(), key=lambda n: (-n.cells, n.what))
    command = make_command(defn["id"], sorted(variables)) if not_run else ""
    return TableSummary(defn["id"], table.title, counts, not_run, command, table.partial)
