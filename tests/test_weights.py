"""Weights manifest schema, checksums, `verify` and `fetch` (against a local HTTP server)."""
import copy
import hashlib
import http.server
import io
import json
import random
import re
import shutil
import socket
import subprocess
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

from caffe_attacks import weights
from caffe_attacks.weights import Status
from caffe_attacks.weights.__main__ import main as cli
from caffe_attacks.weights.checksum import hash_file, matches_truncated
from caffe_attacks.preprocess import Protocol
from caffe_attacks.weights.manifest import (REPO_ROOT, ManifestError, validate,
                                            validate_input_block)

from tests.conftest import SUPPLEMENTARY as SEED  # noqa: E402
DESIGN = REPO_ROOT / "docs" / "DESIGN.md"


@pytest.fixture(scope="module")
def manifest():
    return weights.load_manifest()


# --- the committed manifest ---------------------------------------------------------

def design_zoo_names():
    text = DESIGN.read_text()
    block = text.split("Zoo names:", 1)[1].split("\n\n", 1)[0]
    return set(re.findall(r"[a-z][a-z0-9_]+", block.replace("and tiny_synthetic", ""))) \
        - {"the", "embedded", "default", "and"}


def test_manifest_names_are_the_design_zoo_names(manifest):
    # NAME+crf (zoo.deeplab_crf) are derived: a design net with the CRF appended
    derived = {n for n in manifest["models"] if n.endswith("+crf")}
    names = set(manifest["models"]) - {"tiny_synthetic"} - derived
    assert len(design_zoo_names()) == 17
    assert names == design_zoo_names()
    assert {n[:-len("+crf")] for n in derived} <= names | {"tiny_synthetic"}


def test_crf_models_share_their_base_file_md5_and_protocol(manifest):
    m = manifest["models"]
    derived = [n for n in m if n.endswith("+crf")]
    assert "deeplabv2_resnet101_msc_voc+crf" in derived
    for name in derived:
        base = m[name[:-len("+crf")]]
        for key in ("caffemodel", "md5", "md5_truncated", "sha1", "input", "dataset",
                    "num_classes", "public", "urls", "table_a4_mib", "table_a4_row"):
            assert m[name].get(key) == base.get(key), (name, key)


def test_manifest_agrees_with_the_zoo_registry(manifest):
    zoo = pytest.importorskip("caffe_attacks.zoo")
    checked = 0
    for name in zoo.names():
        if name not in manifest["models"]:
            continue
        spec, entry = zoo.get(name), manifest["models"][name]
        assert (entry["dataset"], entry["num_classes"]) == (spec.dataset, spec.num_classes), name
        if spec.table_a4_mib is not None:
            assert entry["table_a4_mib"] == spec.table_a4_mib, name
        checked += 1
    if not checked:
        pytest.skip("no zoo family registered yet")


@pytest.mark.skipif(not SEED.exists(), reason="supplementary text not available")
def test_every_paper_md5_is_transcribed(manifest):
    printed = re.findall(r"MD5 checksum[^:]*: ([0-9a-f]+)", SEED.read_text())
    assert len(printed) == 8
    by_paper = {e.get("paper_md5"): e for e in manifest["models"].values()}
    for digest in printed:
        assert digest in by_paper, digest
        entry = by_paper[digest]
        # Our md5 is the paper's, or (31 digits printed) the full value it truncates.
        if len(digest) == 31 and not entry["md5_truncated"]:
            assert matches_truncated(entry["md5"], digest)
        else:
            assert entry["md5"] == digest
            assert entry["md5_truncated"] == (len(digest) == 31)


def _seed_table(title, next_marker):
    text = SEED.read_text()
    block = text.split(title, 1)[1].split(next_marker, 1)[0]
    rows = {}
    for line in block.splitlines():
        cells = line.split("\t")
        if len(cells) >= 2:
            rows[cells[0].strip()] = [c.strip() for c in cells[1:]]
    return rows


def _num(cell):
    return None if cell in ("–", "-") else float(cell)


@pytest.mark.skipif(not SEED.exists(), reason="supplementary text not available")
def test_table_a4_sizes_transcribed(manifest):
    block = SEED.read_text().split("Table A4:", 1)[1].split("DilatedNet", 1)[0]
    cells = [line.split("\t") for line in block.splitlines()]
    table = {"%s, %s" % (c[0], c[1]): float(c[2]) for c in cells
             if len(c) == 3 and c[1] in ("Cityscapes", "Pascal")}
    assert len(table) == 15
    used = set()
    for entry in manifest["models"].values():
        if entry["dataset"] == "synthetic":
            continue
        assert entry["table_a4_mib"] == table[entry["table_a4_row"]], entry["name"]
        used.add(entry["table_a4_row"])
    assert used == set(table)                 # every Table A4 row has a model


@pytest.mark.skipif(not SEED.exists(), reason="supplementary text not available")
def test_clean_iou_transcribed(manifest):
    m = manifest["models"]
    a1 = _seed_table("Table A1:", "MS-COCO")
    a2 = _seed_table("Table A2:", "used by the original")
    a3 = _seed_table("Table A3:", "Table A4")
    cases = [  # (entry, key, table row, column)
        ("crfrnn_voc", "voc_val", a1["CRF-RNN [15]"], 0),
        ("dilated_frontend_voc", "voc_val", a1["Dilated Frontend [12]"], 0),
        ("dilated_context_voc", "voc_val", a1["Dilated Context [12]"], 0),
        ("segnet_vgg_voc", "voc_val", a1["SegNet [1]"], 0),
        ("fcn8s_vgg_voc_authors", "voc_val", a2["FCN8s (VGG) [8]"], 0),
        ("fcn8s_resnet101_voc", "voc_val", a2["FCN8s (ResNet) [8]"], 0),
        ("deeplabv2_vgg16_voc", "voc_val", a2["Deeplab v2 ASPP (VGG) [2]"], 0),
        ("deeplabv2_vgg16_voc", "authors_voc_val", a2["Deeplab v2 ASPP (VGG) [2]"], 1),
        ("deeplabv2_resnet101_voc", "voc_val", a2["Deeplab v2 ASPP (ResNet) [2]"], 0),
        ("deeplabv2_resnet101_msc_voc", "voc_val", a2["Deeplab v2 Multiscale ASPP (ResNet) [2]"], 0),
        ("deeplabv2_resnet101_msc_voc", "authors_voc_val",
         a2["Deeplab v2 Multiscale ASPP (ResNet) [2]"], 1),
        ("deeplabv2_resnet101_msc_voc", "voc_val_crf",
         a2["Deeplab v2 Multiscale ASPP (ResNet) + CRF post-processing [2]"], 0),
        ("deeplabv2_resnet101_msc_voc+crf", "voc_val",
         a2["Deeplab v2 Multiscale ASPP (ResNet) + CRF post-processing [2]"], 0),
        ("deeplabv2_resnet101_msc_voc+crf", "authors_voc_val",
         a2["Deeplab v2 Multiscale ASPP (ResNet) + CRF post-processing [2]"], 1),
        ("pspnet101_voc", "voc_val", a2["PSPNet [14]"], 0),
        ("pspnet101_voc", "voc_test", a2["PSPNet [14] (test set)"], 0),
        ("pspnet101_voc", "authors_voc_test", a2["PSPNet [14] (test set)"], 1),
    ]
    for model, column in (("enet_cityscapes", "E-Net [9]"), ("icnet_cityscapes", "ICNet [13]"),
                          ("fcn8s_vgg_cityscapes", "FCN8s (VGG) [11]"),
                          ("dilated_frontend_cityscapes", "Dilated Frontend [12]"),
                          ("dilated_context_cityscapes", "Dilated Context [12]"),
                          ("pspnet101_cityscapes", "PSPNet [14]")):
        cases += [(model, "cityscapes_1024x512", a3[column], 0),
                  (model, "cityscapes_2048x1024", a3[column], 1)]
    for model, key, row, col in cases:
        assert m[model]["clean_iou"][key] == _num(row[col]), (model, key)


def test_every_input_block_is_a_preprocess_protocol(manifest):
    """The other side of the schema: preprocess.Protocol.from_dict reads each block
    and writes the same block back."""
    preprocess = pytest.importorskip("caffe_attacks.preprocess")
    for name, entry in manifest["models"].items():
        protocol = preprocess.Protocol.from_dict(entry["input"])
        assert protocol.to_dict() == entry["input"], name


def test_known_checksum_facts(manifest):
    m = manifest["models"]
    # the full values published elsewhere (hszhao/ICNet's README, a third-party
    # README for CRF-RNN) explain the paper's 31 digits.
    for name in ("icnet_cityscapes", "crfrnn_voc"):
        assert len(m[name]["paper_md5"]) == 31 and len(m[name]["md5"]) == 32
        assert matches_truncated(m[name]["md5"], m[name]["paper_md5"])
    assert m["enet_cityscapes"]["md5_truncated"] and len(m["enet_cityscapes"]["md5"]) == 31
    assert m["crfrnn_voc"]["sha1"] == "bfda5c5149d566aa56695789fa9a08e7a7f3070a"
    for name in ("fcn8s_resnet101_voc", "deeplabv2_vgg16_voc", "deeplabv2_resnet101_voc",
                 "deeplabv2_resnet101_msc_voc", "pspnet101_voc"):
        assert m[name]["public"] is False and m[name]["closest_public"]["name"]
    # Frontend nets load the context caffemodel; the two DeepLab ResNets share weights.
    assert m["dilated_frontend_voc"]["caffemodel"] == m["dilated_context_voc"]["caffemodel"]
    assert m["deeplabv2_resnet101_voc"]["caffemodel"] == \
        m["deeplabv2_resnet101_msc_voc"]["caffemodel"]


# --- schema ---------------------------------------------------------------------------

def base_entry(name="m", **overrides):
    entry = {
        "name": name, "title": "test model", "dataset": "voc", "num_classes": 21,
        "prototxt": "prototxt/%s.prototxt" % name, "public": True,
        "caffemodel": "%s.caffemodel" % name, "urls": [], "md5": None, "md5_truncated": False,
        "table_a4_mib": 1.0, "clean_iou": None,
        "input": {"mean_bgr": [1.0, 2.0, 3.0], "resize": None,
                  "pad": {"mode": "constant", "canvas": [513, 513]}, "scores_to_labels": "crop"},
        "fork": "BVLC", "licence": "test",
    }
    entry.update(overrides)
    return entry


def manifest_of(*entries):
    manifest = {"schema_version": 1, "models": {e["name"]: e for e in entries}}
    validate(manifest)
    return manifest


TINY_SYNTHETIC = base_entry("tiny_synthetic", dataset="synthetic", num_classes=4,
                            table_a4_mib=None, weights_path="caffe_attacks/data/tiny.caffemodel",
                            input={"mean_bgr": None, "resize": None, "pad": None,
                                   "scores_to_labels": "crop"})
del TINY_SYNTHETIC["caffemodel"]

VALID = [
    ("plain", base_entry()),
    ("synthetic", TINY_SYNTHETIC),
    ("truncated", base_entry(md5="a" * 31, md5_truncated=True)),
    ("reflect", base_entry(input={"mean_bgr": None, "resize": {"long_side": 473},
                                  "pad": {"mode": "reflect101", "margin": 186,
                                          "canvas": [900, 900]},
                                  "scores_to_labels": "resize"})),
    ("extension keys", base_entry(input={"mean_bgr": None,
                                         "resize": {"long_side": 500, "shrink_only": True},
                                         "pad": None, "scores_to_labels": "resize",
                                         "score_align": "stride"})),
    ("archive", base_entry(urls=["http://x/y.zip"], download_name="y.zip",
                           archive={"format": "zip", "member": "a/m.caffemodel"})),
    ("private", base_entry(public=False, closest_public={"name": "other", "note": "why"})),
]

INVALID = [
    ("md5 31 not marked", base_entry(md5="a" * 31), "md5 must be 32"),
    ("md5 32 marked truncated", base_entry(md5="a" * 32, md5_truncated=True), "31 lowercase"),
    ("md5 not hex", base_entry(md5="g" * 32), "md5 must be 32"),
    ("md5 upper", base_entry(md5="A" * 32), "md5 must be 32"),
    ("sha1 short", base_entry(sha1="a" * 39), "sha1"),
    ("missing key", {k: v for k, v in base_entry().items() if k != "licence"}, "'licence'"),
    ("wrong type", base_entry(num_classes="21"), "num_classes"),
    ("bool as int", base_entry(num_classes=True), "num_classes"),
    ("unknown key", base_entry(colour="red"), "unknown keys"),
    ("name differs", dict(base_entry(), name="other"), "differs from its key"),
    ("dataset", base_entry(dataset="ade20k"), "dataset"),
    ("prototxt path", base_entry(prototxt="x.prototxt"), "prototxt must be"),
    ("caffemodel path", base_entry(caffemodel="dir/m.caffemodel"), "plain file name"),
    ("private with url", base_entry(public=False, urls=["http://x/m"],
                                    closest_public={"name": "o", "note": "n"}), "no URLs"),
    ("private, no closest", base_entry(public=False), "closest_public"),
    ("ftp url", base_entry(urls=["ftp://x/m"]), "http(s)"),
    ("archive fmt", base_entry(download_name="a.rar",
                               archive={"format": "rar", "member": "m"}), "archive must be"),
    ("pad mode", base_entry(input=dict(base_entry()["input"], pad={"mode": "edge",
                                                                   "canvas": [1, 1]})), "pad"),
    ("canvas", base_entry(input=dict(base_entry()["input"], pad={"mode": "constant",
                                                                 "canvas": [0, 5]})), "pad"),
    ("mean", base_entry(input=dict(base_entry()["input"], mean_bgr=[1, 2])), "mean_bgr"),
    ("resize", base_entry(input=dict(base_entry()["input"], resize={"size": [1]})), "resize"),
    ("s2l", base_entry(input=dict(base_entry()["input"], scores_to_labels="nearest")),
     "scores_to_labels"),
    ("input keys", base_entry(input={"mean_bgr": None}), "input keys"),
    ("score_align", base_entry(input=dict(base_entry()["input"], score_align="edges")),
     "score_align"),
    ("shrink_only type", base_entry(input=dict(base_entry()["input"], resize={
        "long_side": 5, "shrink_only": "yes"})), "resize"),
    ("shrink_only with size", base_entry(input=dict(base_entry()["input"], resize={
        "size": [5, 5], "shrink_only": True})), "resize"),
    ("iou range", base_entry(clean_iou={"table": "A1", "voc_val": 143.0}), "percentage"),
    ("iou table", base_entry(clean_iou={"table": "A9", "voc_val": 43.0}), "clean_iou.table"),
    ("a4 missing", base_entry(table_a4_mib=None), "table_a4_mib"),
    ("synthetic escape", dict(TINY_SYNTHETIC, weights_path="../outside.caffemodel"),
     "repo-relative"),
    ("weights_path on voc", base_entry(weights_path="x.caffemodel"), "only for synthetic"),
]


@pytest.mark.parametrize("entry", [e for _, e in VALID], ids=[i for i, _ in VALID])
def test_schema_accepts(entry):
    manifest_of(entry)


@pytest.mark.parametrize("entry, message", [(e, m) for _, e, m in INVALID],
                         ids=[i for i, _, _ in INVALID])
def test_schema_rejects(entry, message):
    with pytest.raises(ManifestError, match=re.escape(message)):
        validate({"schema_version": 1, "models": {"m": entry}})


BAD_INPUT = ("pad mode", "canvas", "mean", "resize", "s2l", "score_align", "shrink_only type",
             "shrink_only with size")


@pytest.mark.parametrize("entry", [e for i, e, _ in INVALID if i in BAD_INPUT], ids=BAD_INPUT)
def test_input_block_problems_are_the_protocols_own(entry):
    # one schema: the manifest reports what preprocess.Protocol.from_dict refuses
    with pytest.raises(ValueError) as refused:
        Protocol.from_dict(entry["input"])
    assert validate_input_block(entry["input"], "models.m") == ["models.m.input: %s"
                                                                % refused.value]


def test_committed_manifest_with_tiny_synthetic_added_still_validates(manifest):
    extended = copy.deepcopy(manifest)
    extended["models"]["tiny_synthetic"] = TINY_SYNTHETIC
    validate(extended)


# --- checksums ------------------------------------------------------------------------

def test_md5_file_streams_like_md5sum(tmp_path):
    data = random.Random(0).randbytes(2 * (1 << 20) + 12345)      # several chunks
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    expected = hashlib.md5(data).hexdigest()
    assert weights.md5_file(path) == expected
    assert hash_file(path, ("md5", "sha1"), chunk_bytes=4097) == {
        "md5": expected, "sha1": hashlib.sha1(data).hexdigest()}
    if shutil.which("md5sum"):
        out = subprocess.run(["md5sum", str(path)], capture_output=True, text=True, check=True)
        assert out.stdout.split()[0] == expected


def test_matches_truncated_against_brute_force():
    rng = random.Random(1)
    for _ in range(300):
        full = "".join(rng.choice("0123456789abcdef") for _ in range(32))
        # Low-entropy strings make runs of equal digits, the tricky case.
        if rng.random() < 0.5:
            full = "".join(rng.choice("a0") for _ in range(32))
        drop = rng.randrange(32)
        candidates = [full[:drop] + full[drop + 1:],
                      "".join(rng.choice("a0") for _ in range(31)), full[:31], full[1:],
                      full[:30], full]
        for published in candidates:
            brute = len(published) == 31 and any(
                full[:i] + full[i + 1:] == published for i in range(32))
            assert matches_truncated(full, published) is brute, (full, published)


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return hashlib.md5(data).hexdigest()


def test_verify_statuses(tmp_path):
    digest = write(tmp_path / "a.caffemodel", b"weights of a")
    sha1 = hashlib.sha1(b"weights of a").hexdigest()
    middle = digest[:10] + digest[11:]
    entries = [
        base_entry("ok", caffemodel="a.caffemodel", md5=digest),
        base_entry("trunc", caffemodel="a.caffemodel", md5=middle, md5_truncated=True),
        base_entry("bad", caffemodel="a.caffemodel", md5="0" * 32),
        base_entry("badtrunc", caffemodel="a.caffemodel", md5="0" * 31, md5_truncated=True),
        base_entry("none", caffemodel="a.caffemodel"),
        base_entry("sha1only", caffemodel="a.caffemodel", sha1=sha1),
        base_entry("sha1bad", caffemodel="a.caffemodel", md5=digest, sha1="1" * 40),
        base_entry("gone", caffemodel="gone.caffemodel", md5=digest),
        base_entry("private", caffemodel="p.caffemodel", public=False,
                   closest_public={"name": "elsewhere", "note": "n"}),
    ]
    manifest = manifest_of(*entries)
    results = {r.name: r for r in weights.verify_dir(tmp_path, manifest=manifest)}
    assert {n: r.status for n, r in results.items()} == {
        "ok": Status.OK, "trunc": Status.OK_TRUNCATED, "bad": Status.MISMATCH,
        "badtrunc": Status.MISMATCH, "none": Status.NO_CHECKSUM, "sha1only": Status.OK,
        "sha1bad": Status.MISMATCH, "gone": Status.MISSING, "private": Status.MISSING}
    assert results["ok"].md5 == digest and results["gone"].md5 is None
    assert "elsewhere" in results["private"].detail
    assert results["ok"].verified and results["trunc"].verified
    assert not results["none"].verified and results["bad"].mismatch
    one = weights.verify_file("trunc", tmp_path / "a.caffemodel", manifest)
    assert one.status is Status.OK_TRUNCATED and one.md5 == digest


def test_verify_embedded_weights_path_resolves_against_the_repo():
    data = (REPO_ROOT / "setup.py").read_bytes()
    entry = dict(TINY_SYNTHETIC, weights_path="setup.py", md5=hashlib.md5(data).hexdigest())
    result = weights.verify_file("tiny_synthetic", REPO_ROOT / "setup.py", manifest_of(entry))
    assert result.status is Status.OK
    [listed] = weights.verify_dir("/nonexistent", manifest=manifest_of(entry))
    assert listed.status is Status.OK and listed.path == str(REPO_ROOT / "setup.py")


def test_cli_verify_json_table_and_exit_code(tmp_path, capsys):
    digest = write(tmp_path / "w" / "a.caffemodel", b"aaa")
    good = manifest_of(base_entry("a", caffemodel="a.caffemodel", md5=digest),
                       base_entry("b", caffemodel="b.caffemodel"))
    path = tmp_path / "good.json"
    path.write_text(json.dumps(good))
    assert cli(["--manifest", str(path), "verify", "--dir", str(tmp_path / "w"), "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["a"]["status"] == "ok" and rows["a"]["md5"] == digest
    assert rows["b"]["status"] == "missing"

    bad = manifest_of(base_entry("a", caffemodel="a.caffemodel", md5="f" * 32))
    path.write_text(json.dumps(bad))
    assert cli(["--manifest", str(path), "verify", "--dir", str(tmp_path / "w")]) == 1
    captured = capsys.readouterr()
    assert re.search(r"^a\s+MISMATCH\s+%s" % digest, captured.out, re.M)
    assert "MISMATCH: a" in captured.err


def test_cli_verify_real_manifest_empty_dir(tmp_path, capsys):
    assert cli(["verify", "--dir", str(tmp_path), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) >= 17 and "MISMATCH" not in {r["status"] for r in rows}
    embedded = ("tiny_synthetic", "tiny_synthetic+crf")     # one committed file
    assert all(r["status"] == "missing" for r in rows if r["name"] not in embedded)


# --- fetch against a local server ----------------------------------------------------------

class Server:
    """127.0.0.1 HTTP server of in-memory files; can cut a transfer short,
    ignore Range, and logs every request's path and Range header."""

    def __init__(self):
        self.files, self.cut_after, self.ignore_range, self.log = {}, {}, set(), []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                outer.log.append((self.path, rng))
                data = outer.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if rng and self.path not in outer.ignore_range:
                    start = int(rng.split("=")[1].rstrip("-"))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", "bytes */%d" % len(data))
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", "bytes %d-%d/%d"
                                     % (start, len(data) - 1, len(data)))
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                cut = outer.cut_after.pop(self.path, None)   # first request only
                if cut is not None:
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,),
                                       daemon=True)
        self.thread.start()

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.httpd.server_address[1], path)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


PAYLOAD = random.Random(7).randbytes(300_000)
PAYLOAD_MD5 = hashlib.md5(PAYLOAD).hexdigest()


def served_entry(server, name="m", path="/m.caffemodel", data=PAYLOAD, **overrides):
    server.files[path] = data
    fields = dict(caffemodel="m.caffemodel", urls=[server.url(path)], md5=PAYLOAD_MD5)
    fields.update(overrides)
    return base_entry(name, **fields)


def files_in(directory):
    return sorted(p.name for p in Path(directory).iterdir()) if Path(directory).exists() else []


def test_fetch_downloads_verifies_and_skips_when_present(server, tmp_path):
    manifest = manifest_of(served_entry(server))
    result = weights.fetch("m", tmp_path, manifest)
    assert (result.action, result.status, result.md5) == ("downloaded", Status.OK, PAYLOAD_MD5)
    assert (tmp_path / "m.caffemodel").read_bytes() == PAYLOAD
    assert files_in(tmp_path) == ["m.caffemodel"]
    again = weights.fetch("m", tmp_path, manifest)
    assert again.action == "already present" and len(server.log) == 1


def test_fetch_resumes_an_interrupted_transfer_with_range(server, tmp_path):
    manifest = manifest_of(served_entry(server))
    server.cut_after["/m.caffemodel"] = 100_000
    result = weights.fetch("m", tmp_path, manifest, attempts=3)
    assert result.status is Status.OK
    assert server.log == [("/m.caffemodel", None), ("/m.caffemodel", "bytes=100000-")]
    assert (tmp_path / "m.caffemodel").read_bytes() == PAYLOAD


def test_fetch_resumes_across_calls(server, tmp_path):
    manifest = manifest_of(served_entry(server))
    server.cut_after["/m.caffemodel"] = 123_456
    with pytest.raises(weights.FetchError, match="run fetch again to resume"):
        weights.fetch("m", tmp_path, manifest, attempts=1)
    assert (tmp_path / "m.caffemodel.part").stat().st_size == 123_456
    assert not (tmp_path / "m.caffemodel").exists()
    weights.fetch("m", tmp_path, manifest, attempts=1)
    assert server.log[-1] == ("/m.caffemodel", "bytes=123456-")
    assert (tmp_path / "m.caffemodel").read_bytes() == PAYLOAD
    assert files_in(tmp_path) == ["m.caffemodel"]


def test_fetch_restarts_when_the_server_ignores_range(server, tmp_path):
    manifest = manifest_of(served_entry(server))
    server.cut_after["/m.caffemodel"] = 5_000
    server.ignore_range.add("/m.caffemodel")
    weights.fetch("m", tmp_path, manifest, attempts=2)
    assert (tmp_path / "m.caffemodel").read_bytes() == PAYLOAD


def test_fetch_completed_part_file_is_not_downloaded_again(server, tmp_path):
    manifest = manifest_of(served_entry(server))
    (tmp_path / "m.caffemodel.part").write_bytes(PAYLOAD)       # a finished earlier transfer
    weights.fetch("m", tmp_path, manifest)
    assert server.log == [("/m.caffemodel", "bytes=%d-" % len(PAYLOAD))]   # answered 416
    assert (tmp_path / "m.caffemodel").read_bytes() == PAYLOAD


def test_fetch_corrupted_file_leaves_nothing(server, tmp_path):
    corrupted = bytearray(PAYLOAD)
    corrupted[1000] ^= 0xFF
    manifest = manifest_of(served_entry(server, data=bytes(corrupted)))
    with pytest.raises(weights.FetchError, match="MISMATCH.*nothing was put in place"):
        weights.fetch("m", tmp_path, manifest)
    assert files_in(tmp_path) == []


def test_fetch_accepts_a_truncated_checksum(server, tmp_path):
    manifest = manifest_of(served_entry(server, md5=PAYLOAD_MD5[:5] + PAYLOAD_MD5[6:],
                                        md5_truncated=True))
    assert weights.fetch("m", tmp_path, manifest).status is Status.OK_TRUNCATED


def test_fetch_without_checksum_keeps_the_file(server, tmp_path):
    manifest = manifest_of(served_entry(server, md5=None))
    result = weights.fetch("m", tmp_path, manifest)
    assert result.status is Status.NO_CHECKSUM and result.md5 == PAYLOAD_MD5


def zip_bytes(members):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def tar_gz_bytes(members):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize("fmt, build, member, stored_as", [
    ("zip", zip_bytes, "cityscapes_weights.caffemodel", "cityscapes_weights.caffemodel"),
    ("zip", zip_bytes, "cityscapes_weights.caffemodel", "folder/cityscapes_weights.caffemodel"),
    ("tar", tar_gz_bytes, "nets/cityscapes-fcn8s-heavy.caffemodel",
     "nets/cityscapes-fcn8s-heavy.caffemodel"),
])
def test_fetch_unpacks_the_model_from_an_archive(server, tmp_path, fmt, build, member, stored_as):
    archive = build({stored_as: PAYLOAD, "README.txt": b"other file",
                     "nets/other.caffemodel": b"x" * 10})
    manifest = manifest_of(served_entry(server, path="/a.bin?dl=1", data=archive,
                                        download_name="download.%s" % fmt,
                                        archive={"format": fmt, "member": member}))
    server.files["/a.bin"] = archive        # the query string is not part of the file path
    manifest["models"]["m"]["urls"] = [server.url("/a.bin")]
    server.cut_after["/a.bin"] = len(archive) // 2
    result = weights.fetch("m", tmp_path, manifest)
    assert result.status is Status.OK
    assert (tmp_path / "m.caffemodel").read_bytes() == PAYLOAD
    assert files_in(tmp_path) == ["m.caffemodel"]      # archive and partials cleaned up


def test_fetch_archive_with_wrong_member_content_leaves_nothing(server, tmp_path):
    archive = zip_bytes({"m.caffemodel": b"not the weights"})
    manifest = manifest_of(served_entry(server, path="/a.zip", data=archive, download_name="a.zip",
                                        archive={"format": "zip", "member": "m.caffemodel"}))
    with pytest.raises(weights.FetchError, match="MISMATCH"):
        weights.fetch("m", tmp_path, manifest)
    assert files_in(tmp_path) == []


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fetch_unreachable_host_says_so(tmp_path):
    port = closed_port()
    manifest = manifest_of(base_entry("m", urls=["http://127.0.0.1:%d/m.caffemodel" % port]))
    with pytest.raises(weights.FetchError, match=r"cannot reach 127\.0\.0\.1:%d" % port):
        weights.fetch("m", tmp_path, manifest, timeout=5)
    assert files_in(tmp_path) == []


def test_fetch_falls_back_to_the_next_url(server, tmp_path):
    entry = served_entry(server)
    entry["urls"].insert(0, "http://127.0.0.1:%d/m.caffemodel" % closed_port())
    assert weights.fetch("m", tmp_path, manifest_of(entry)).status is Status.OK


def test_fetch_http_error(server, tmp_path):
    entry = served_entry(server)
    entry["urls"] = [server.url("/nope")]
    with pytest.raises(weights.FetchError, match="HTTP 404"):
        weights.fetch("m", tmp_path, manifest_of(entry))


def test_fetch_refuses_private_and_manual_models(tmp_path):
    manifest = manifest_of(
        base_entry("private", public=False, closest_public={"name": "the public one",
                                                            "note": "why"}),
        base_entry("drive", manual_urls=["https://drive.google.com/file/d/X/view"]))
    with pytest.raises(weights.FetchError, match="never published.*the public one"):
        weights.fetch("private", tmp_path, manifest)
    with pytest.raises(weights.FetchError, match="by hand.*drive.google.com/file/d/X/view"):
        weights.fetch("drive", tmp_path, manifest)
    assert weights.fetchable_names(manifest) == ["drive"]


def test_fetch_does_not_replace_a_mismatching_file(server, tmp_path):
    manifest = manifest_of(served_entry(server))
    (tmp_path / "m.caffemodel").write_bytes(b"someone else's file")
    with pytest.raises(weights.FetchError, match="does not match"):
        weights.fetch("m", tmp_path, manifest)
    assert (tmp_path / "m.caffemodel").read_bytes() == b"someone else's file"
    assert server.log == []


def test_cli_fetch_default_names_and_shared_files(server, tmp_path, capsys):
    manifest = manifest_of(served_entry(server, "front"), served_entry(server, "context"),
                           base_entry("private", public=False,
                                      closest_public={"name": "o", "note": "n"}))
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest))
    assert cli(["--manifest", str(path), "fetch", "--dir", str(tmp_path / "w")]) == 0
    out = capsys.readouterr().out
    assert "front: downloaded, ok" in out and "context: same file as front" in out
    assert len(server.log) == 1
    assert cli(["--manifest", str(path), "fetch", "--dir", str(tmp_path / "w"), "private"]) == 1
    assert "never published" in capsys.readouterr().err
