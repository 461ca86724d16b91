"""Weights: the manifest, checksums, verification and downloads.

``python -m caffe_attacks.weights verify|fetch`` is the CLI (``make
verify-weights`` / ``make fetch-weights``). For the runner:

>>> from caffe_attacks import weights
>>> result = weights.verify_file("dilated_context_voc", "weights/dilation8_pascal_voc.caffemodel")
>>> result.status, result.md5          # doctest: +SKIP

The pycaffe-free caffemodel reader and fork-tolerant loader live in
:mod:`caffe_attacks.caffemodel_reader`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional, Union

from caffe_attacks.weights.checksum import (Status, Verification, compare, file_problem,
                                            hash_file, matches_truncated, md5_file, verify_entry)
from caffe_attacks.weights.fetch import FetchError, FetchResult, fetch_entry
from caffe_attacks.weights.manifest import (ManifestError, input_protocol, load_manifest,
                                            model_entry, validate, weights_file)

__all__ = ["Status", "Verification", "FetchError", "FetchResult", "ManifestError",
           "load_manifest", "validate", "model_entry", "input_protocol",
           "weights_file", "md5_file", "hash_file", "matches_truncated", "compare",
           "file_problem", "models_with_md5",
           "verify_file", "verify_dir", "fetch", "fetchable_names"]


def verify_file(name: str, path: Union[str, Path], manifest: Optional[dict] = None,
                progress: bool = False) -> Verification:
    """Check a caffemodel file against the manifest entry of zoo model ``name``.

    Returns
    -------
    Verification
        ``.status`` (a :class:`Status`), ``.md5`` (None if missing),
        ``.verified`` (published checksum matched), ``.mismatch``.
    """
    return verify_entry(model_entry(name, manifest), path, progress=progress)


def verify_dir(weights_dir: Union[str, Path], names: Optional[Iterable[str]] = None,
               manifest: Optional[dict] = None, progress: bool = False) -> list:
    """Verify every (or the named) manifest model's file in ``weights_dir``.

    A file shared by several models (the Dilated frontend reuses the context
    caffemodel) is hashed once.
    """
    manifest = manifest or load_manifest()
    names = list(names) if names else list(manifest["models"])
    cache = {}
    results = []
    for name in names:
        entry = model_entry(name, manifest)
        path = weights_file(entry, weights_dir)
        key = (str(path), entry.get("md5"), entry.get("sha1"))
        if key in cache:
            shared = cache[key]
            result = Verification(**{**shared.__dict__, "name": name})
        else:
            result = verify_entry(entry, path, progress=progress)
            if result.md5 is not None:
                cache[key] = result
        results.append(result)
    return results


def models_with_md5(md5: str, manifest: Optional[dict] = None) -> list:
    """Manifest models whose published md5 (full or truncated) ``md5`` matches."""
    manifest = manifest or load_manifest()
    return [name for name, entry in manifest["models"].items() if entry.get("md5")
            and compare(md5, entry["md5"], bool(entry.get("md5_truncated")))
            in (Status.OK, Status.OK_TRUNCATED)]


def fetchable_names(manifest: Optional[dict] = None) -> list:
    """Models with a public download link (direct or manual), in manifest order."""
    manifest = manifest or load_manifest()
    return [name for name, entry in manifest["models"].items()
            if entry["public"] and not entry.get("weights_path")
            and (entry["urls"] or entry.get("manual_urls"))]


def fetch(name: str, weights_dir: Union[str, Path], manifest: Optional[dict] = None,
          **options) -> FetchResult:
    """Download and verify the caffemodel of ``name`` (see ``fetch_entry``)."""
    return fetch_entry(model_entry(name, manifest), weights_dir, **options)
