"""The weights manifest (``weights_manifest.json`` at the repository root).

One entry per zoo model, keyed by its zoo name: where the caffemodel comes
from, its checksums, the paper's numbers for it, and its input protocol (the
``"input"`` block read by ``preprocess.Protocol.from_dict``). ``validate``
is the schema; ``load_manifest`` always runs it, so a malformed manifest
fails loudly before any file is hashed or downloaded.
"""
from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath
from typing import Optional, Union

from caffe_attacks.datasets import DATASET_KINDS
from caffe_attacks.preprocess import INPUT_KEYS, REQUIRED_INPUT_KEYS, Protocol

MANIFEST_PATH = Path(__file__).resolve().parents[2] / "weights_manifest.json"
REPO_ROOT = MANIFEST_PATH.parent

ARCHIVE_FORMATS = ("zip", "tar")
CLEAN_IOU_TABLES = ("A1", "A2", "A3", None)

# key -> (accepted types, required). Types are checked with isinstance, and
# bool is excluded where a number is meant.
ENTRY_KEYS = {
    "name": (str, True),
    "title": (str, True),
    "dataset": (str, True),
    "num_classes": (int, True),
    "prototxt": (str, True),
    "public": (bool, True),
    "caffemodel": (str, False),        # file name inside the weights dir
    "weights_path": (str, False),      # repo-relative path (embedded models)
    "urls": (list, True),              # direct downloads, tried in order
    "manual_urls": (list, False),      # pages needing a browser (Google Drive)
    "download_name": (str, False),     # local name of what a URL returns
    "archive": ((dict, type(None)), False),
    "md5": ((str, type(None)), True),
    "md5_truncated": (bool, True),
    "md5_source": (str, False),
    "paper_md5": ((str, type(None)), False),
    "sha1": ((str, type(None)), False),
    "table_a4_row": ((str, type(None)), False),
    "table_a4_mib": ((float, int, type(None)), True),
    "clean_iou": ((dict, type(None)), True),
    "input": (dict, True),
    "fork": (str, True),
    "licence": (str, True),
    "closest_public": ((dict, type(None)), False),
    "notes": (str, False),
}

_HEX = re.compile(r"^[0-9a-f]+$")


class ManifestError(ValueError):
    """The manifest does not follow the schema; the message lists every problem."""


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def validate_input_block(block, where: str) -> list:
    """Problems with one ``"input"`` block: ``preprocess.Protocol.from_dict``
    is its schema; the manifest also writes every required key, so a block
    reads the same to a person as to the code."""
    if not isinstance(block, dict):
        return ["%s: input must be an object" % where]
    if not set(REQUIRED_INPUT_KEYS) <= set(block):
        return ["%s: input keys %s, expected %s and optionally %s"
                % (where, sorted(block), list(REQUIRED_INPUT_KEYS),
                   [k for k in INPUT_KEYS if k not in REQUIRED_INPUT_KEYS])]
    try:
        Protocol.from_dict(block)
    except ValueError as err:
        return ["%s.input: %s" % (where, err)]
    return []


def _is_plain_file_name(value) -> bool:
    return isinstance(value, str) and value and "/" not in value and "\\" not in value \
        and value not in (".", "..")


def _is_repo_relative(value) -> bool:
    if not isinstance(value, str) or not value or "\\" in value:
        return False
    path = PurePosixPath(value)
    return not path.is_absolute() and ".." not in path.parts


def validate_entry(key: str, entry) -> list:
    """Problems with one model entry (empty list when it is valid)."""
    where = "models.%s" % key
    if not isinstance(entry, dict):
        return ["%s: must be an object" % where]
    problems = []
    for name, (types, required) in ENTRY_KEYS.items():
        if name not in entry:
            if required:
                problems.append("%s: missing key %r" % (where, name))
            continue
        value = entry[name]
        accepted = types if isinstance(types, tuple) else (types,)
        if isinstance(value, bool) and bool not in accepted or not isinstance(value, accepted):
            problems.append("%s.%s: %r is not of type %s"
                            % (where, name, value, "/".join(t.__name__ for t in accepted)))
    unknown = set(entry) - set(ENTRY_KEYS)
    if unknown:
        problems.append("%s: unknown keys %s" % (where, sorted(unknown)))
    if problems:
        return problems

    if entry["name"] != key:
        problems.append("%s: name %r differs from its key" % (where, entry["name"]))
    if entry["dataset"] not in DATASET_KINDS:
        problems.append("%s: dataset must be one of %s" % (where, DATASET_KINDS))
    if entry["num_classes"] <= 0:
        problems.append("%s: num_classes must be positive" % where)
    if entry["prototxt"] != "prototxt/%s.prototxt" % key:
        problems.append("%s: prototxt must be prototxt/%s.prototxt" % (where, key))

    synthetic = entry["dataset"] == "synthetic"
    if synthetic:
        # The embedded model lives in the repository, not in a weights dir.
        if not (_is_repo_relative(entry.get("weights_path"))
                or _is_plain_file_name(entry.get("caffemodel"))):
            problems.append("%s: a synthetic entry needs a repo-relative weights_path "
                            "(or a caffemodel file name)" % where)
    else:
        if not _is_plain_file_name(entry.get("caffemodel")):
            problems.append("%s: caffemodel must be a plain file name" % where)
        if "weights_path" in entry:
            problems.append("%s: weights_path is only for synthetic (embedded) models" % where)
        if not _is_number(entry["table_a4_mib"]):
            problems.append("%s: table_a4_mib must be a number (Table A4)" % where)

    md5 = entry["md5"]
    if md5 is not None:
        length = 31 if entry["md5_truncated"] else 32
        if not (_HEX.match(md5) and len(md5) == length):
            problems.append("%s: md5 must be %d lowercase hex digits%s"
                            % (where, length, " (md5_truncated)" if length == 31 else ""))
    elif entry["md5_truncated"]:
        problems.append("%s: md5_truncated without an md5" % where)
    paper_md5 = entry.get("paper_md5")
    if paper_md5 is not None and not (_HEX.match(paper_md5) and len(paper_md5) in (31, 32)):
        problems.append("%s: paper_md5 must be 31 or 32 lowercase hex digits" % where)
    sha1 = entry.get("sha1")
    if sha1 is not None and not (_HEX.match(sha1) and len(sha1) == 40):
        problems.append("%s: sha1 must be 40 lowercase hex digits" % where)

    for list_key in ("urls", "manual_urls"):
        urls = entry.get(list_key, [])
        if not all(isinstance(u, str) and re.match(r"^https?://", u) for u in urls):
            problems.append("%s.%s: every URL must be an http(s) string" % (where, list_key))
    if not entry["public"]:
        if entry["urls"] or entry.get("manual_urls"):
            problems.append("%s: a non-public model has no URLs (name closest_public)" % where)
        closest = entry.get("closest_public")
        if not (isinstance(closest, dict) and isinstance(closest.get("name"), str)
                and isinstance(closest.get("note"), str)):
            problems.append("%s: a non-public model must name closest_public "
                            "{name, note, ...}" % where)
    if "download_name" in entry and not _is_plain_file_name(entry["download_name"]):
        problems.append("%s: download_name must be a plain file name" % where)
    archive = entry.get("archive")
    if archive is not None:
        if not (set(archive) == {"format", "member"} and archive["format"] in ARCHIVE_FORMATS
                and isinstance(archive["member"], str) and archive["member"]):
            problems.append('%s: archive must be {"format": zip|tar, "member": path}' % where)
        if "download_name" not in entry:
            problems.append("%s: an archive entry needs download_name" % where)

    clean = entry["clean_iou"]
    if clean is not None:
        if clean.get("table", "missing") not in CLEAN_IOU_TABLES:
            problems.append("%s: clean_iou.table must be one of %s" % (where, CLEAN_IOU_TABLES))
        for name, value in clean.items():
            if name in ("table", "note"):
                continue
            if value is not None and not (_is_number(value) and 0 <= value <= 100):
                problems.append("%s: clean_iou.%s must be a percentage or null" % (where, name))
    problems += validate_input_block(entry["input"], where)
    return problems


def validate(manifest) -> None:
    """Raise ManifestError listing every schema problem of a parsed manifest."""
    problems = []
    if not isinstance(manifest, dict) or not isinstance(manifest.get("models"), dict):
        raise ManifestError('the manifest must be an object with a "models" object')
    if manifest.get("schema_version") != 1:
        problems.append("schema_version must be 1")
    for key, entry in manifest["models"].items():
        problems += validate_entry(key, entry)
    if problems:
        raise ManifestError("invalid weights manifest:\n  " + "\n  ".join(problems))


def load_manifest(path: Optional[Union[str, Path]] = None) -> dict:
    """Parse and validate the manifest.

    Parameters
    ----------
    path : str or Path, optional
        Defaults to ``weights_manifest.json`` at the repository root.

    Returns
    -------
    dict
        ``{"schema_version": 1, "models": {name: entry}, ...}``.
    """
    path = Path(path) if path is not None else MANIFEST_PATH
    with open(path, encoding="utf-8") as handle:
        manifest = json.load(handle)
    validate(manifest)
    return manifest


def model_entry(name: str, manifest: Optional[dict] = None) -> dict:
    """The manifest entry of zoo model ``name`` (KeyError naming the known ones)."""
    models = (manifest or load_manifest())["models"]
    try:
        return models[name]
    except KeyError:
        raise KeyError("no weights manifest entry %r; known: %s"
                       % (name, ", ".join(models))) from None


def input_protocol(name: str, manifest: Optional[dict] = None) -> dict:
    """The ``"input"`` block of ``name``, for ``preprocess.Protocol.from_dict``."""
    return model_entry(name, manifest)["input"]


def weights_file(entry: dict, weights_dir: Union[str, Path]) -> Path:
    """Where the caffemodel of ``entry`` is expected.

    Embedded models (``weights_path``) resolve against the repository root;
    all others are ``<weights_dir>/<caffemodel>``.
    """
    if entry.get("weights_path"):
        return REPO_ROOT / entry["weights_path"]
    return Path(weights_dir) / entry["caffemodel"]
