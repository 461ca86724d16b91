"""Experiment definitions of Tables A13-A18 and Figures A6-A8 (experiments/*.json).

Pure Python: the format (experiments/README.md), every net name resolves, and
the "paper" values are the supplementary's printed numbers: the tables'
numbers in printed order, and the underlined (white-box) cells exactly where
source == target.
"""
import json
import re
from pathlib import Path

import pytest

from caffe_attacks.attacks import ATTACKS, PAPER_EPS
from caffe_attacks.zoo.multiscale import parse_member

ROOT = Path(__file__).resolve().parents[1]
from tests.conftest import SUPPLEMENTARY as SEED  # noqa: E402
TABLES = ["table_A13", "table_A14", "table_A15", "table_A16", "table_A17", "table_A18"]
FIGURES = ["fig_A6", "fig_A7", "fig_A8"]
KINDS = ("multiscale_clean", "transfer_matrix", "transfer_curves")


def load(name):
    return json.loads((ROOT / "experiments" / (name + ".json")).read_text())


@pytest.mark.parametrize("name", TABLES + FIGURES)
def test_format_and_names(name):
    d = load(name)
    assert d["id"] == name and d["kind"] in KINDS and d["dataset"] == "voc"
    assert "paper" in d and "caption" in d
    nets = d.get("models", []) + d.get("sources", []) + d.get("targets", [])
    assert nets
    for net in nets:
        parse_member(net)          # raises on an unknown model or variant
    if d["kind"] != "multiscale_clean":
        assert d["attacks"] and set(d["attacks"]) <= set(ATTACKS)
    if d["kind"] == "transfer_matrix":
        assert d["eps"] == 8 and d["fusion"] in ("max", "avg")
        assert len(d["row_labels"]) == len(d["targets"])
        for attack, matrix in d["paper"]["iou_ratio_percent"].items():
            assert attack in d["attacks"]
            assert len(matrix) == len(d["targets"])
            assert all(len(row) == len(d["sources"]) for row in matrix)
    if d["kind"] == "transfer_curves":
        assert d["eps"] == list(PAPER_EPS)


def _segment(start, end):
    text = SEED.read_text()
    a = text.index(start)
    return text[a:text.index(end, a)]


@pytest.mark.skipif(not SEED.exists(), reason="supplementary text not available")
@pytest.mark.parametrize("name, start, end", [
    ("table_A15", "Table A15:", "Table A16:"),
    ("table_A16", "Table A16:", "Figure A7:"),
    ("table_A17", "Table A17:", "Table A18:"),
    ("table_A18", "Table A18:", "(a) Transfer attacks on FCN8s"),
])
def test_transfer_tables_are_the_printed_numbers(name, start, end):
    d = load(name)
    body = _segment(start, end).split("Network evaluated", 1)[1]
    blocks = body.split("Network evaluated")
    values = d["paper"]["iou_ratio_percent"]
    attacks = list(values)
    printed, underlined = [], []
    for b, block in enumerate(blocks):
        rows = [l for l in block.splitlines()[2:] if re.search(r"\d\t", l)]
        for i, line in enumerate(rows):
            cells = line.split("\t")[1:]
            printed += [float(re.sub("</?u>", "", c)) for c in cells]
            underlined += [(b, i, j) for j, c in enumerate(cells) if c.startswith("<u>")]
    ours = []
    for b in range(len(blocks)):
        pair = attacks[2 * b:2 * b + 2]
        for i in range(len(d["targets"])):
            for attack in pair:
                ours += values[attack][i]
    assert ours == printed
    diagonal = [(b, i, 4 * k + j) for b in range(len(blocks)) for k in range(2)
                for i, t in enumerate(d["targets"]) for j, s in enumerate(d["sources"])
                if s == t]
    assert sorted(diagonal) == sorted(underlined)


@pytest.mark.skipif(not SEED.exists(), reason="supplementary text not available")
@pytest.mark.parametrize("name, start, end", [
    ("table_A13", "Table A13: Performance", "A4.1.1"),
    ("table_A14", "Table A14:", "findings remain"),
])
def test_clean_tables_are_the_printed_numbers(name, start, end):
    d = load(name)
    lines = [l.split("\t") for l in _segment(start, end).splitlines() if "\t" in l][1:]
    assert [l[0] for l in lines] == d["row_labels"]
    assert [float(l[1]) for l in lines] == d["paper"]["miou_percent"]
    assert len(d["models"]) == len(lines)
