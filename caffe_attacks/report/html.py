"""The reproduction report: one HTML page with every table beside the paper, the figures
and the provenance, rendered with Jinja2 templates (caffe_attacks/report/templates/).

Never runs a network. Numbers come from :func:`caffe_attacks.report.tables.build`
(the same Table the Markdown/CSV/LaTeX files show), figures from
:func:`caffe_attacks.report.figures.render` (PNG beside the page, in
``<out>/figures``), provenance from :mod:`.provenance`, the summary from
:mod:`.overview`. The page is self-contained: CSS inline, no script, images
next to it.

Two stores feed it: the results store (``RESULTS/store.h5``, the paper's
tables) and the demo's (``RESULTS/demo/store.h5``, where ``make demo``
writes) for the ``demo_*`` definitions; where the demo's store does not
exist the results store answers them too.
"""
import datetime
import json
import logging
import os
from dataclasses import dataclass, field

import jinja2

from caffe_attacks import __version__
from caffe_attacks.experiments.definitions import (EXPERIMENTS_DIR, FIGURE_KINDS,
                                                   FULL_SPLIT_SIZE, TABLE_KINDS, list_ids, load,
                                                   table_cells)
from caffe_attacks.experiments.examples import default_examples_dir
from caffe_attacks.experiments.queries import find_config
from caffe_attacks.report import figures, overview, provenance, tables
from caffe_attacks.store import ResultsStore

log = logging.getLogger(__name__)

DEMO_PREFIX = "demo_"
# The difference (ours - paper, table units) at which the colour scale saturates.
COLOUR_LIMIT = 10.0
# Diverging scale endpoints (ColorBrewer RdBu): ours below the paper, equal, above it.
BELOW, EQUAL, ABOVE = (33, 102, 172), (247, 247, 247), (178, 24, 43)
TEMPLATE = "report.html.j2"


def diverging_colour(delta, limit=COLOUR_LIMIT):
    """'#rrggbb' for a difference: EQUAL at 0, BELOW at -limit, ABOVE at +limit (clamped)."""
    t = max(-1.0, min(1.0, float(delta) / limit))
    end = ABOVE if t > 0 else BELOW
    rgb = [round(e + abs(t) * (x - e)) for e, x in zip(EQUAL, end)]
    return "#%02x%02x%02x" % tuple(rgb)


def text_colour(background):
    """Black or white text, whichever reads on ``background`` ('#rrggbb')."""
    r, g, b = (int(background[i:i + 2], 16) for i in (1, 3, 5))
    return "#000" if 0.299 * r + 0.587 * g + 0.114 * b > 140 else "#fff"


@dataclass
class CellView:
    paper: str = ""
    ours: str = ""
    delta: str = ""
    status: str = ""              # overview.cell_status, or "text"
    background: str = ""
    foreground: str = ""
    hover: str = ""


@dataclass
class RowView:
    label: str
    cells: list
    n_images: int = 0
    full: int = None
    partial: bool = False


@dataclass
class TableView:
    id: str
    title: str
    caption: str
    col_labels: list
    rows: list
    notes: list
    partial: bool
    has_paper: bool
    summary: overview.TableSummary
    store: str


@dataclass
class FigureView:
    id: str
    title: str
    caption: str
    src: str
    pdf: str
    store: str


@dataclass
class StoreView:
    label: str
    path: str
    exists: bool
    modified: str
    models: list = field(default_factory=list)


@dataclass
class Report:
    """Everything the template shows; built by :func:`build_report`."""
    generated: str
    version: str
    summaries: list
    totals: dict
    tables: list
    figures: list
    stores: list
    command: str = "make report"
    bands: tuple = overview.BANDS


def _fmt(table, x):
    return tables.DASH if x is None else table.fmt % x


def _hover(store, query, n_images):
    """The stored configuration answering a cell, as the hover text."""
    key = find_config(store, query) if store is not None and query else None
    if key is None:
        return ""
    config = store.configs()[key]
    return "store key %s, %d image(s)\n%s" % (key, n_images,
                                               json.dumps(config, indent=1, sort_keys=True))


def cell_view(table, value, query=None, store=None):
    """The page's view of one tables.Value (paper, ours, difference as printed; colours)."""
    status = overview.cell_status(table, value)
    if status is None:
        return CellView(ours=value.text, status="text")
    view = CellView(paper=_fmt(table, value.paper), status=status)
    if status == "paper_only":
        return view
    view.ours = _fmt(table, value.ours)
    if value.delta is not None:
        view.delta = signed(table.fmt, value.delta)
        view.background = diverging_colour(float(table.fmt % value.delta))
        view.foreground = text_colour(view.background)
    if value.ours is not None:
        view.hover = _hover(store, query, value.n_images)
    return view


def signed(fmt, x):
    """A difference with its sign, '+0.0' for one that rounds to nothing."""
    s = fmt % x
    if s.startswith("-") and float(s) == 0:
        s = s[1:]
    return s if s.startswith("-") else "+" + s


def table_view(defn, table, store, reasons, store_label):
    """A TableView of a built Table: rows with image counts, cells with hover configs."""
    queries = {}
    if defn["kind"] == "table":
        queries = {(c.row, c.col): c.query for c in table_cells(defn)[2]}
    full = defn.get("n_images") or FULL_SPLIT_SIZE.get((defn.get("dataset"),
                                                         defn.get("split", "val")))
    rows = []
    for r, (label, values) in enumerate(zip(table.row_labels, table.values)):
        cells = [cell_view(table, v, queries.get((r, c)), store) for c, v in enumerate(values)]
        n = max([v.n_images for v in values if v.ours is not None and v.n_images] or [0])
        rows.append(RowView(label, cells, n, full, bool(n and full and n < full)))
    if defn["kind"] == "params":
        for row, d_row in zip(rows, defn["rows"]):
            for cell in row.cells:
                if cell.status not in ("text", "paper_only"):
                    cell.hover = ("parameters of prototxt/%s.prototxt x 4 bytes, MiB"
                                  % d_row["model"])
    return TableView(defn["id"], table.title, defn.get("caption", ""), list(table.col_labels),
                     rows, list(table.notes), table.partial, table.has_paper,
                     overview.summarize(defn, table, reasons), store_label)


def _open(path):
    return ResultsStore(path, readonly=True) if path and os.path.exists(path) else None


def _close(store):
    if store is not None:
        store.close()


def default_stores(results_dir):
    """{'results': RESULTS/store.h5, 'demo': RESULTS/demo/store.h5 or the results store}."""
    main = os.path.join(results_dir, "store.h5")
    demo = os.path.join(results_dir, "demo", "store.h5")
    return {"results": main, "demo": demo if os.path.exists(demo) else main}


def build_report(out_dir, stores, experiments_dir=EXPERIMENTS_DIR, data_dirs=None,
                 weights_dir="weights", with_figures=True, ids=None):
    """The Report of every definition (or of ``ids``), figures written into out_dir/figures.

    stores: {'results': path, 'demo': path} (see :func:`default_stores`); a
    path that does not exist is an empty store (paper values only).
    """
    reasons = overview.Reasons(data_dirs, weights_dir)
    opened = {label: _open(path) for label, path in stores.items()}
    try:
        table_views, figure_views = [], []
        for exp_id in ids or list_ids(directory=experiments_dir):
            defn = load(exp_id, experiments_dir)
            label = "demo" if exp_id.startswith(DEMO_PREFIX) else "results"
            store = opened.get(label)
            if defn["kind"] in TABLE_KINDS:
                table = tables.build(defn, store)
                table_views.append(table_view(defn, table, store, reasons, label))
            elif defn["kind"] in FIGURE_KINDS and with_figures:
                figure_views.append(_figure(defn, store, stores[label], out_dir,
                                            experiments_dir, label))
        store_views = []
        for label, path in stores.items():
            if any(v.path == path for v in store_views):
                continue
            store_views.append(StoreView(label, path, os.path.exists(path),
                                         provenance.store_modified(path),
                                         provenance.collect(opened[label], weights_dir)))
    finally:
        for store in opened.values():
            _close(store)
    totals = dict.fromkeys(overview.COUNT_NAMES, 0)
    for t in table_views:
        for name, n in t.summary.counts.items():
            totals[name] += n
    return Report(generated=datetime.datetime.now(datetime.timezone.utc).strftime(
                      "%Y-%m-%d %H:%M UTC"),
                  version=__version__, summaries=[t.summary for t in table_views],
                  totals=totals, tables=table_views, figures=figure_views, stores=store_views)


def _figure(defn, store, store_path, out_dir, experiments_dir, label):
    fig_dir = os.path.join(out_dir, "figures")
    paths = figures.render(defn, store, fig_dir, examples_dir=default_examples_dir(store_path),
                           experiments_dir=experiments_dir)
    png = next(p for p in paths if p.endswith(".png"))
    pdf = next((p for p in paths if p.endswith(".pdf")), None)
    rel = lambda p: os.path.relpath(p, out_dir).replace(os.sep, "/") if p else ""
    return FigureView(defn["id"], defn.get("title") or defn["id"],
                      defn.get("caption") or defn.get("title") or "", rel(png), rel(pdf), label)


def environment():
    """The Jinja2 environment of the report's templates (HTML autoescaped)."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("caffe_attacks.report", "templates"),
        autoescape=jinja2.select_autoescape(["html", "html.j2"], default_for_string=True),
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def render_html(report):
    """The page's HTML text for a Report."""
    return environment().get_template(TEMPLATE).render(
        report=report, bands=overview.BANDS, count_names=overview.COUNT_NAMES,
        colour_limit=COLOUR_LIMIT, scale=[(d, diverging_colour(d)) for d in
                                          (-COLOUR_LIMIT, -3, -1, 0, 1, 3, COLOUR_LIMIT)])


def write_report(out_dir, stores, **kwargs):
    """Build and write ``out_dir/index.html`` (figures beside it); returns (path, Report)."""
    os.makedirs(out_dir, exist_ok=True)
    report = build_report(out_dir, stores, **kwargs)
    path = os.path.join(out_dir, "index.html")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(render_html(report))
    os.replace(tmp, path)
    log.info("wrote %s", path)
    return path, report
