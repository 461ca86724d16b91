"""Experiment definitions: transcription, expansion into queries, plans, clear messages."""
import json

import pytest

from caffe_attacks import experiments as E
from caffe_attacks.experiments.__main__ import main as experiments_main

TABLES = ["table_A%d" % i for i in range(1, 13)]


@pytest.mark.parametrize("exp_id", E.list_ids())
def test_every_definition_loads(exp_id):
    d = E.load(exp_id)
    assert d["id"] == exp_id
    assert E.validate(d) == []


def _paper(table, label, column):
    rows, cols, cells = E.table_cells(E.load(table))
    r, c = rows.index(label), cols.index(column)
    return next(x.paper for x in cells if x.row == r and x.col == c)


@pytest.mark.parametrize("table,label,column,value", [
    # typed from the supplementary by hand, independently of the transcription
    ("table_A1", "CRF-RNN", "IoU [%]", 72.8),
    ("table_A2", "Deeplab v2 ASPP (VGG)", "IoU of authors [%]", 68.9),
    ("table_A3", "ICNet", "IoU at 2048x1024", 67.2),
    ("table_A5", "PSPNet (ResNet)", "32", 21.2),
    ("table_A6", "FCN8s (ResNet)", "8", 36.8),
    ("table_A7", "Dilated Context (VGG)", "32", 8.2),
    ("table_A8", "FCN8s (VGG)", "1", 52.5),
    ("table_A9", "ENet", "0.25", 39.6),
    ("table_A10", "PSPNet (ResNet)", "4", 39.5),
    ("table_A11", "ICNet", "16", 4.8),
    ("table_A12", "Dilated Context (VGG)", "2", 19.9),
])
def test_spot_values(table, label, column, value):
    assert _paper(table, label, column) == value


def _clean_iou_by_model(tables, column):
    out = {}
    for t in tables:
        rows, cols, cells = E.table_cells(E.load(t))
        for c in cells:
            if c.col == cols.index(column) and c.query and c.query.get("split") == "val":
                out[c.query["model"]] = c.paper
    return out


def paper_rows(defn):
    """The rows of the paper's models (not this project's stand-in rows)."""
    return [r for r in defn["rows"] if r.get("paper") is not None]


STAND_IN_TABLES = ["table_A%d" % n for n in range(5, 13)]


@pytest.mark.parametrize("table", STAND_IN_TABLES)
def test_paper_grid_tables_end_with_the_synthetic_stand_in(table):
    """A5-A12 run here: their last row is tiny_synthetic on the synthetic set, no paper value."""
    d = E.load(table)
    *paper, stand_in = d["rows"]
    assert all(r.get("paper") is not None and r["model"] != "tiny_synthetic" for r in paper)
    assert (stand_in["model"], stand_in["dataset"], stand_in.get("paper")) == (
        "tiny_synthetic", "synthetic", None)
    assert stand_in["label"].startswith("stand-in tiny_synthetic")
    assert "stand-in" in d["caption"]
    job = [j for j in E.plan(E.queries_of(d)) if j.model == "tiny_synthetic"]
    assert len(job) == 1 and job[0].dataset == "synthetic" and job[0].attacks == [d["attack"]]
    assert job[0].eps == [e for e in d["columns"]["eps"] if e]


@pytest.mark.parametrize("tables,clean_tables,column", [
    (["table_A5", "table_A6", "table_A7", "table_A8"], ["table_A1", "table_A2"], "IoU [%]"),
    (["table_A9", "table_A10", "table_A11", "table_A12"], ["table_A3"], "IoU at 1024x512"),
])
def test_eps_zero_columns_agree_with_the_clean_tables(tables, clean_tables, column):
    """The paper prints each clean IoU twice (Tables A1-A3 and the eps = 0 columns)."""
    clean = _clean_iou_by_model(clean_tables, column)
    for t in tables:
        d = E.load(t)
        for row in paper_rows(d):
            assert row["paper"][0] == clean[row["model"]], (t, row["label"])


@pytest.mark.parametrize("iterative,single", [
    ("table_A7", "table_A5"), ("table_A8", "table_A6"),
    ("table_A11", "table_A9"), ("table_A12", "table_A10")])
def test_iterative_tables_equal_single_step_below_eps_one(iterative, single):
    """With alpha = 1, eps < 1 means one iteration: the paper's values coincide there."""
    a, b = E.load(iterative), E.load(single)
    assert len(paper_rows(a)) == len(paper_rows(b))
    for ra, rb in zip(paper_rows(a), paper_rows(b)):
        assert ra["model"] == rb["model"]
        assert ra["paper"][:3] == rb["paper"][:3], ra["label"]


def test_model_names_are_zoo_names():
    from caffe_attacks import zoo
    names = set(zoo.names())
    for t in TABLES:
        for row in E.load(t)["rows"]:
            if row.get("run", True):
                assert row["model"] in names, (t, row["model"])


@pytest.mark.parametrize("text,prefix,expected", [
    ("A5", "table", "table_A5"), ("table-A5", None, "table_A5"), ("tableA12", None, "table_A12"),
    ("figure-A4", None, "fig_A4"), ("a4", "fig", "fig_A4"), ("demo_table", None, "demo_table"),
])
def test_normalize_id(text, prefix, expected):
    assert E.normalize_id(text, prefix) == expected


def test_eps_shorthand_makes_a_clean_column_even_when_rows_name_attacks():
    d = E.load("demo_table")
    rows, cols, cells = E.table_cells(d)
    assert cols[0] == "0"
    first = [c for c in cells if c.col == 0]
    assert {c.query["attack"] for c in first} == {"clean"}
    assert all(c.query["eps"] == 0.0 and "options" not in c.query for c in first)
    assert {c.query["attack"] for c in cells if c.col == 3} == {"fgsm", "fgsm_ll", "ifgsm",
                                                               "ifgsm_ll"}


def test_plan_groups_a_table_into_one_job_per_model():
    jobs = E.plan(E.queries_of(E.load("table_A5")))
    assert len(jobs) == 10      # nine paper models and the synthetic stand-in
    j = next(j for j in jobs if j.model == "pspnet101_voc")
    assert j.attacks == ["fgsm"] and j.eps == [0.25, 0.5, 1, 2, 4, 8, 16, 32]
    clean_only = E.plan(E.queries_of(E.load("table_A2")))
    # the test-set row is not the runner's; the +CRF row is a zoo model of its own
    assert sorted(j.model for j in clean_only) == sorted(
        ["fcn8s_vgg_voc_authors", "fcn8s_resnet101_voc", "deeplabv2_vgg16_voc",
         "deeplabv2_resnet101_voc", "deeplabv2_resnet101_msc_voc",
         "deeplabv2_resnet101_msc_voc+crf", "pspnet101_voc"])
    assert all(j.attacks == [] for j in clean_only)


def test_missing_inputs_name_the_file_and_the_command(tmp_path):
    job = E.Job("dilated_context_voc", "voc", "val", ["fgsm"], [1.0])
    msgs = [m.message for m in E.check_job(job, {}, str(tmp_path))]
    assert any("dilation8_pascal_voc.caffemodel" in m and
               "make fetch-weights NAMES=dilated_context_voc" in m for m in msgs)
    assert any("VOC_DIR=" in m for m in msgs)
    private = E.Job("pspnet101_voc", "voc")
    msg = E.check_job(private, {"voc": str(tmp_path)}, str(tmp_path))[0].message
    assert "pspnet101_voc.caffemodel" in msg and "not public" in msg


def test_cli_without_data_renders_paper_only_and_exits_2(tmp_path, capsys):
    rc = experiments_main(["table", "A9", "--results", str(tmp_path), "--quiet", "--weights-dir",
                 str(tmp_path / "w")])
    out, err = capsys.readouterr()
    assert rc == 2
    assert "Traceback" not in err
    assert "CITYSCAPES_DIR=" in err and "make fetch-weights NAMES=enet_cityscapes" in err
    md = (tmp_path / "tables" / "table_A9.md").read_text()
    assert "| ENet | 53.4 / – / – | 39.6 / – / –" in md


def test_cli_rejects_unknown_ids_without_traceback(tmp_path, capsys):
    assert experiments_main(["table", "A99", "--results", str(tmp_path)]) == 2
    assert "no experiment definition" in capsys.readouterr().err


def test_validate_reports_misaligned_paper_rows(tmp_path):
    bad = {"id": "table_B1", "kind": "table", "dataset": "voc", "attack": "fgsm",
           "columns": {"eps": [0, 1]}, "rows": [{"label": "x", "model": "m", "paper": [1.0]}]}
    (tmp_path / "table_B1.json").write_text(json.dumps(bad))
    with pytest.raises(E.ExperimentError, match="1 paper values for 2 columns"):
        E.load("table_B1", tmp_path)


def test_config_matching_uses_the_runners_default_options():
    q = {"model": "m", "dataset": "voc", "split": "val", "attack": "ifgsm_ll", "eps": 4.0}
    cfg = {"model": "m", "dataset": "voc", "split": "val", "attack": "ifgsm_ll", "eps": 4,
           "engine": "caffe", "options": E.default_options("ifgsm_ll")}
    assert E.config_matches(cfg, q)
    assert not E.config_matches(dict(cfg, options=dict(cfg["options"], target="clean")), q)
    assert not E.config_matches(dict(cfg, engine="torch"), q)
    assert E.config_matches(dict(cfg, engine="torch"), dict(q, engine="torch"))
    assert not E.config_matches(dict(cfg, eps=4.5), q)
