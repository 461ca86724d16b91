"""Versions for the records, and the one-line error when pycaffe is missing."""
import importlib
import sys

import numpy as np
import pytest

from caffe_attacks import __version__, environment
from tests.conftest import requires_caffe


def test_versions_agree_with_the_imported_modules():
    versions = environment.software_versions()
    assert versions["caffe_attacks"] == __version__
    assert versions["numpy"] == np.__version__
    import h5py
    import scipy
    assert versions["h5py"] == h5py.__version__ and versions["scipy"] == scipy.__version__
    cv2 = pytest.importorskip("cv2")
    # the wheel's version has a 4th (build) number that cv2.__version__ leaves out
    assert versions["opencv"].startswith(cv2.__version__ + ".") or versions["opencv"] == cv2.__version__


def test_torch_version_or_none():
    versions = environment.software_versions()
    try:
        import torch
    except ImportError:
        assert versions["torch"] is None
    else:
        assert versions["torch"] == torch.__version__


def _fake_caffe(root, marker=None):
    package = root / "caffe"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    if marker is not None:
        (package / environment.CAFFE_BUILD_MARKER).write_text(marker + "\n")
    return root


def test_caffe_build_id_reads_the_build_marker(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(_fake_caffe(tmp_path / "a", "brocolli-caffe==9.0.2 gpu=0")))
    monkeypatch.delitem(sys.modules, "caffe", raising=False)
    importlib.invalidate_caches()
    assert environment.caffe_build_id() == "brocolli-caffe==9.0.2 gpu=0"


def test_caffe_without_marker_is_unknown(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(_fake_caffe(tmp_path / "b")))
    monkeypatch.delitem(sys.modules, "caffe", raising=False)
    importlib.invalidate_caches()
    assert environment.caffe_build_id().startswith("unknown")


@requires_caffe
def test_installed_caffe_build_id_is_its_marker():
    caffe = environment.import_caffe()
    from pathlib import Path
    marker = Path(caffe.__file__).parent / environment.CAFFE_BUILD_MARKER
    if not marker.is_file():
        pytest.skip("pycaffe here was not built by scripts/build_caffe.sh")
    assert environment.caffe_build_id() == marker.read_text().strip()


def test_missing_caffe_is_one_line_naming_the_remedies(monkeypatch):
    monkeypatch.setitem(sys.modules, "caffe", None)   # import caffe -> ImportError
    with pytest.raises(environment.CaffeUnavailable) as err:
        environment.import_caffe()
    message = str(err.value)
    assert "\n" not in message
    assert "make setup" in message and "--engine torch" in message
    assert isinstance(err.value, ImportError)
    with pytest.raises(environment.CaffeUnavailable):
        environment.import_caffe_pb2()


def test_source_revision_is_the_checkouts_head():
    import subprocess
    from caffe_attacks import resources
    root = resources.checkout_root()
    if root is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    # both are looked up once per process; the suite may outlive a commit
    environment.refresh()
    revision = environment.source_revision()
    assert revision in (head, head + "+dirty")
    assert environment.software_versions()["git_commit"] == revision
