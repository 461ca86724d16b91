"""Streaming checksums and the verdict on one caffemodel file.

The supplementary material prints an MD5 for most models; three of them have
31 hex digits because one digit was lost in typesetting (the full values
published elsewhere, hszhao/ICNet's README and a third-party README for the
CRF-RNN model, show ICNet and CRF-RNN dropping a digit in the middle; ENet's
full value is unknown). A file
"matches a truncated checksum" when deleting exactly one digit of its MD5
gives the published 31 digits; a dropped last digit (a prefix) is one case.
"""
from __future__ import annotations

import enum
import hashlib
import logging
from dataclasses import dataclass, asdict
from pathlib import Path
from typing import Optional, Union

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20


class Status(str, enum.Enum):
    """Verdict on one model's weights; the value is what the table prints."""
    OK = "ok"
    OK_TRUNCATED = "ok (matched truncated checksum)"
    NO_CHECKSUM = "no published checksum"
    MISMATCH = "MISMATCH"
    MISSING = "missing"

    def __str__(self) -> str:
        return self.value


# Files smaller than this hash in well under a second: no bar for them.
PROGRESS_MIN_BYTES = 32 * 2 ** 20


def _progress_bar(total: int, desc: str):
    from tqdm import tqdm   # only a CLI asks for a bar
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                leave=False, disable=total < PROGRESS_MIN_BYTES)


def hash_file(path: Union[str, Path], algorithms=("md5",), progress: bool = False,
              chunk_bytes: int = CHUNK_BYTES) -> dict:
    """Hex digests of a file, reading it once in chunks.

    Parameters
    ----------
    path : str or Path
    algorithms : sequence of hashlib names
    progress : bool
        Show a tqdm byte bar on stderr (CLIs only).

    Returns
    -------
    dict
        algorithm -> lowercase hex digest.
    """
    path = Path(path)
    hashers = {name: hashlib.new(name) for name in algorithms}
    bar = _progress_bar(path.stat().st_size, path.name) if progress else None
    try:
        with open(path, "rb") as handle:
            while True:
                chunk = handle.read(chunk_bytes)
                if not chunk:
                    break
                for hasher in hashers.values():
                    hasher.update(chunk)
                if bar is not None:
                    bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    return {name: hasher.hexdigest() for name, hasher in hashers.items()}


def md5_file(path: Union[str, Path], progress: bool = False) -> str:
    """Lowercase hex MD5 of a file, streamed (files are up to ~540 MiB)."""
    return hash_file(path, ("md5",), progress=progress)["md5"]


def matches_truncated(full: str, published: str) -> bool:
    """True when ``published`` is ``full`` with exactly one hex digit deleted.

    Examples
    --------
    >>> matches_truncated("c7038630c4b6c869afaaadd811bdb539",
    ...                   "c7038630c4b6c869afaadd811bdb539")
    True
    """
    full, published = full.lower(), published.lower()
    if len(full) != len(published) + 1:
        return False
    # The first position where they differ is the deleted digit, or the
    # deleted digit sits in the run of equal digits just before it; either
    # way deleting full[i] at the first difference must reproduce the rest.
    i = next((k for k in range(len(published)) if full[k] != published[k]), len(published))
    return full[:i] + full[i + 1:] == published


def compare(md5: str, expected: Optional[str], truncated: bool) -> Status:
    """Status of a computed md5 against a manifest md5 (full or truncated)."""
    if expected is None:
        return Status.NO_CHECKSUM
    if truncated:
        return Status.OK_TRUNCATED if matches_truncated(md5, expected) else Status.MISMATCH
    return Status.OK if md5 == expected.lower() else Status.MISMATCH


@dataclass
class Verification:
    """Result of checking one model's file.

    ``md5``/``sha1`` are None when the file is missing; ``sha1`` is computed
    only when the manifest publishes one.
    """
    name: str
    path: str
    status: Status
    md5: Optional[str] = None
    expected_md5: Optional[str] = None
    md5_truncated: bool = False
    sha1: Optional[str] = None
    expected_sha1: Optional[str] = None
    detail: str = ""

    @property
    def verified(self) -> bool:
        """The file is the published one (full or truncated checksum matched)."""
        return self.status in (Status.OK, Status.OK_TRUNCATED)

    @property
    def mismatch(self) -> bool:
        return self.status is Status.MISMATCH

    def to_dict(self) -> dict:
        record = asdict(self)
        record["status"] = self.status.value
        return record


def verify_entry(entry: dict, path: Union[str, Path], progress: bool = False) -> Verification:
    """Check the file at ``path`` against a manifest entry."""
    path = Path(path)
    result = Verification(name=entry["name"], path=str(path), status=Status.MISSING,
                          expected_md5=entry.get("md5"),
                          md5_truncated=bool(entry.get("md5_truncated")),
                          expected_sha1=entry.get("sha1"))
    if not path.is_file():
        if not entry.get("public", True):
            closest = entry.get("closest_public") or {}
            result.detail = "not public; closest public model: %s" % closest.get("name", "?")
        return result
    algorithms = ("md5", "sha1") if result.expected_sha1 else ("md5",)
    digests = hash_file(path, algorithms, progress=progress)
    result.md5, result.sha1 = digests["md5"], digests.get("sha1")
    result.status = compare(result.md5, result.expected_md5, result.md5_truncated)
    if result.expected_sha1 and result.sha1 != result.expected_sha1.lower():
        result.status = Status.MISMATCH
        result.detail = "sha1 %s, published %s" % (result.sha1, result.expected_sha1)
    elif result.status is Status.OK_TRUNCATED:
        result.detail = "published md5 has 31 digits: %s" % result.expected_md5
    elif result.status is Status.MISMATCH:
        result.detail = "expected md5 %s" % result.expected_md5
    elif result.status is Status.NO_CHECKSUM and result.expected_sha1:
        result.status = Status.OK
        result.detail = "matched the published sha1"
    log.info("%s: %s (md5 %s)", result.name, result.status, result.md5)
    return result
