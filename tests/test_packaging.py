"""A normal install works: the wheel carries the project data, and the commands
that need no Caffe run from an installed copy, with and without pycaffe.

The wheel is built from a copy of the sources (so the checkout gets no build
files), installed into a fresh virtualenv without pip's network access, and the
virtualenv sees this interpreter's already installed dependencies through a
directory of links that leaves out the checkout's own (editable) caffe_attacks
and, for the "no Caffe" variant, pycaffe. Every command runs from a directory
outside the checkout with PYTHONPATH unset, so only the installed copy can answer.
"""
import json
import os
import re
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from caffe_attacks import environment, resources, zoo
from tests.conftest import HAVE_CAFFE, requires_caffe

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("caffe_attacks", "prototxt", "experiments", "weights_manifest.json", "setup.py",
           "pyproject.toml", "README.md", "MANIFEST.in")
CAFFE_MESSAGE_HINT = "make setup"


def _run(argv, cwd, check=True, pythonpath=None):
    """Run a command with PYTHONPATH unset (or set to ``pythonpath``)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OPENBLAS_NUM_THREADS"] = "1"
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    result = subprocess.run([str(a) for a in argv], cwd=str(cwd), env=env, text=True,
                            capture_output=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError("%s exited %d:\n%s\n%s" % (" ".join(map(str, argv)),
                                                         result.returncode, result.stdout,
                                                         result.stderr))
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """A wheel built (offline, no build isolation) from a copy of the sources."""
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copyfile(path, src / name)
    dist = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
          "--no-index", "-w", dist, src], cwd=src)
    wheels = list(dist.glob("caffe_attacks-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def _repo_data_files():
    """Repository-relative path -> package-relative path, for every bundled file."""
    # the package's own data files (the tiny model, class-weight tables) ...
    expected = {"caffe_attacks/data/%s" % f.name: "data/%s" % f.name
                for f in sorted((REPO / "caffe_attacks" / "data").iterdir()) if f.is_file()}
    # ... and the repository-root files the build copies in
    for source, destination in resources.BUNDLED.items():
        path = REPO / source
        if path.is_file():
            expected[source] = destination
            continue
        for f in sorted(path.glob(resources.BUNDLED_PATTERNS[source])):
            expected["%s/%s" % (source, f.name)] = "%s/%s" % (destination, f.name)
    return expected


def test_wheel_carries_the_repository_data_byte_for_byte(wheel):
    expected = _repo_data_files()
    assert len(expected) > 40      # manifest, 22 prototxt, 30+ definitions, the tiny model
    with zipfile.ZipFile(wheel) as zf:
        data = {n[len("caffe_attacks/"):]: n for n in zf.namelist()
                if n.startswith("caffe_attacks/data/")}
        assert set(data) == set(expected.values())
        for source, destination in expected.items():
            assert zf.read(data[destination]) == (REPO / source).read_bytes(), source


def test_wheel_carries_every_file_of_the_package(wheel):
    """Templates, the tiny model, every module: nothing under caffe_attacks/ is left out."""
    package = REPO / "caffe_attacks"
    expected = {"caffe_attacks/" + p.relative_to(package).as_posix()
                for p in package.rglob("*") if p.is_file()
                and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".nbi", ".nbc")}
    with zipfile.ZipFile(wheel) as zf:
        missing = expected - set(zf.namelist())
    assert not missing, sorted(missing)


def test_checkout_reads_the_repository_in_place():
    assert resources.layout() == "checkout"
    assert resources.manifest_path() == REPO / "weights_manifest.json"
    assert resources.prototxt_path("tiny_synthetic") == REPO / "prototxt" / "tiny_synthetic.prototxt"
    assert resources.experiments_dir() == REPO / "experiments"
    with pytest.raises(ValueError):
        resources.project_path("../outside")


# what pycaffe brings that the toolkit must not need: the package and protobuf
# (the `caffe` extra), whose import name is the google namespace
CAFFE_ENTRIES = ("caffe", "google")
CAFFE_DIST_INFOS = ("protobuf-",)


def _dependency_links(root, without_caffe):
    """A directory linking to this interpreter's installed packages, minus caffe_attacks."""
    root.mkdir()
    skipped = ("caffe_attacks", "__editable__")
    for site_dir in site.getsitepackages():
        for entry in Path(site_dir).iterdir():
            name = entry.name
            hidden = without_caffe and (name in CAFFE_ENTRIES or name.startswith(CAFFE_DIST_INFOS))
            if (name.startswith(skipped) or name.endswith(".pth") or hidden
                    or (root / name).exists()):
                continue
            (root / name).symlink_to(entry)
    return root


@pytest.fixture(scope="module", params=["with_caffe", "without_caffe"])
def installed(request, wheel, tmp_path_factory):
    """(python of a fresh virtualenv with the wheel installed, its site-packages)."""
    without_caffe = request.param == "without_caffe"
    if not without_caffe and not HAVE_CAFFE:
        pytest.skip("pycaffe not built (run `make setup`)")
    base = tmp_path_factory.mktemp("venv_" + request.param)
    venv = base / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=base)
    python = venv / "bin" / "python"
    purelib = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        cwd=base).stdout.strip())
    deps = _dependency_links(base / "deps", without_caffe)
    (purelib / "installed_dependencies.pth").write_text(str(deps) + "\n")
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
          wheel], cwd=base)
    probe = _run([python, "-c", "import importlib.util as u; "
                  "print(u.find_spec('caffe') is None, u.find_spec('google') is None)"],
                 cwd=base).stdout.split()
    assert probe == [str(without_caffe)] * 2
    return python, purelib, without_caffe


def test_installed_copy_reads_its_own_data(installed, tmp_path):
    python, purelib, _ = installed
    out = _run([python, "-c", "from caffe_attacks import resources as r; "
                "print(r.layout()); print(r.manifest_path()); print(r.experiments_dir())"],
               cwd=tmp_path).stdout.split()
    assert out == ["installed", str(purelib / "caffe_attacks" / "data" / "weights_manifest.json"),
                   str(purelib / "caffe_attacks" / "data" / "experiments")]


def test_zoo_list_names_every_model(installed, tmp_path):
    python, _, _ = installed
    lines = _run([python, "-m", "caffe_attacks.zoo", "list"], cwd=tmp_path).stdout.splitlines()
    listed = [line.split()[0] for line in lines[1:] if line.strip()]
    assert listed == zoo.names()


def test_weights_verify_finds_the_embedded_model(installed, tmp_path):
    python, purelib, _ = installed
    result = _run([python, "-m", "caffe_attacks.weights", "verify", "--dir", tmp_path / "none",
                   "--json", "tiny_synthetic"], cwd=tmp_path)
    [row] = json.loads(result.stdout)
    manifest = json.loads((REPO / "weights_manifest.json").read_text())
    assert row["status"] == "ok"
    assert row["md5"] == manifest["models"]["tiny_synthetic"]["md5"]
    assert Path(row["path"]) == purelib / "caffe_attacks" / "data" / "tiny_synthetic.caffemodel"


def test_experiments_list_names_every_definition(installed, tmp_path):
    python, _, _ = installed
    lines = _run([python, "-m", "caffe_attacks.experiments", "list"],
                 cwd=tmp_path).stdout.splitlines()
    listed = {line.split()[0] for line in lines if line.strip()}
    assert listed == {p.stem for p in (REPO / "experiments").glob("*.json")}


def test_a_table_renders_from_a_store_without_running(installed, tmp_path):
    python, _, _ = installed
    _run([python, "-m", "caffe_attacks.experiments", "table", "A4", "--no-run", "--results",
          tmp_path / "results"], cwd=tmp_path)
    text = (tmp_path / "results" / "tables" / "table_A4.md").read_text()
    assert text.startswith("### Table A4")
    # ours: the committed FCN8s (VGG) definition's 134.5 M parameters x 4 bytes = 513.0 MiB
    assert "513.0 / 513.0" in text


def test_commands_needing_caffe_say_so_in_one_line(installed, small_synthetic_voc, tmp_path):
    python, _, without_caffe = installed
    if not without_caffe:
        pytest.skip("pycaffe is importable here")
    for argv in (["zoo", "write", tmp_path / "p", "tiny_synthetic"],
                 ["zoo", "list", "--regenerate"],
                 ["run", "--model", "tiny_synthetic", "--engine", "caffe", "--dataset",
                  "synthetic", "--data-dir", small_synthetic_voc, "--limit", "1", "--eps", "4",
                  "--out", tmp_path / "caffe_run"]):
        result = _run([python, "-m", "caffe_attacks." + argv[0]] + argv[1:], cwd=tmp_path,
                      check=False)
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
        assert CAFFE_MESSAGE_HINT in result.stderr and "--engine torch" in result.stderr


@requires_caffe
def test_installed_generator_reproduces_the_committed_prototxt(installed, tmp_path):
    python, _, without_caffe = installed
    if without_caffe:
        pytest.skip("needs pycaffe")
    _run([python, "-m", "caffe_attacks.zoo", "write", tmp_path, "tiny_synthetic"], cwd=tmp_path)
    assert ((tmp_path / "tiny_synthetic.prototxt").read_bytes()
            == (REPO / "prototxt" / "tiny_synthetic.prototxt").read_bytes())


def _fgsm_run(python, data_dir, out, cwd, pythonpath=None, engine="torch"):
    """Summary of an FGSM run (eps 4, 2 images) of the embedded model."""
    _run([python, "-m", "caffe_attacks.run", "--model", "tiny_synthetic", "--engine", engine,
          "--dataset", "synthetic", "--data-dir", data_dir, "--limit", "2", "--attack", "fgsm",
          "--eps", "4", "--out", out, "--quiet"], cwd=cwd, pythonpath=pythonpath)
    return json.loads(Path(str(out) + ".json").read_text())


@pytest.fixture(scope="module")
def checkout_summary(small_synthetic_voc, tmp_path_factory):
    """The same run from the checkout, for comparison."""
    pytest.importorskip("torch")
    out = tmp_path_factory.mktemp("checkout_run")
    summary = _fgsm_run(sys.executable, small_synthetic_voc, out / "run", out, pythonpath=REPO)
    assert Path(summary["meta"]["weights"]).is_relative_to(REPO)
    return summary


def test_fgsm_run_from_the_install_matches_the_checkout(installed, small_synthetic_voc,
                                                         checkout_summary, tmp_path):
    python, purelib, without_caffe = installed
    summary = _fgsm_run(python, small_synthetic_voc, tmp_path / "installed", tmp_path)
    assert Path(summary["meta"]["weights"]).is_relative_to(purelib)
    # the records name the software: no git checkout here, and pycaffe only where it is
    [software] = {json.dumps(s["software"], sort_keys=True)
                  for row in summary["rows"] for s in row["software"]}
    software = json.loads(software)
    assert software["git_commit"] is None and software["numpy"] == np.__version__
    assert (software["caffe"] is None) == without_caffe
    measured = {(r["attack"], r["eps"]): (r["n_images"], r["miou"]) for r in summary["rows"]}
    assert measured == {(r["attack"], r["eps"]): (r["n_images"], r["miou"])
                        for r in checkout_summary["rows"]}
    assert measured[("fgsm", 4.0)][1] < measured[("clean", 0.0)][1]


# --- the pinned environment -------------------------------------------------
def _lock():
    """{canonical name: version} of requirements.lock."""
    from packaging.utils import canonicalize_name
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep and version and " " not in line, "not an exact pin: %r" % line
        pins[canonicalize_name(name)] = version
    return pins


def _requirements_txt():
    from packaging.requirements import Requirement
    lines = (REPO / "requirements.txt").read_text().splitlines()
    return [Requirement(line.split("#")[0].strip()) for line in lines
            if line.split("#")[0].strip()]


def _pyproject_requirements():
    """[project] dependencies and every extra except torch (a local wheel, not locked)."""
    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    texts = list(project["dependencies"])
    for extra, requirements in project["optional-dependencies"].items():
        if extra != "torch":
            texts += requirements
    return [Requirement(t) for t in texts]


def test_lock_pins_every_requirement_within_its_range():
    pytest.importorskip("packaging")
    from packaging.utils import canonicalize_name
    pins = _lock()
    for requirement in _requirements_txt() + _pyproject_requirements():
        name = canonicalize_name(requirement.name)
        assert name in pins, "%s is not in requirements.lock (run `make lock`)" % name
        assert requirement.specifier.contains(pins[name], prereleases=True), \
            "locked %s==%s is outside %s" % (name, pins[name], requirement.specifier)


def test_environment_has_the_locked_versions():
    """What the suite runs with is what the lock says (else re-lock or re-run make setup)."""
    pytest.importorskip("packaging")
    import importlib.metadata
    differ = {}
    for name, version in _lock().items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue   # e.g. torch's dependencies where no torch wheel was installed
        if installed != version:
            differ[name] = (version, installed)
    assert not differ, "locked vs installed: %s" % differ


def test_torch_extra_admits_the_makefiles_wheel():
    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement
    wheel_version = re.search(r"torch-([0-9][^-]*)-cp", (REPO / "Makefile").read_text()).group(1)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    [torch] = [Requirement(t) for t in project["optional-dependencies"]["torch"]]
    assert torch.specifier.contains(wheel_version), (wheel_version, torch.specifier)


def test_installed_layout_maps_repository_paths_into_the_package(tmp_path, monkeypatch):
    monkeypatch.setattr(resources, "checkout_root", lambda: None)
    monkeypatch.setattr(resources, "package_dir", lambda: tmp_path)
    assert resources.layout() == "installed"
    assert resources.manifest_path() == tmp_path / "data" / "weights_manifest.json"
    assert resources.prototxt_path("fcn8s_vgg_voc") == tmp_path / "data" / "prototxt" / "fcn8s_vgg_voc.prototxt"
    assert resources.experiments_dir() == tmp_path / "data" / "experiments"
    assert (resources.project_path("caffe_attacks/data/tiny_synthetic.caffemodel")
            == tmp_path / "data" / "tiny_synthetic.caffemodel")
    with pytest.raises(resources.ResourceError):
        resources.project_path("docs/DESIGN.md")


@requires_caffe
def test_caffe_run_from_the_install_matches_the_checkout(installed, small_synthetic_voc,
                                                         tmp_path):
    python, purelib, without_caffe = installed
    if without_caffe:
        pytest.skip("needs pycaffe")
    summary = _fgsm_run(python, small_synthetic_voc, tmp_path / "installed", tmp_path,
                         engine="caffe")
    reference = _fgsm_run(sys.executable, small_synthetic_voc, tmp_path / "checkout", tmp_path,
                           pythonpath=REPO, engine="caffe")
    assert Path(summary["meta"]["weights"]).is_relative_to(purelib)
    measured = {(r["attack"], r["eps"]): r["miou"] for r in summary["rows"]}
    assert measured == {(r["attack"], r["eps"]): r["miou"] for r in reference["rows"]}
    [software] = summary["rows"][0]["software"]
    assert software["software"]["caffe"] == environment.caffe_build_id()


def test_make_setup_installs_every_package_with_the_lock():
    """Each `pip install` of the venv target pins through requirements.lock, except the
    two that install no dependencies (cityscapesscripts, the project itself)."""
    text = (REPO / "Makefile").read_text()
    recipe = text.split("\nvenv:\n", 1)[1].split("\n\n", 1)[0]
    installs = [line for line in recipe.replace("\\\n", " ").splitlines()
                if "pip install" in line]
    assert len(installs) >= 4
    for line in installs:
        assert "-c requirements.lock" in line or "--no-deps" in line, line
    assert "-r requirements.txt -c requirements.lock" in recipe
    assert re.search(r"^\$\(VENV\)/\.setup-done: .*requirements\.lock", text, re.M)
