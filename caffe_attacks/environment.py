"""The software a result was produced with, and pycaffe when a command needs it.

pycaffe is optional: it is built from source by ``make setup``
(scripts/build_caffe.sh), never installed by pip, and everything except the
caffe engine (and regenerating prototxt) runs without it. :func:`import_caffe`
is the one place that imports it on behalf of the toolkit, so that a missing
build is reported the same way everywhere: :class:`CaffeUnavailable`, whose
message is the single line a CLI prints before exiting with status 2.

:func:`software_versions` is what every results record and summary carries,
so a table can say which numpy, Caffe build, torch, OpenCV and h5py produced it,
and, run from a git checkout, which commit (``+dirty`` when tracked files were
modified). It imports nothing heavy: versions come from the installed
distributions' metadata, and the Caffe build id from the marker file that
scripts/build_caffe.sh writes into the package it installs.
"""
from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
import logging
import os
import subprocess
from pathlib import Path

from caffe_attacks import __version__, resources

log = logging.getLogger(__name__)

# the key records use -> the distributions that provide it, first installed wins
DISTRIBUTIONS = {
    "numpy": ("numpy",),
    "scipy": ("scipy",),
    "torch": ("torch",),
    "opencv": ("opencv-python-headless", "opencv-python", "opencv-contrib-python-headless",
               "opencv-contrib-python"),
    "h5py": ("h5py",),
    "protobuf": ("protobuf",),
}
CAFFE_BUILD_MARKER = ".built-by-caffe_attacks"   # written by scripts/build_caffe.sh
NOT_INSTALLED = None

HOW_TO_GET_CAFFE = ("build it with `make setup` in a checkout of caffe_attacks "
                    "(scripts/build_caffe.sh); without it, --engine torch runs the zoo's "
                    "committed definitions")


class CaffeUnavailable(ImportError):
    """pycaffe cannot be imported; ``str(err)`` is one line saying what to do."""


def import_caffe():
    """Import and return the ``caffe`` module, quiet unless the user set GLOG_minloglevel.

    Raises
    ------
    CaffeUnavailable
        When pycaffe is not installed or its compiled library does not load.
    """
    # Caffe logs every layer at INFO through glog; keep the terminal quiet.
    os.environ.setdefault("GLOG_minloglevel", "2")
    try:
        return importlib.import_module("caffe")
    except ImportError as err:
        raise CaffeUnavailable("this command needs pycaffe, which cannot be imported (%s); %s"
                               % (err, HOW_TO_GET_CAFFE)) from err


def import_caffe_pb2():
    """``caffe.proto.caffe_pb2`` (the NetParameter messages), via :func:`import_caffe`."""
    import_caffe()
    return importlib.import_module("caffe.proto.caffe_pb2")


def caffe_available() -> bool:
    """Whether a ``caffe`` package is installed (without importing it)."""
    return importlib.util.find_spec("caffe") is not None


def caffe_build_id():
    """What pycaffe is: the build marker's line, e.g. ``"brocolli-caffe==9.0.2 gpu=0 ..."``.

    Returns None when no caffe package is installed, and ``"unknown (not built
    by scripts/build_caffe.sh)"`` for a caffe without the marker.
    """
    spec = importlib.util.find_spec("caffe")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        marker = Path(location) / CAFFE_BUILD_MARKER
        if marker.is_file():
            return marker.read_text(encoding="utf-8").strip()
    return "unknown (not built by scripts/build_caffe.sh)"


def distribution_version(name: str):
    """Installed version of distribution ``name``, None when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return NOT_INSTALLED


@functools.lru_cache(maxsize=None)
def source_revision():
    """``git`` commit of the checkout the package runs from (``"<sha>+dirty"`` when
    tracked files differ from it); None for an installed package or without git."""
    root = resources.checkout_root()
    if root is None or not (root / ".git").exists():
        return None
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=30, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                 "--untracked-files=no"], capture_output=True, text=True,
                                timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError) as err:
        log.debug("no git revision for %s: %s", root, err)
        return None
    return sha + ("+dirty" if status.strip() else "")


def software_versions() -> dict:
    """What a record carries: ``{"caffe_attacks", "git_commit", "numpy", ..., "caffe"}``.

    Values are version strings, or None for what is not installed
    (``git_commit``: see :func:`source_revision`). Looked up at the first call
    of a process (every record asks; the code a process runs is the code it
    loaded); a fresh dict each call.
    """
    return dict(_software_versions())


def refresh():
    """Forget the looked-up versions (after installing something into this process's env)."""
    source_revision.cache_clear()
    _software_versions.cache_clear()


@functools.lru_cache(maxsize=None)
def _software_versions():
    versions = {"caffe_attacks": __version__, "git_commit": source_revision()}
    for key, dists in DISTRIBUTIONS.items():
        found = (distribution_version(dist) for dist in dists)
        versions[key] = next((v for v in found if v is not None), NOT_INSTALLED)
    versions["caffe"] = caffe_build_id()
    return tuple(versions.items())
