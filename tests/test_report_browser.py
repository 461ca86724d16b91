"""The HTML report of a real demo run, opened in a headless Chromium.

A couple of images of the synthetic set go through the real runner on
tiny_synthetic (make demo's code path, two eps), the report is rendered, and
the page is loaded through the DevTools protocol (tests/browser.py): no
console error or failed load, every image decodes, the summary counts equal
the ones derived here from the store's configurations, a cell shows the
store's own summary, and a record changed in the store changes the page.
Skips with a reason where no Chromium is installed (Debian: ``apt-get
install chromium``; ``make setup`` installs it where apt is available).
"""
import json
import os
import shutil

import h5py
import numpy as np
import pytest
from PIL import Image

from tests.browser import Browser, find_chromium
from tests.conftest import requires_caffe

CHROMIUM = find_chromium()
EPS = [4.0, 16.0]
N_IMAGES = 2
WIDTH, HEIGHT = 1280, 900

pytestmark = [requires_caffe, pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium installed (apt-get install chromium)")]

COUNTS_JS = """Object.fromEntries(Array.from(document.querySelectorAll('tr[data-table]'))
  .filter(tr => tr.querySelector('[data-count]'))
  .map(tr => [tr.dataset.table, Object.fromEntries(Array.from(
      tr.querySelectorAll('[data-count]')).map(td => [td.dataset.count,
                                                     Number(td.textContent)]))]))"""
IMAGES_JS = """Array.from(document.images).map(i => ({src: i.getAttribute('src'),
  complete: i.complete, width: i.naturalWidth, height: i.naturalHeight}))"""
CELL_JS = """(() => { const t = document.querySelector('table.results[data-table="demo_table"]');
  const row = Array.from(t.querySelectorAll('tr[data-row]')).find(r => r.dataset.row === %s);
  return row.querySelectorAll('td')[%d].querySelector('.ours').textContent; })()"""


@pytest.fixture(scope="module")
def demo_results(tmp_path_factory):
    from caffe_attacks.demo import run_demo
    root = tmp_path_factory.mktemp("report_demo")
    results = root / "results"
    run_demo(data_dir=str(root / "synthetic"), out_dir=str(results / "demo"), limit=N_IMAGES,
             progress=False, eps=EPS)
    return root, results


def render(results):
    from caffe_attacks.report import html
    return html.write_report(str(results / "report"), html.default_stores(str(results)))


def open_page(path, profile):
    os.makedirs(profile, exist_ok=True)
    browser = Browser(CHROMIUM, str(profile), WIDTH, HEIGHT)
    browser.open("file://" + os.path.abspath(path))
    return browser


def expected_demo_counts(store_path):
    """The demo table's counts from the store's configurations alone.

    A cell (attack row, eps column) has a number iff the store holds that
    attack at that eps (eps 0: the clean configuration); the demo table has no
    paper values, so every measured cell is 'ours only'.
    """
    from caffe_attacks.experiments import load
    defn = load("demo_table")
    with h5py.File(store_path, "r") as f:
        stored = {(c["attack"], float(c["eps"])) for c in
                  (json.loads(g.attrs["config"]) for g in f["configs"].values())}
    measured = 0
    for row in defn["rows"]:
        for e in defn["columns"]["eps"]:
            key = ("clean", 0.0) if e == 0 else (row["attack"], float(e))
            measured += key in stored
    cells = len(defn["rows"]) * len(defn["columns"]["eps"])
    return {"within_1": 0, "within_3": 0, "beyond_3": 0, "ours_only": measured,
            "not_run": cells - measured, "paper_only": 0}


def miou_of(store_path, attack, eps):
    """100 x mIoU of one stored configuration, summed confusion matrices, brute force."""
    with h5py.File(store_path, "r") as f:
        for g in f["configs"].values():
            c = json.loads(g.attrs["config"])
            if c["attack"] == attack and float(c["eps"]) == eps:
                cm = g["cm_adv"][()].sum(axis=0)
    tp = np.diag(cm).astype(float)
    union = cm.sum(0) + cm.sum(1) - tp
    present = union > 0
    return 100.0 * float(np.mean(tp[present] / union[present]))


def cell_js(row_label, eps):
    """JS for the text of our number in the demo table's cell (row, eps column)."""
    from caffe_attacks.experiments import load
    column = [float(e) for e in load("demo_table")["columns"]["eps"]].index(eps)
    return CELL_JS % (json.dumps(row_label), 1 + column)      # td 0 is the row label


def test_the_report_loads_cleanly_and_shows_the_store(demo_results, tmp_path):
    root, results = demo_results
    path, report = render(results)
    store_path = str(results / "demo" / "store.h5")
    with open_page(path, tmp_path / "profile") as browser:
        errors = browser.errors()
        images = browser.evaluate(IMAGES_JS)
        counts = browser.evaluate(COUNTS_JS)
        cell = browser.evaluate(cell_js("Iterative FGSM", 16.0))
        shot = browser.screenshot(str(tmp_path / "report.png"))
    assert errors == []
    assert len(images) == len(report.figures) > 0
    broken = [i["src"] for i in images if not (i["complete"] and i["width"] > 0)]
    assert broken == []
    assert counts["demo_table"] == expected_demo_counts(store_path)
    # tables with paper values and no store behind them: nothing measured, nothing hidden
    assert counts["table_A5"]["not_run"] == 90 and counts["table_A5"]["ours_only"] == 0
    assert cell == "%.1f" % miou_of(store_path, "ifgsm", 16.0)
    with Image.open(shot) as img:
        assert img.size == (WIDTH, HEIGHT)
        pixels = np.asarray(img.convert("L"), dtype=float)
    assert pixels.std() > 10          # a rendered page, not a blank one


def test_a_changed_stored_value_changes_the_page(demo_results, tmp_path):
    root, results = demo_results
    changed = tmp_path / "results"
    shutil.copytree(results, changed, ignore=shutil.ignore_patterns("report"))
    store_path = str(changed / "demo" / "store.h5")
    before = miou_of(store_path, "ifgsm", 16.0)
    with h5py.File(store_path, "r+") as f:
        for g in f["configs"].values():
            c = json.loads(g.attrs["config"])
            if c["attack"] == "ifgsm" and float(c["eps"]) == 16.0:
                cm = g["cm_adv"][()]
                cm[:, np.arange(cm.shape[1]), np.arange(cm.shape[2])] //= 2    # halve the hits
                g["cm_adv"][...] = cm
    after = miou_of(store_path, "ifgsm", 16.0)
    assert "%.1f" % after != "%.1f" % before
    path, _ = render(changed)
    with open_page(path, tmp_path / "profile") as browser:
        cell = browser.evaluate(cell_js("Iterative FGSM", 16.0))
        assert browser.errors() == []
    assert cell == "%.1f" % after
