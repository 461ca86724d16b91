"""The HTML report from hand-made stores: its numbers are the store's, its summary bands
follow from paper values placed at known distances, a changed record changes the page.

Pure numpy + h5py (no Caffe, no browser): records are written with
store.Record; IoU is recomputed here by brute force (TP / (TP + FP + FN) per
class present) rather than through caffe_attacks.metrics.
"""
import json
import os
from html.parser import HTMLParser

import h5py
import numpy as np
import pytest

from caffe_attacks import weights as W
from caffe_attacks.experiments.queries import default_options
from caffe_attacks.report import html, overview, provenance
from caffe_attacks.report.tables import Table, Value
from caffe_attacks.store import Record, ResultsStore

MD5 = W.model_entry("tiny_synthetic")["md5"]


# --------------------------------------------------------------------------
# Helpers: records, a brute-force IoU, a page parser
# --------------------------------------------------------------------------
def config(attack, eps, **extra):
    c = {"model": "tiny_synthetic", "weights_md5": MD5, "dataset": "synthetic", "split": "val",
         "engine": "caffe", "attack": attack, "eps": float(eps),
         "options": {} if attack == "clean" else default_options(attack)}
    c.update(extra)
    return c


def confusion(correct, wrong, classes=3):
    """A (C, C) confusion matrix: `correct` pixels per class on the diagonal, `wrong` of
    class 0 predicted as class 1."""
    cm = np.diag([correct] * classes).astype(np.int64)
    cm[0, 1] = wrong
    return cm


def brute_miou(cms):
    cm = sum(cms)
    ious = []
    for c in range(cm.shape[0]):
        tp = cm[c, c]
        fp = sum(cm[r, c] for r in range(cm.shape[0]) if r != c)
        fn = sum(cm[c, k] for k in range(cm.shape[0]) if k != c)
        if tp + fp + fn:
            ious.append(tp / (tp + fp + fn))
    return 100.0 * sum(ious) / len(ious)


def record(cfg, image_id, cm_adv, extra_clean=None, software=None):
    """A record; software None: as written before records carried their versions."""
    cm_clean = confusion(50, 0) if extra_clean is None else extra_clean
    return Record(cfg, image_id, cm_clean, cm_adv, conf_sum=1.0, ent_sum=0.5,
                  npix=int(cm_adv.sum()), max_delta=float(cfg["eps"]), seconds=0.25,
                  software=software)


class PageParser(HTMLParser):
    """Collects data-count cells per table, totals, result cells and image sources."""

    def __init__(self):
        super().__init__()
        self.counts, self.totals, self.cells, self.images = {}, {}, {}, []
        self._table = self._row = None
        self._stack = []
        self._col = -1

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tr" and "data-table" in a:
            self._table = a["data-table"]
        if tag == "table" and "data-table" in a:
            self._table = a["data-table"]
        if tag == "tr" and "data-row" in a:
            self._row, self._col = a["data-row"], -1
        if tag == "td" and self._row is not None:
            self._col += 1
        if tag == "img":
            self.images.append(a.get("src"))
        self._stack.append((tag, a))

    def handle_endtag(self, tag):
        if tag == "tr":
            self._row = None
        if self._stack:
            self._stack.pop()

    def handle_data(self, data):
        if not self._stack or not data.strip():
            return
        tag, a = self._stack[-1]
        if "data-count" in a:
            self.counts.setdefault(self._table, {})[a["data-count"]] = int(data)
        elif "data-total" in a:
            self.totals[a["data-total"]] = int(data)
        elif "data-ours" in a and self._row is not None:
            self.cells[(self._table, self._row, self._col)] = data.strip()


def parse(path):
    p = PageParser()
    with open(path, encoding="utf-8") as f:
        p.feed(f.read())
    return p


# --------------------------------------------------------------------------
# A definition with paper values at known distances from the stored numbers
# --------------------------------------------------------------------------
CLEAN = [confusion(50, 0), confusion(40, 10)]
FGSM2 = [confusion(30, 20), confusion(35, 5)]


def write_definition(directory, paper_clean, paper_fgsm, paper_ifgsm_clean, label="FGSM"):
    defn = {"id": "table_A99", "kind": "table", "title": "Table A99: test", "caption": "test",
            "dataset": "synthetic", "split": "val", "metric": "miou", "model": "tiny_synthetic",
            "n_images": 100, "columns": {"eps": [0, 2]},
            "rows": [{"label": label, "attack": "fgsm", "paper": [paper_clean, paper_fgsm]},
                     {"label": "Iterative FGSM", "attack": "ifgsm",
                      "paper": [paper_ifgsm_clean, None]}]}
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "table_A99.json"), "w") as f:
        json.dump(defn, f)
    return defn


def make_store(path, extra=None):
    """Two images: clean and FGSM eps 2 of tiny_synthetic (no Iterative FGSM)."""
    with ResultsStore(path) as store:
        for i, (clean, adv) in enumerate(zip(CLEAN, FGSM2)):
            store.add_image([record(config("clean", 0), "img%d" % i, clean, clean),
                             record(config("fgsm", 2, **(extra or {})), "img%d" % i, adv,
                                    clean)])
    return path


@pytest.fixture
def setup(tmp_path):
    clean, fgsm = brute_miou(CLEAN), brute_miou(FGSM2)
    exp_dir = tmp_path / "experiments"
    # clean: 0.4 below ours (within 1); FGSM: 2.5 above (within 3); the other row's clean
    # cell: 7 above (more than 3); its eps 2 cell has no record (not run)
    write_definition(exp_dir, round(clean - 0.4, 1), round(fgsm + 2.5, 1), round(clean + 7, 1))
    results = tmp_path / "results"
    make_store(str(results / "store.h5"))
    return {"exp": str(exp_dir), "results": str(results), "clean": clean, "fgsm": fgsm}


def write(setup, out=None, **kw):
    out = out or os.path.join(setup["results"], "report")
    return html.write_report(out, html.default_stores(setup["results"]),
                             experiments_dir=setup["exp"], **kw)


# --------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------
def test_summary_bands_and_cells_are_the_stores(setup):
    path, report = write(setup)
    page = parse(path)
    assert page.counts["table_A99"] == {"within_1": 1, "within_3": 1, "beyond_3": 1,
                                        "ours_only": 0, "not_run": 1, "paper_only": 0}
    assert page.totals == page.counts["table_A99"]
    assert page.cells[("table_A99", "FGSM", 1)] == "%.1f" % setup["clean"]
    assert page.cells[("table_A99", "FGSM", 2)] == "%.1f" % setup["fgsm"]
    assert page.cells[("table_A99", "Iterative FGSM", 1)] == "%.1f" % setup["clean"]
    assert ("table_A99", "Iterative FGSM", 2) not in page.cells
    # the not-run cell names why (no synthetic data given) and the command that fills it
    (summary,) = report.summaries
    reasons = {n.what: n.cells for n in summary.not_run}
    assert reasons == {"data:synthetic": 1}
    assert summary.command == "make table-A99 SYNTHETIC_DIR=/path/to/synthetic"
    text = open(path, encoding="utf-8").read()
    assert "make table-A99 SYNTHETIC_DIR=/path/to/synthetic" in text


def test_a_changed_record_changes_the_page(setup):
    path, _ = write(setup)
    before = parse(path)
    store_path = os.path.join(setup["results"], "store.h5")
    with h5py.File(store_path, "r+") as f:
        key = next(k for k, g in f["configs"].items()
                   if json.loads(g.attrs["config"])["attack"] == "fgsm")
        cm = f["configs"][key]["cm_adv"][0]
        cm[0, 0] -= 30            # 30 pixels of class 0 now predicted as class 2
        cm[0, 2] += 30
        f["configs"][key]["cm_adv"][0] = cm
    changed = [FGSM2[0].copy(), FGSM2[1]]
    changed[0][0, 0] -= 30
    changed[0][0, 2] += 30
    path, _ = write(setup)
    after = parse(path)
    cell = ("table_A99", "FGSM", 2)
    assert after.cells[cell] == "%.1f" % brute_miou(changed) != before.cells[cell]
    # 2.5 points from the paper before; now far more
    assert after.counts["table_A99"]["within_3"] == 0
    assert after.counts["table_A99"]["beyond_3"] == 2


def test_a_cell_whose_inputs_are_there_is_just_not_run_yet(setup, tmp_path):
    _, report = write(setup, data_dirs={"synthetic": str(tmp_path)})
    (summary,) = report.summaries
    assert [(n.reason, n.cells) for n in summary.not_run] == [
        ("not run yet (its weights and data are there)", 1)]
    assert summary.command == "make table-A99"


def test_a_row_the_table_never_runs_says_so(setup):
    defn = write_definition(setup["exp"], 1.0, 2.0, 3.0)
    defn["rows"].append({"label": "test split", "attack": "fgsm", "split": "test", "run": False,
                         "note": "scored by a server", "paper": [5.0, 6.0]})
    with open(os.path.join(setup["exp"], "table_A99.json"), "w") as f:
        json.dump(defn, f)
    _, report = write(setup)
    (summary,) = report.summaries
    reasons = {n.reason: n.cells for n in summary.not_run}
    assert reasons == {"needs the synthetic dataset: pass SYNTHETIC_DIR=/path/to/it": 1,
                       "not run by this table: scored by a server": 2}
    assert summary.counts["not_run"] == 3


def test_the_hover_is_the_stored_configuration(setup):
    _, report = write(setup)
    cell = report.tables[0].rows[0].cells[1]
    head, body = cell.hover.split("\n", 1)
    assert json.loads(body) == config("fgsm", 2)
    assert "2 image(s)" in head


def test_empty_and_missing_stores_show_paper_values_only(setup, tmp_path):
    empty = tmp_path / "empty"
    os.makedirs(empty)
    path, report = html.write_report(str(empty / "report"), html.default_stores(str(empty)),
                                     experiments_dir=setup["exp"])
    page = parse(path)
    assert page.counts["table_A99"] == {"within_1": 0, "within_3": 0, "beyond_3": 0,
                                        "ours_only": 0, "not_run": 4, "paper_only": 0}
    assert page.cells == {}
    text = open(path, encoding="utf-8").read()
    assert "%.1f" % round(setup["clean"] - 0.4, 1) in text      # the paper's value is shown
    assert "No store at this path" in text
    assert [s.models for s in report.stores] == [[]]


def test_partial_rows_carry_their_image_counts(setup):
    _, report = write(setup)
    row = report.tables[0].rows[0]
    assert (row.n_images, row.full, row.partial) == (2, 100, True)


def test_labels_are_escaped_not_interpreted(setup):
    write_definition(setup["exp"], 1.0, 2.0, 3.0, label="<img src=x onerror=alert(1)>")
    path, _ = write(setup)
    text = open(path, encoding="utf-8").read()
    assert "<img src=x" not in text
    assert "&lt;img src=x onerror=alert(1)&gt;" in text


@pytest.mark.parametrize("delta, expected", [
    (0.0, "within_1"), (1.0, "within_1"), (1.04, "within_1"), (-1.06, "within_3"),
    (3.0, "within_3"), (-3.2, "beyond_3"), (25.0, "beyond_3")])
def test_bands_judge_the_printed_difference(delta, expected):
    table = Table("t", "t", "", ["r"], ["c"], [[Value(paper=50.0, ours=50.0 + delta)]])
    assert overview.band(table, delta) == expected


def test_cell_status_classes():
    table = Table("t", "t", "", [], [], [])
    assert overview.cell_status(table, Value(text="Cityscapes", measured=False)) is None
    assert overview.cell_status(table, Value(paper=3.0, measured=False)) == "paper_only"
    assert overview.cell_status(table, Value(paper=3.0)) == "not_run"
    assert overview.cell_status(table, Value(ours=3.0)) == "ours_only"


def test_diverging_colour_scale():
    assert html.diverging_colour(0) == "#%02x%02x%02x" % html.EQUAL
    assert html.diverging_colour(html.COLOUR_LIMIT) == "#%02x%02x%02x" % html.ABOVE
    assert html.diverging_colour(-html.COLOUR_LIMIT) == "#%02x%02x%02x" % html.BELOW
    assert html.diverging_colour(-4 * html.COLOUR_LIMIT) == html.diverging_colour(
        -html.COLOUR_LIMIT)
    half = html.diverging_colour(-html.COLOUR_LIMIT / 2)
    rgb = [int(half[i:i + 2], 16) for i in (1, 3, 5)]
    assert rgb == [round((e + b) / 2) for e, b in zip(html.EQUAL, html.BELOW)]
    # the further from the paper, the further from the neutral colour
    dist = lambda c: sum(abs(int(c[i:i + 2], 16) - e) for i, e in zip((1, 3, 5), html.EQUAL))
    steps = [dist(html.diverging_colour(d)) for d in (0, 1, 3, 6, 10)]
    assert steps == sorted(steps) and steps[0] == 0 < steps[1]


def test_text_stays_readable_on_the_scale():
    assert html.text_colour(html.diverging_colour(0)) == "#000"
    assert html.text_colour(html.diverging_colour(html.COLOUR_LIMIT)) == "#fff"
    assert html.text_colour(html.diverging_colour(-html.COLOUR_LIMIT)) == "#fff"


# --------------------------------------------------------------------------
# Provenance
# --------------------------------------------------------------------------
def manifest(md5, truncated=False, sha1=None):
    entry = dict(W.model_entry("tiny_synthetic"), md5=md5, md5_truncated=truncated, sha1=sha1)
    return {"models": {"tiny_synthetic": entry}}


@pytest.mark.parametrize("published, truncated, verdict", [
    ("c7038630c4b6c869afaaadd811bdb539", False, "verified"),
    ("c7038630c4b6c869afaadd811bdb539", True, "truncated match"),
    ("c7038630c4b6c869afaadd811bdb530", True, "MISMATCH with the manifest"),
    ("00000000000000000000000000000000", False, "MISMATCH with the manifest"),
    (None, False, "unverified (no published checksum)")])
def test_weights_verdict_of_a_records_md5(published, truncated, verdict):
    got = provenance.weights_verdict("tiny_synthetic", "c7038630c4b6c869afaaadd811bdb539",
                                     manifest=manifest(published, truncated))
    assert got[2] == verdict


def test_weights_verdict_without_weights_or_manifest_entry():
    assert provenance.weights_verdict("tiny_synthetic", None)[2].startswith("no weights")
    assert provenance.weights_verdict("not_a_model", "ab" * 16)[2] == \
        "unverified (not a manifest model)"


def test_provenance_shows_what_records_hold(tmp_path):
    path = make_store(str(tmp_path / "store.h5"), extra={
        "software": {"caffe_attacks": "9.9", "git_commit": "abc123", "caffe": "build-7"},
        "device": "cpu", "forward_passes": 7, "passes": {"forward": 3, "backward": 2},
        "seed": 3})
    with ResultsStore(path, readonly=True) as store:
        (net,) = provenance.collect(store)
    assert (net.model, net.verdict, net.engine) == ("tiny_synthetic", "verified", "caffe")
    assert net.datasets == [("synthetic/val", 2)]
    assert (net.n_configs, net.n_records) == (2, 4)
    assert net.seconds == pytest.approx(4 * 0.25)
    assert net.software == {"caffe": ["build-7"], "caffe_attacks": ["9.9"],
                            "git_commit": ["abc123"]}
    # per-image counts of the FGSM configuration, over its two records
    assert net.passes == {"forward_passes": 14, "forward": 6, "backward": 4}
    assert net.other == {"seed": ["3"]}
    # the clean configuration records no device: both are said
    assert net.device == "cpu, " + provenance.NOT_RECORDED


def test_provenance_reads_each_records_software_column(tmp_path):
    path = str(tmp_path / "store.h5")
    with ResultsStore(path) as store:
        store.add_image([record(config("clean", 0), "img0", CLEAN[0], CLEAN[0],
                                software={"numpy": "1.0", "caffe": "b1"})])
        store.add_image([record(config("clean", 0), "img1", CLEAN[1], CLEAN[1],
                                software={"numpy": "2.0", "caffe": "b1"})])
    with ResultsStore(path, readonly=True) as store:
        (net,) = provenance.collect(store)
    assert net.software == {"caffe": ["b1"], "numpy": ["1.0", "2.0"]}


def test_provenance_of_a_store_without_new_fields_says_not_recorded(tmp_path):
    path = make_store(str(tmp_path / "store.h5"))
    with ResultsStore(path, readonly=True) as store:
        (net,) = provenance.collect(store)
    assert net.device == net.dates == provenance.NOT_RECORDED
    assert net.software == {} and net.passes == {} and net.other == {}
    assert net.versions == [Record.__dataclass_fields__["version"].default]


class RowsStore:
    """A stand-in store: configurations and their record rows as a store returns them."""

    def __init__(self, rows_by_config):
        self._configs = {"k%d" % i: c for i, (c, _) in enumerate(rows_by_config)}
        self._rows = {"k%d" % i: r for i, (_, r) in enumerate(rows_by_config)}

    def configs(self):
        return dict(self._configs)

    def records(self, key):
        return self._rows[key]


def test_provenance_reads_each_records_software(tmp_path):
    software = {"caffe_attacks": "0.2.0", "git_commit": "0123abc+dirty",
                "caffe": "brocolli-caffe==9.0.2 gpu=0", "torch": None}
    row = lambda i, sw: {"id": "img%d" % i, "version": b"0.2.0", "seconds": 1.0,
                         "software": sw}
    store = RowsStore([(config("clean", 0), [row(0, json.dumps(software)), row(1, "")]),
                       (config("fgsm", 2), [row(0, dict(software, git_commit="fedcba9")),
                                            row(1, None)])])
    (net,) = provenance.collect(store)
    assert net.software == {"caffe": ["brocolli-caffe==9.0.2 gpu=0"],
                            "caffe_attacks": ["0.2.0"],
                            "git_commit": ["0123abc+dirty", "fedcba9"], "torch": ["none"]}
    assert net.records_without_software == 2
    assert net.versions == ["0.2.0"]
    assert net.datasets == [("synthetic/val", 2)] and net.n_records == 4


def test_cli_writes_the_report_and_refuses_names(setup, capsys):
    from caffe_attacks.experiments.__main__ import main
    out = os.path.join(setup["results"], "elsewhere")
    assert main(["report", "--results", setup["results"], "--out", out,
                 "--experiments", setup["exp"]]) == 0
    printed = capsys.readouterr().out
    assert "1 cell(s) within 1 of the paper, 1 within 3, 1 further" in printed
    assert os.path.exists(os.path.join(out, "index.html"))
    assert main(["report", "table_A5", "--results", setup["results"]]) == 2
