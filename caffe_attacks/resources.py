"""Where the project's data files are: one answer for a checkout and an install.

The weights manifest, the generated prototxt, the experiment definitions and
the embedded tiny model are kept once, in the repository's own layout::

    weights_manifest.json
    prototxt/<model>.prototxt
    experiments/<id>.json
    caffe_attacks/data/tiny_synthetic.caffemodel

A wheel (or ``pip install .``) cannot carry files outside the package, so the
build copies the first three into the package as listed in :data:`BUNDLED`
(``setup.py`` reads that table from this file); the tiny model already lies
inside it. At run time a checkout is recognised by the repository files beside
the package and read in place, so an edited manifest or a regenerated
prototxt takes effect without reinstalling; otherwise the package's copies are
read through :mod:`importlib.resources`.

Callers get real filesystem paths (pycaffe, the stores and the records need
file names), so an install must be an unpacked directory, which is what pip
makes; a zipped package is refused with a clear message.

Examples
--------
>>> from caffe_attacks import resources
>>> resources.manifest_path().name
'weights_manifest.json'
>>> resources.prototxt_path("tiny_synthetic").name
'tiny_synthetic.prototxt'
"""
from __future__ import annotations

import importlib.resources
from pathlib import Path, PurePosixPath

PACKAGE = "caffe_attacks"

# repository-relative source -> where a built package carries it (package-relative)
BUNDLED = {
    "weights_manifest.json": "data/weights_manifest.json",
    "prototxt": "data/prototxt",
    "experiments": "data/experiments",
}
# which files of a bundled directory the build copies
BUNDLED_PATTERNS = {
    "prototxt": "*.prototxt",
    "experiments": "*.json",
}
# files that only a checkout has beside the package: its presence means "read in place"
CHECKOUT_MARKERS = ("setup.py", "weights_manifest.json")


class ResourceError(FileNotFoundError):
    """A project data file is not where this installation should have it."""


def package_dir() -> Path:
    """The installed (or checked-out) ``caffe_attacks`` package directory."""
    root = importlib.resources.files(PACKAGE)
    if not isinstance(root, Path):
        raise ResourceError("caffe_attacks is installed as %r, not as a directory; "
                            "install it unpacked (pip install .)" % (root,))
    return root


def checkout_root():
    """The repository root when running from a checkout, else None."""
    parent = package_dir().parent
    if all((parent / marker).is_file() for marker in CHECKOUT_MARKERS):
        return parent
    return None


def layout() -> str:
    """``"checkout"`` (files read in place) or ``"installed"`` (the package's copies)."""
    return "checkout" if checkout_root() is not None else "installed"


def project_path(relative) -> Path:
    """The file or directory a repository-relative path names, in this layout.

    Parameters
    ----------
    relative : str
        A POSIX path as the manifest writes them, e.g.
        ``"prototxt/fcn8s_vgg_voc.prototxt"`` or
        ``"caffe_attacks/data/tiny_synthetic.caffemodel"``.

    Returns
    -------
    Path
        In a checkout the path under the repository root; in an install the
        package's copy. The path may not exist (the caller reports it).
    """
    parts = PurePosixPath(relative).parts
    if not parts or PurePosixPath(relative).is_absolute() or ".." in parts:
        raise ValueError("%r is not a repository-relative path" % (relative,))
    root = checkout_root()
    if root is not None:
        return root.joinpath(*parts)
    if parts[0] == PACKAGE:
        return package_dir().joinpath(*parts[1:])
    if parts[0] in BUNDLED:
        return package_dir().joinpath(*PurePosixPath(BUNDLED[parts[0]]).parts, *parts[1:])
    raise ResourceError("%s is not part of an installed caffe_attacks (only %s and the "
                        "package's own files are); use a checkout"
                        % (relative, ", ".join(sorted(BUNDLED))))


def manifest_path() -> Path:
    """``weights_manifest.json``."""
    return project_path("weights_manifest.json")


def prototxt_dir() -> Path:
    """The directory of the committed zoo definitions (``prototxt/``)."""
    return project_path("prototxt")


def prototxt_path(name: str) -> Path:
    """``prototxt/<name>.prototxt`` of zoo model ``name`` (not checked against the zoo)."""
    return prototxt_dir() / ("%s.prototxt" % name)


def experiments_dir() -> Path:
    """The directory of the experiment definitions (``experiments/``)."""
    return project_path("experiments")
