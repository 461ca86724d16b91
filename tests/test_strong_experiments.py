"""Tables B1/B2 and Figures B1/B2: definitions, paper values, store queries for the strong attacks."""
import json
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
STRONG = ["pgd", "segpgd", "cospgd", "apgd_mce", "apgd_mce_bal", "apgd_js"]


@pytest.mark.parametrize("table,source", [("table_B1", "table_A7"), ("table_B2", "table_A11")])
def test_iterative_fgsm_rows_carry_the_papers_values(table, source):
    from caffe_attacks.experiments.definitions import load
    b, a = load(table), load(source)
    assert b["columns"] == {"eps": [0.25, 0.5, 1, 2, 4, 8]}
    # the paper's rows (Table A's last row is the synthetic stand-in, without a paper value)
    paper = {r["model"]: r["paper"] for r in a["rows"] if r.get("paper") is not None}
    assert len(paper) == len(a["rows"]) - 1
    ifgsm = [r for r in b["rows"] if r["attack"] == "ifgsm" and r["model"] in paper]
    assert len(ifgsm) == len(paper)
    for r in ifgsm:
        # Table A's columns are eps 0, 0.25, ..., 32: B keeps 0.25 .. 8
        assert r["paper"] == paper[r["model"]][1:7]
    for model in paper:
        attacks = [r["attack"] for r in b["rows"] if r["model"] == model]
        assert attacks == ["ifgsm", "pgd", "segpgd", "cospgd", "sea"]


@pytest.mark.parametrize("name", ["B1", "table-B2", "fig_B1", "figure-B2"])
def test_b_ids_normalise(name):
    from caffe_attacks.experiments.definitions import normalize_id
    out = normalize_id(name, prefix="table")
    assert out in ("table_B1", "table_B2", "fig_B1", "fig_B2")


@pytest.mark.parametrize("dataset", ["voc", "cityscapes", "synthetic"])
def test_default_queries_find_the_runs_configurations(dataset, tmp_path):
    """A cell that names no options must match what a default run stores, on every dataset."""
    from caffe_attacks.experiments.queries import config_matches
    from caffe_attacks.runner import RunOptions, make_configs
    from caffe_attacks.runner.registry import record_options
    from caffe_attacks.runner.strong import sea_configs
    options = RunOptions(dataset=dataset, data_dir=str(tmp_path), attacks=tuple(STRONG + ["sea"]),
                         eps=(2.0,))
    base = {"model": "m", "dataset": dataset, "split": "val", "engine": "caffe"}
    configs = make_configs(base, options)
    members = {(a, e): c for a, e, c in configs}
    configs += sea_configs(members, record_options(options, "sea"), options.eps, ["a", "b"])
    made = {a for a, _, _ in configs}
    assert made == {"clean", *STRONG, "sea"}
    for attack, e, config in configs:
        q = dict(base, attack=attack, eps=e)
        assert config_matches(config, q), attack
        # a non-default run does not answer the default cell
        if attack in ("pgd", "apgd_js"):
            other = make_configs(base, options.replace(iterations=7, attacks=(attack,)))[1][2]
            assert not config_matches(other, q)


def test_b_figures_name_the_tables_models():
    for fig, table in (("fig_B1", "table_B1"), ("fig_B2", "table_B2")):
        f = json.loads((EXPERIMENTS / (fig + ".json")).read_text())
        t = json.loads((EXPERIMENTS / (table + ".json")).read_text())
        assert f["attacks"] == ["ifgsm", "sea"]
        assert set(f["models"]) == {r["model"] for r in t["rows"]} - {"tiny_synthetic"}
