"""Tables from the results store, beside the paper's values: Markdown, CSV, LaTeX.

Never runs a network. A table definition (experiments/README.md) becomes a
``Table`` of ``Value``s, each holding the paper's number, ours and the
difference; ours comes from the store's records of the configuration that
answers the cell's query (experiments.queries.find_config). Within a row, every cell
of one model is summarised over the same images (those all its
configurations have), so a clean column and an attacked one never mix image
sets; a row over fewer images than the full split is marked partial.
"""
import csv
import io
import os
from dataclasses import dataclass, field

from caffe_attacks import zoo
from caffe_attacks.experiments.definitions import FULL_SPLIT_SIZE, expand_columns, table_cells
from caffe_attacks.experiments.queries import find_config
from caffe_attacks.zoo.shapes import param_count

METRICS = {
    # name: (function of a store summary, default format)
    "miou": (lambda s: 100.0 * s["miou"], "%.1f"),
    "iou_ratio": (lambda s: 100.0 * s["iou_ratio"], "%.1f"),
    "pixel_accuracy": (lambda s: 100.0 * s["pixel_accuracy"], "%.1f"),
    "confidence": (lambda s: s["confidence"], "%.3f"),
    "entropy": (lambda s: s["entropy"], "%.3f"),
}
DASH = "–"


@dataclass
class Value:
    """One cell: the paper's value, ours (None: not measured yet), over n_images."""
    paper: float = None
    ours: float = None
    n_images: int = 0
    text: str = None          # descriptive cells (Table A4's dataset column)
    measured: bool = True     # False: a column the project does not measure

    @property
    def delta(self):
        if self.paper is None or self.ours is None:
            return None
        return self.ours - self.paper


@dataclass
class Table:
    id: str
    title: str
    caption: str
    row_labels: list
    col_labels: list
    values: list                      # [row][col] Value
    fmt: str = "%.1f"
    notes: list = field(default_factory=list)
    partial: bool = False

    @property
    def has_paper(self):
        return any(v.paper is not None for row in self.values for v in row)


def build(defn, store, limit=None, ids=None):
    """A Table of definition `defn` from `store` (a ResultsStore, or None: paper only).

    limit: the LIMIT the table was asked for; it marks the table partial even
    where the full split size is unknown.
    ids: summarise over these image ids only (e.g. the images one run covered).
    """
    if defn["kind"] == "params":
        return _build_params(defn)
    metric = defn.get("metric", "miou")
    value_of, fmt = METRICS[metric]
    fmt = defn.get("format", fmt)
    rows, cols, cells = table_cells(defn)
    columns = expand_columns(defn)
    values = [[Value() for _ in cols] for _ in rows]
    keys = {}
    for cell in cells:
        v = values[cell.row][cell.col]
        v.paper = cell.paper
        if cell.query is None:
            v.measured = False
            source = columns[cell.col].get("text_from")
            if source:
                v.text = str(defn["rows"][cell.row].get(source, ""))
            continue
        keys[(cell.row, cell.col)] = find_config(store, cell.query) if store else None

    notes, partial = [], bool(limit)
    for r, label in enumerate(rows):
        groups = {}
        for cell in cells:
            if cell.row == r and keys.get((cell.row, cell.col)):
                q = cell.query
                groups.setdefault((q["model"], q["dataset"], q.get("split", "val")), []).append(
                    (cell.col, keys[(r, cell.col)]))
        for (model, dataset, split), items in groups.items():
            id_sets = [set(store.summary(k)["ids"]) for _, k in items]
            common = set.intersection(*id_sets)
            if ids is not None:
                common &= set(ids)
            if not common:
                notes.append("%s: its columns share no image; not shown" % label)
                continue
            for col, key in items:
                s = store.summary(key, ids=sorted(common))
                values[r][col].ours = value_of(s)
                values[r][col].n_images = s["n_images"]
            full = defn.get("n_images") or FULL_SPLIT_SIZE.get((dataset, split))
            if full is None or len(common) < full:
                if full is not None or limit:
                    partial = True
                notes.append("%s: %d image(s)%s" % (label, len(common),
                                                     " of %d (partial)" % full if full and
                                                     len(common) < full else ""))
    for r, row in enumerate(defn["rows"]):
        if row.get("note"):
            notes.append("%s: %s" % (row["label"], row["note"]))
    title = defn.get("title") or defn["id"]
    return Table(defn["id"], title, defn.get("caption", ""), rows, cols, values, fmt,
                 notes, partial)


def _build_params(defn):
    """Table A4: parameter MB from the committed prototxt (4-byte floats, 2**20 bytes)."""
    cols = [c["label"] for c in defn["columns"]]
    values, notes = [], []
    for row in defn["rows"]:
        vals = []
        for c, col in enumerate(defn["columns"]):
            paper = row["paper"][c] if row.get("paper") else None
            if col.get("text_from"):
                vals.append(Value(text=str(row.get(col["text_from"], "")), measured=False))
                continue
            ours = None
            path = zoo.prototxt_path(row["model"])
            if os.path.exists(path):
                with open(path) as f:
                    ours = param_count(f.read()) * 4 / 2.0 ** 20
            else:
                notes.append("%s: %s missing (run `make prototxt`)" % (row["label"], path))
            vals.append(Value(paper=paper, ours=ours))
        values.append(vals)
    notes.append("ours: parameters of the committed prototxt/<model>.prototxt, x 4 bytes, "
                 "in MiB (the paper's MB match MiB)")
    return Table(defn["id"], defn.get("title", defn["id"]), defn.get("caption", ""),
                 [r["label"] for r in defn["rows"]], cols, values, defn.get("format", "%.1f"),
                 notes, False)


# --------------------------------------------------------------------------
# Formats
# --------------------------------------------------------------------------
def _num(fmt, x):
    return DASH if x is None else fmt % x


def _signed(fmt, x):
    if x is None:
        return DASH
    s = fmt % x
    if s.startswith("-") and float(s) == 0:
        s = s[1:]          # -0.0: a difference that rounds to nothing has no sign
    return s if s.startswith("-") else "+" + s


def cell_text(table, v):
    """'paper / ours / delta' (or ours alone when the table has no paper values)."""
    if v.text is not None:
        return v.text
    if not v.measured:
        return _num(table.fmt, v.paper)
    if not table.has_paper:
        return _num(table.fmt, v.ours)
    return "%s / %s / %s" % (_num(table.fmt, v.paper), _num(table.fmt, v.ours),
                             _signed(table.fmt, v.delta))


def _legend(table):
    if not table.has_paper:
        return "Each cell: ours."
    return ("Each cell: paper / ours / difference (ours - paper); %s = not available. "
            "Columns the project does not measure show the paper's value alone." % DASH)


def to_markdown(table):
    lines = ["### %s%s" % (table.title, " (partial)" if table.partial else ""), ""]
    if table.caption and table.caption not in table.title:
        lines += ["Paper: %s" % table.caption, ""]
    head = ["Network"] + list(table.col_labels)
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join(["---"] + ["--:"] * len(table.col_labels)) + "|")
    for label, row in zip(table.row_labels, table.values):
        lines.append("| " + " | ".join([label] + [cell_text(table, v) for v in row]) + " |")
    lines += ["", _legend(table)]
    if table.partial:
        lines.append("**Partial**: evaluated on fewer images than the full split.")
    for n in table.notes:
        lines.append("- %s" % n)
    return "\n".join(lines) + "\n"


def to_csv(table):
    """Long format: one line per cell with paper, ours, delta and n_images."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["table", "row", "column", "paper", "ours", "delta", "n_images", "partial"])
    for label, row in zip(table.row_labels, table.values):
        for col, v in zip(table.col_labels, row):
            if v.text is not None:
                continue
            w.writerow([table.id, label, col, "" if v.paper is None else v.paper,
                        "" if v.ours is None else "%.6g" % v.ours,
                        "" if v.delta is None else "%.6g" % v.delta,
                        v.n_images if v.measured else "", int(table.partial)])
    return buf.getvalue()


_TEX_ESCAPES = {"&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                "\\": r"\textbackslash{}"}


def _tex(text):
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in str(text)).replace(DASH, "--")


def to_latex(table):
    spec = "l" + "r" * len(table.col_labels)
    lines = [r"\begin{table}[t]", r"\centering", r"\small",
             r"\begin{tabular}{%s}" % spec, r"\toprule",
             " & ".join(["Network"] + [_tex(c) for c in table.col_labels]) + r" \\",
             r"\midrule"]
    for label, row in zip(table.row_labels, table.values):
        lines.append(" & ".join([_tex(label)] + [_tex(cell_text(table, v)) for v in row])
                     + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}",
              r"\caption{%s%s %s}" % (_tex(table.title), " (partial)" if table.partial else "",
                                      _tex(_legend(table))),
              r"\end{table}"]
    return "\n".join(lines) + "\n"


def write(table, out_dir):
    """Write <id>.md, <id>.csv and <id>.tex into out_dir; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for ext, fn in (("md", to_markdown), ("csv", to_csv), ("tex", to_latex)):
        path = os.path.join(out_dir, "%s.%s" % (table.id, ext))
        with open(path, "w", encoding="utf-8") as f:
            f.write(fn(table))
        paths.append(path)
    return paths
