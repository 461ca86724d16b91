"""Download caffemodels: resumable HTTP(S), verify, then move into place.

A download goes to ``<dir>/<download_name>.part`` and resumes from its size
with an HTTP ``Range`` request (after an interruption within one call, or in
a later call). Archives (ENet's Dropbox folder zip, the DeepLab zips, the
clockwork tarball) are unpacked to ``<dir>/<caffemodel>.part``. The md5 is
checked before ``os.replace`` puts the caffemodel in place; on a mismatch
every partial file is deleted, so nothing unverified is left behind. A model
without a published checksum is accepted only if the download decodes as a
caffemodel whose layers fill the model's definition (an HTML error page or
a body cut short is deleted instead).
"""
from __future__ import annotations

import http.client
import logging
import os
import shutil
import socket
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Optional, Sequence, Union

from caffe_attacks import resources
from caffe_attacks.weights.checksum import Status, compare, file_problem, md5_file, verify_entry
from caffe_attacks.weights.manifest import weights_file

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
USER_AGENT = "caffe_attacks-fetch/1"


class FetchError(RuntimeError):
    """A model could not be fetched; the message says why and what to do."""


class _Interrupted(Exception):
    """The transfer stopped early; the .part file keeps what arrived."""


@dataclass
class FetchResult:
    name: str
    path: str
    status: Status
    md5: Optional[str]
    action: str          # "downloaded", "already present"


def _download_name(entry: dict, url: str) -> str:
    if entry.get("download_name"):
        return entry["download_name"]
    name = PurePosixPath(urllib.parse.urlparse(url).path).name
    return name or entry["caffemodel"]


def _content_total(response, offset: int) -> Optional[int]:
    """Full size of the resource from Content-Range or Content-Length."""
    content_range = response.headers.get("Content-Range", "")
    if "/" in content_range and not content_range.endswith("/*"):
        return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("Content-Length")
    return offset + int(length) if length is not None else None


def _transfer(url: str, part: Path, timeout: float, progress: bool) -> None:
    """One request: append to ``part`` from its current size.

    Raises _Interrupted when the body ends early, URLError/OSError when the
    host cannot be reached.
    """
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = "bytes=%d-" % offset
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:
            # Range beyond the end: the .part is complete if sizes agree.
            total = _content_total(err, 0) if "/" in err.headers.get("Content-Range", "") \
                else None
            if total == offset:
                return
            log.info("%s: server refused resume at %d bytes; starting over", url, offset)
            part.unlink()
            return _transfer(url, part, timeout, progress)
        raise
    with response:
        if offset and response.status != 206:
            log.info("%s: server ignored Range; starting over", url)
            offset = 0
        total = _content_total(response, offset)
        mode = "ab" if offset else "wb"
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=total, initial=offset, desc=part.name[:-5], unit="B",
                       unit_scale=True, unit_divisor=1024, leave=False)
        received = offset
        try:
            with open(part, mode) as out:
                while True:
                    try:
                        chunk = response.read(CHUNK_BYTES)
                    except (http.client.IncompleteRead, ConnectionError, socket.timeout) as err:
                        if isinstance(err, http.client.IncompleteRead) and err.partial:
                            out.write(err.partial)
                            received += len(err.partial)
                        raise _Interrupted("%s: transfer interrupted after %d bytes (%s)"
                                           % (url, received, err)) from None
                    if not chunk:
                        break
                    out.write(chunk)
                    received += len(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
    if total is not None and received < total:
        raise _Interrupted("%s: transfer interrupted after %d of %d bytes"
                           % (url, received, total))


def download(url: str, part: Path, *, attempts: int = 3, timeout: float = 30.0,
             progress: bool = False) -> None:
    """Download ``url`` into ``part``, resuming with Range after interruptions.

    Raises
    ------
    FetchError
        The host cannot be reached, answers with an HTTP error, or the
        transfer stays incomplete after ``attempts`` tries (the .part file is
        kept so a later call resumes it).
    """
    host = urllib.parse.urlparse(url).netloc
    attempts, last = max(1, attempts), ""
    for attempt in range(1, attempts + 1):
        try:
            _transfer(url, part, timeout, progress)
            return
        except _Interrupted as err:
            log.warning("%s (attempt %d of %d)", err, attempt, attempts)
            last = str(err)
        except urllib.error.HTTPError as err:
            raise FetchError("%s answered HTTP %d %s for %s" % (host, err.code, err.reason, url))
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise FetchError("cannot reach %s (%s) for %s; check the network or download "
                             "the file by hand" % (host, reason, url)) from None
    raise FetchError("%s; %d bytes kept in %s, run fetch again to resume"
                     % (last, part.stat().st_size if part.exists() else 0, part))


def _find_member(names: Sequence[str], member: str) -> str:
    if member in names:
        return member
    # Dropbox folder zips and re-packed archives may add a top folder.
    base = PurePosixPath(member).name
    candidates = [n for n in names if PurePosixPath(n).name == base]
    if len(candidates) == 1:
        return candidates[0]
    raise FetchError("archive has no member %r (holds: %s)"
                     % (member, ", ".join(list(names)[:20])))


def extract_member(archive: Path, fmt: str, member: str, out: Path) -> None:
    """Stream one member of a zip or tar (any compression) into ``out``."""
    try:
        if fmt == "zip":
            with zipfile.ZipFile(archive) as zf:
                name = _find_member(zf.namelist(), member)
                with zf.open(name) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK_BYTES)
        else:
            with tarfile.open(archive, "r:*") as tf:
                name = _find_member(tf.getnames(), member)
                src = tf.extractfile(name)
                if src is None:
                    raise FetchError("archive member %r is not a regular file" % name)
                with src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK_BYTES)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as err:
        raise FetchError("cannot unpack %s: %s" % (archive, err)) from None


def caffemodel_problem(entry: dict, path: Path) -> Optional[str]:
    """None if ``path`` decodes as a caffemodel filling ``entry``'s definition, else why not."""
    from caffe_attacks import definition_check
    from caffe_attacks.caffemodel_reader import read_caffemodel
    prototxt = resources.project_path(entry["prototxt"])
    if not prototxt.is_file():
        return "its definition %s is missing, so the file cannot be checked" % prototxt
    try:
        net = definition_check.parse(prototxt.read_text(), str(prototxt))
        definition_check.check_caffemodel_fills(net, read_caffemodel(path), path.name,
                                                str(prototxt))
    except ValueError as e:     # CaffemodelFormatError, WeightShapeError, UnfilledParamsError
        return str(e)
    return None


def _remove(*paths: Path) -> None:
    for path in paths:
        if path.exists():
            path.unlink()


def fetch_entry(entry: dict, weights_dir: Union[str, Path], *, attempts: int = 3,
                timeout: float = 30.0, progress: bool = False) -> FetchResult:
    """Make the caffemodel of one manifest entry present and verified.

    Returns
    -------
    FetchResult
        With ``action`` "already present" when a verified (or unchecksummed)
        file is there, otherwise "downloaded".

    Raises
    ------
    FetchError
        Not public, only manual links, every URL failed, the download's
        checksum does not match (nothing is kept), or a file of the wrong md5
        is already in place.
    """
    name = entry["name"]
    weights_dir = Path(weights_dir)
    target = weights_file(entry, weights_dir)
    if entry.get("weights_path"):
        return FetchResult(name, str(target), verify_entry(entry, target).status, None,
                           "embedded in the repository")
    if file_problem(target) not in (None, "missing"):
        raise FetchError("%s: %s %s, so the caffemodel cannot be put there; remove or rename "
                         "it" % (name, target, file_problem(target)))
    if target.exists():
        found = verify_entry(entry, target, progress=progress)
        if found.unreadable:
            raise FetchError("%s: %s" % (name, found.detail))
        if found.mismatch:
            raise FetchError("%s: %s is already there but its md5 %s does not match %s; "
                             "remove it to download again" % (name, target, found.md5,
                                                              entry.get("md5")))
        return FetchResult(name, str(target), found.status, found.md5, "already present")
    if not entry["public"]:
        closest = entry.get("closest_public") or {}
        raise FetchError("%s: the paper's weights were never published. Closest public model: "
                         "%s (%s)" % (name, closest.get("name"), closest.get("note", "")))
    if not entry["urls"]:
        manual = entry.get("manual_urls") or []
        raise FetchError("%s: no direct download; fetch it by hand (a browser or gdown for "
                         "Google Drive) from %s and save it as %s"
                         % (name, " or ".join(manual) or "the model's repository", target))
    weights_dir.mkdir(parents=True, exist_ok=True)
    archive = entry.get("archive")
    errors = []
    for url in entry["urls"]:
        part = weights_dir / (_download_name(entry, url) + ".part")
        model_part = target.with_name(target.name + ".part") if archive else part
        try:
            download(url, part, attempts=attempts, timeout=timeout, progress=progress)
            if archive:
                extract_member(part, archive["format"], archive["member"], model_part)
        except FetchError as err:
            errors.append(str(err))
            log.info("%s", err)
            continue
        md5 = md5_file(model_part, progress=progress)
        status = compare(md5, entry.get("md5"), bool(entry.get("md5_truncated")))
        if status is Status.MISMATCH:
            _remove(part, model_part)
            raise FetchError("%s: MISMATCH: %s has md5 %s, the manifest says %s; the download "
                             "was deleted and nothing was put in place"
                             % (name, url, md5, entry["md5"]))
        if status is Status.NO_CHECKSUM:
            problem = caffemodel_problem(entry, model_part)
            if problem:
                _remove(part, model_part)
                raise FetchError("%s: %s gave no usable caffemodel and there is no published "
                                 "checksum to go by: %s; the download was deleted and nothing "
                                 "was put in place" % (name, url, problem))
            log.warning("%s: no published checksum; it decodes as a caffemodel that fills %s, "
                        "keeping it with md5 %s", name, entry["prototxt"], md5)
        os.replace(model_part, target)
        _remove(part)
        return FetchResult(name, str(target), status, md5, "downloaded")
    raise FetchError("%s: every source failed:\n  %s" % (name, "\n  ".join(errors)))
