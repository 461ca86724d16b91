"""Executors: worker processes and Ray actors give the single-process records, survive kills.

Every run here is on the embedded tiny_synthetic model and a small synthetic
set; the reference is the plain single-process run. Ray runs on a local
instance bound to 127.0.0.1 (never another address), token auth off so no
token file outside the test's temporary folders matters.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("caffe")

from caffe_attacks import run as run_cli  # noqa: E402
from caffe_attacks.datasets import synthetic  # noqa: E402
from caffe_attacks.experiments.executors import LocalExecutor  # noqa: E402
from caffe_attacks.runner import RunOptions  # noqa: E402
from caffe_attacks.runner.whitebox import run_white_box  # noqa: E402
from caffe_attacks.store import ResultsStore  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RECORD_FIELDS = ("cm_clean", "cm_adv", "conf_sum", "ent_sum", "npix", "max_delta")
SUMMARY_FIELDS = ("attack", "eps", "miou", "miou_clean", "iou_ratio", "confidence", "entropy",
                  "max_delta", "n_images")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A synthetic VOC-layout set of 48x32 images: 80 scenes, 20 of them validation."""
    d = tmp_path_factory.mktemp("executors") / "data"
    synthetic.main(["--format", "voc", "--out", str(d), "--n", "80", "--seed", "11",
                    "--width", "48", "--height", "32"])
    return d


def options(data, out, **extra):
    fields = dict(model="tiny_synthetic", dataset="synthetic", data_dir=str(data),
                  attacks=("fgsm", "ifgsm", "ifgsm_ll"), eps=(2.0, 8.0), out=str(out),
                  quiet=True, blas_threads=1)
    fields.update(extra)
    return RunOptions(**fields)


def stored(path):
    """{(config key, image id): (the record's numbers)} of a store, and the journal's line count."""
    out = {}
    with ResultsStore(str(path), readonly=True) as store:
        for key in store.configs():
            for row in store.records(key):
                assert (key, row["id"]) not in out, "record written twice"
                out[(key, row["id"])] = tuple(np.asarray(row[f]).tolist() for f in RECORD_FIELDS)
    return out


def journal_lines(path):
    journal = Path(str(path) + ".journal")
    return journal.read_text().count("\n") if journal.exists() else 0


@pytest.fixture
def writes(monkeypatch):
    """Every (config key, image id) handed to a store's add_image, as often as it was handed.

    The store itself drops a record it already holds; this counts what the
    driver tries to write, so a unit written twice shows here.
    """
    from collections import Counter
    seen = Counter()
    add_image = ResultsStore.add_image

    def counting(self, records):
        seen.update((r.key, r.image_id) for r in records)
        return add_image(self, records)

    monkeypatch.setattr(ResultsStore, "add_image", counting)
    return seen


def summary_numbers(rows):
    return [tuple(r[f] for f in SUMMARY_FIELDS) for r in rows]


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """The single-process run: its store path and summary rows."""
    out = tmp_path_factory.mktemp("reference") / "r.h5"
    result = run_white_box(options(data, out), str(out))
    assert len(result.ids) == 20
    return out, result.rows


# No token file (~/.ray/auth_token) matters; the node's address is the loopback
# one (Ray reads this when it is imported, so before the first import).
RAY_TEST_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    saved = {k: os.environ.get(k) for k in RAY_TEST_ENV}
    os.environ.update(RAY_TEST_ENV)
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1",
             _temp_dir=str(tmp_path_factory.mktemp("ray")))
    assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    yield ray
    ray.shutdown()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def ray_executor(workers):
    from caffe_attacks.experiments.ray_executor import RayExecutor
    return RayExecutor(workers)


@pytest.mark.parametrize("kind", ["local", "ray"])
def test_executors_give_the_single_process_records(kind, data, reference, tmp_path, writes,
                                                    request):
    # the Ray instance only for the Ray case (starting one costs seconds)
    executor = LocalExecutor(2) if kind == "local" else \
        (request.getfixturevalue("ray_local"), ray_executor(2))[1]
    out = tmp_path / ("%s.h5" % kind)
    result = run_white_box(options(data, out), str(out), executor=executor, unit_images=3)
    assert stored(out) == stored(reference[0])
    assert summary_numbers(result.rows) == summary_numbers(reference[1])
    assert set(writes) == set(stored(out)) and max(writes.values()) == 1


def worker_pids(marker):
    """Pids of processes whose command line contains ``marker`` (ours: children, actors)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if marker in cmdline:
                pids.append(int(entry.name))
    return pids


def run_and_kill_a_worker(run, out, marker, after_lines):
    """Run ``run()`` in a thread; once the store holds records, SIGKILL one worker mid-unit."""
    errors = []

    def target():
        try:
            run()
        except Exception as e:  # noqa: BLE001 -- handed to the test thread
            errors.append(e)

    thread = threading.Thread(target=target)
    thread.start()
    deadline = time.time() + 180
    killed = None
    while time.time() < deadline and thread.is_alive():
        pids = worker_pids(marker)
        if pids and journal_lines(out) >= after_lines:
            killed = pids[0]
            os.kill(killed, signal.SIGKILL)
            break
        time.sleep(0.02)
    thread.join(300)
    assert not errors, errors
    return killed


@pytest.mark.parametrize("kind, process_name", [("local", "spawn_main"),
                                                 ("ray", "ray::UnitWorker")])
def test_a_killed_worker_unit_is_sent_again(kind, process_name, data, reference, tmp_path,
                                            writes, request):
    # the Ray instance only for the Ray case (starting one costs seconds)
    executor = LocalExecutor(2) if kind == "local" else \
        (request.getfixturevalue("ray_local"), ray_executor(2))[1]
    out = tmp_path / ("kill_%s.h5" % kind)
    opts = options(data, out)
    rows = []
    killed = run_and_kill_a_worker(
        lambda: rows.extend(run_white_box(opts, str(out), executor=executor,
                                          unit_images=1).rows),
        out, process_name, after_lines=14)
    assert killed is not None, "no %s worker was running to kill" % kind
    assert stored(out) == stored(reference[0])
    assert max(writes.values()) == 1, "a record was written twice"
    assert summary_numbers(rows) == summary_numbers(reference[1])


def cli_args(data, out, *extra):
    return ["--model", "tiny_synthetic", "--dataset", "synthetic", "--data-dir", str(data),
            "--attack", "fgsm", "ifgsm", "ifgsm_ll", "--eps", "2", "8", "--blas-threads", "1",
            "--out", str(out), "--quiet", *extra]


def test_a_killed_driver_resumes_from_the_store(data, reference, tmp_path):
    out = tmp_path / "driver.h5"
    args = cli_args(data, out, "--workers", "2", "--unit-images", "1")
    proc = subprocess.Popen([sys.executable, "-m", "caffe_attacks.run", *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline and journal_lines(out) < 14 and proc.poll() is None:
        time.sleep(0.02)
    workers = children(proc.pid)
    assert len(workers) >= 2, "the driver should have its worker processes"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(Path("/proc/%d" % p).exists() for p in workers):
        time.sleep(0.1)
    assert not [p for p in workers if Path("/proc/%d" % p).exists()], \
        "workers outlived their killed driver"
    partial = journal_lines(out)
    assert 14 <= partial < 7 * 20, "the kill should land mid-run (%d records)" % partial
    assert run_cli.main(args) == 0
    assert stored(out) == stored(reference[0])     # (raises on a record stored twice)
    summary = json.load(open(str(out)[:-3] + ".json"))["rows"]
    assert summary_numbers(summary) == summary_numbers(reference[1])


def children(pid):
    """Pids of the processes whose parent is ``pid``."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("extra, message", [
    (["--workers", "0"], "--workers must be a positive integer"),
    (["--workers", "two"], "--workers must be a positive integer"),
    (["--unit-images", "-1"], "--unit-images must be a positive integer"),
    (["--ray-address", "127.0.0.1:6379"], "--ray-address needs --executor ray"),
    (["--executor", "ray", "--ray-address", "no-port"], "must be HOST:PORT"),
    (["--executor", "ray", "--ray-address", "127.0.0.1:%d" % closed_port()],
     "cannot reach the Ray cluster at 127.0.0.1:"),
], ids=["zero", "word", "unit", "address-without-ray", "bad-address", "unreachable"])
def test_bad_scale_options_are_one_line_and_exit_2(data, tmp_path, capsys, extra, message):
    assert run_cli.main(cli_args(data, tmp_path / "x.h5", *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "x.h5").exists()


def rendered_table(data, results, *extra):
    from caffe_attacks.experiments.__main__ import main as experiments_main
    status = experiments_main(["table", "demo_table", "--synthetic-dir", str(data), "--results",
                               str(results), "--limit", "6", "--quiet", "--unit-images", "2",
                               *extra])
    assert status == 0
    return (results / "tables" / "demo_table.md").read_text()


def test_a_table_is_the_same_with_workers_and_with_ray(data, tmp_path, ray_local):
    plain = rendered_table(data, tmp_path / "plain")
    assert "partial" in plain
    assert rendered_table(data, tmp_path / "workers", "--workers", "2") == plain
    assert rendered_table(data, tmp_path / "ray", "--executor", "ray", "--workers", "2") == plain


def test_a_transfer_gives_the_same_records_with_workers_and_ray(data, tmp_path, ray_local):
    from caffe_attacks import transfer as transfer_cli

    def run(out, *extra):
        assert transfer_cli.main(["--source", "tiny_synthetic", "--target", "tiny_synthetic",
                                  "--dataset", "synthetic", "--data-dir", str(data),
                                  "--attack", "fgsm", "ifgsm", "--eps", "2", "8", "--limit", "6",
                                  "--out", str(out), "--quiet", "--unit-images", "2",
                                  *extra]) == 0
        return stored(out)

    plain = run(tmp_path / "plain.h5")
    assert len(plain) == 6 * 5
    assert run(tmp_path / "workers.h5", "--workers", "2") == plain
    assert run(tmp_path / "ray.h5", "--executor", "ray", "--workers", "2") == plain


def test_bad_samples_skipped_by_workers_are_reported_like_one_process(data, tmp_path):
    import shutil
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    ids = (copy / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    (copy / "JPEGImages" / (ids[2] + ".jpg")).write_bytes(b"not a jpeg")

    def meta(name, *extra):
        out = tmp_path / name
        assert run_cli.main(cli_args(copy, out, "--skip-bad", "--limit", "6", *extra)) == 0
        return json.load(open(str(out)[:-3] + ".json"))["meta"]["skipped"], stored(out)

    plain = meta("plain.h5")
    assert [s[0] for s in plain[0]] == [ids[2]]
    assert meta("workers.h5", "--workers", "2", "--unit-images", "2") == plain


def paper_table(data, results, table, *extra):
    """Run a paper-grid table here (its synthetic stand-in row only) and return its Markdown."""
    from caffe_attacks.experiments.__main__ import main as experiments_main
    status = experiments_main(["table", table, "--synthetic-dir", str(data), "--results",
                               str(results), "--weights-dir", str(results / "no-weights"),
                               "--limit", "2", "--quiet", *extra])
    # the paper's nets and VOC are not here: listed as missing, the stand-in still runs
    assert status == 2
    return (results / "tables" / ("table_%s.md" % table)).read_text()


def test_table_A5_stand_in_is_the_same_with_workers_and_with_ray(data, tmp_path, ray_local,
                                                                 capsys):
    plain = paper_table(data, tmp_path / "plain", "A5")
    err = capsys.readouterr().err
    assert "VOC_DIR=" in err and "SYNTHETIC_DIR" not in err
    stand_in = next(line for line in plain.splitlines() if line.startswith("| stand-in"))
    cells = stand_in.strip("|").split("|")[1:]
    assert len(cells) == 9 and all(c.split(" / ")[1] != "–" for c in cells), stand_in
    assert paper_table(data, tmp_path / "workers", "A5", "--workers", "2") == plain
    assert paper_table(data, tmp_path / "ray", "A5", "--executor", "ray", "--workers", "2") \
        == plain


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_strong_attacks_and_sea_give_the_single_process_records(data, tmp_path, writes,
                                                                request, executor):
    strong = dict(attacks=("pgd", "sea"), eps=(2.0, 8.0), iterations=3, limit=6)
    plain_out, out = tmp_path / "plain.h5", tmp_path / "workers.h5"
    plain = run_white_box(options(data, plain_out, **strong), str(plain_out))
    writes.clear()
    if executor == "ray":
        request.getfixturevalue("ray_local")
        runner = ray_executor(2)
    else:
        runner = LocalExecutor(2)
    result = run_white_box(options(data, out, **strong), str(out), executor=runner,
                           unit_images=2)
    records = stored(out)
    assert records == stored(plain_out)
    # pgd, SEA's three members and SEA itself at two eps, plus clean, for every image
    with ResultsStore(str(out), readonly=True) as store:
        attacks = sorted(c["attack"] for c in store.configs().values())
    assert attacks == sorted(["clean"] + 2 * ["pgd", "apgd_mce", "apgd_mce_bal", "apgd_js",
                                              "sea"])
    assert len(records) == 6 * 11
    assert summary_numbers(result.rows) == summary_numbers(plain.rows)
    assert {r["attack"] for r in result.rows} >= {"pgd", "sea"}
    assert max(writes.values()) == 1, "a record was written twice"
