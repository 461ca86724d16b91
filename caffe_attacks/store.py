"""A resumable, crash-safe HDF5 store of per-image attack results.

One record per (configuration, image id). A configuration is everything that
changes a number: model, weights md5, dataset and split, attack, eps, attack
options, input protocol, engine, transfer source. Its key is a hash of the
canonical JSON, so records of different configurations never mix, and adding
a record the store already holds is a no-op (the first one stays).

Crash safety without trusting HDF5 to survive a kill mid-write:

- ``<out>.journal`` (JSON lines) receives every record of an image in one
  write followed by fsync; a torn last line is ignored, so a kill at any
  moment loses at most the image in flight. A corrupt line elsewhere is
  skipped and reported with its line number; every valid line is kept, the
  bad lines are appended to ``<out>.journal.rejected`` and the journal as it
  was is kept as ``<out>.journal.orig`` until the next compaction succeeds;
- ``<out>`` (HDF5) is only ever replaced atomically: compaction builds the
  new file in memory (so HDF5 never meets a full disk), writes it to
  ``<out>.tmp`` with plain file I/O, fsyncs, ``os.replace``s it and fsyncs
  the directory, then empties the journal; records found in both are
  counted once. A failed write (disk full, ``ulimit -f``) raises
  ``StoreWriteError`` and leaves the journal and the old file as they were.

``<out>`` is resolved to its real path first, so a symlinked store is locked,
journaled and replaced at its target. ``<out>.lock`` holds the pid of the
process that writes the store.

Layout of the HDF5 file: ``/configs/<key>`` groups with attribute ``config``
(JSON) and row-aligned datasets ``ids``, ``cm_clean`` and ``cm_adv`` (n, C, C)
int64, ``conf_sum``, ``ent_sum``, ``max_delta``, ``seconds`` (float64),
``npix`` (int64), ``version`` (str) and ``software`` (str: the JSON of
``environment.software_versions()`` of the process that computed the record;
empty in records from before versions were recorded). Stores written by
earlier versions may hold an id twice in one configuration; readers count it
once.
"""
import fcntl
import hashlib
import io
import json
import logging
import math
import os
import shutil
import stat
from dataclasses import dataclass, field
from typing import Optional

import h5py
import numpy as np

from caffe_attacks import __version__
from caffe_attacks.environment import software_versions
from caffe_attacks.metrics import iou_ratio, mean_iou, pixel_accuracy

log = logging.getLogger(__name__)

_FLOAT_FIELDS = ("conf_sum", "ent_sum", "max_delta", "seconds")


def config_key(config):
    """16 hex digits identifying a configuration (canonical JSON, sha1)."""
    canon = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(canon.encode()).hexdigest()[:16]


class StoreError(Exception):
    """The store cannot be opened or written; the message names the file and the reason."""


class StoreLocked(StoreError):
    """Another process writes this store."""


class StoreWriteError(StoreError):
    """Writing failed (disk full, file size limit, permissions); nothing was lost."""


class InvalidRecord(ValueError):
    """A record with values no result can have (NaN, inf, negative counts)."""


@dataclass
class Record:
    """The result of one configuration on one image.

    cm_clean, cm_adv: (C, C) int64 confusion matrices on the image's label grid
    conf_sum, ent_sum: sums over npix pixels of max-probability and entropy
    max_delta: achieved ||x_adv - x||_inf; seconds: time spent on this record
    software: the versions that computed it (numpy, torch, opencv, h5py, the Caffe
    build, the project and its git commit); None for records stored before that
    """
    config: dict
    image_id: str
    cm_clean: np.ndarray
    cm_adv: np.ndarray
    conf_sum: float
    ent_sum: float
    npix: int
    max_delta: float
    seconds: float
    version: str = __version__
    software: Optional[dict] = field(default_factory=software_versions)

    @property
    def key(self):
        return config_key(self.config)

    def check(self):
        """Raise InvalidRecord naming the image unless every value is a possible result."""
        where = "image %r (attack %s, eps %s)" % (self.image_id, self.config.get("attack"),
                                                 self.config.get("eps"))
        if not isinstance(self.image_id, str) or not self.image_id:
            raise InvalidRecord("record without an image id: %r" % (self.image_id,))
        for name in _FLOAT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, (bool, str)) or not math.isfinite(float(value)):
                raise InvalidRecord("%s: %s is %r; the input or the model's scores are not "
                                    "finite, so nothing was stored" % (where, name, value))
        cms = [np.asarray(self.cm_clean), np.asarray(self.cm_adv)]
        for name, cm in zip(("cm_clean", "cm_adv"), cms):
            if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape != cms[1].shape \
                    or not np.issubdtype(cm.dtype, np.integer) or (cm < 0).any():
                raise InvalidRecord("%s: %s must be a square matrix of counts, got %s %s"
                                    % (where, name, cm.dtype, cm.shape))
        if isinstance(self.npix, bool) or int(self.npix) != self.npix or self.npix < 0:
            raise InvalidRecord("%s: npix must be a count, got %r" % (where, self.npix))

    def to_json(self):
        return json.dumps({
            "key": self.key, "config": self.config, "id": self.image_id,
            "cm_clean": np.asarray(self.cm_clean).tolist(),
            "cm_adv": np.asarray(self.cm_adv).tolist(),
            "conf_sum": self.conf_sum, "ent_sum": self.ent_sum, "npix": int(self.npix),
            "max_delta": self.max_delta, "seconds": self.seconds, "version": self.version,
            "software": self.software,
        }, sort_keys=True)

    @classmethod
    def from_json(cls, line):
        """Parse and check one journal line (ValueError, KeyError or TypeError if bad)."""
        d = json.loads(line)
        rec = cls(config=d["config"], image_id=d["id"],
                  cm_clean=np.array(d["cm_clean"], np.int64),
                  cm_adv=np.array(d["cm_adv"], np.int64),
                  conf_sum=d["conf_sum"], ent_sum=d["ent_sum"], npix=d["npix"],
                  max_delta=d["max_delta"], seconds=d["seconds"], version=d["version"],
                  software=d.get("software"))
        if not isinstance(rec.config, dict) or d["key"] != rec.key:
            raise ValueError("its key does not match its configuration")
        rec.check()
        return rec


def _fsync_dir(path):
    """Make a rename in the directory of `path` durable (power loss)."""
    fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_only(path):
    """True when `path` exists and must not be replaced: no write bit, or no access."""
    mode = os.stat(path).st_mode
    return not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH) or not os.access(path, os.W_OK)


class ResultsStore:
    """Open (or create) a store at `path`; use as a context manager.

    compact_every: fold the journal into the HDF5 file after this many images.
    Raises StoreError (naming the file) when `path` is a directory, not an HDF5
    results store, read-only, or locked by another process (StoreLocked, with
    its pid).
    """

    def __init__(self, path, compact_every=100, readonly=False):
        self.path = os.path.realpath(str(path))
        self.journal_path = self.path + ".journal"
        self.compact_every = compact_every
        self.readonly = readonly
        self._lock_fd = None
        self._configs = {}      # key -> config dict
        self._done = {}         # key -> set of image ids
        self._pending = []      # records in the journal, not yet in HDF5
        self._images_since_compact = 0
        self._check_path()
        if not readonly:
            self._acquire_lock()
        try:
            self._load()
        except BaseException:
            self._release_lock()
            raise

    # -- opening --------------------------------------------------------------
    def _check_path(self):
        if os.path.isdir(self.path):
            raise StoreError("results store %s is a directory; give a file name such as %s"
                             % (self.path, os.path.join(self.path, "results.h5")))
        if os.path.exists(self.path):
            if not os.path.isfile(self.path):       # a FIFO would block the HDF5 probe
                raise StoreError("results store %s is not a regular file" % self.path)
            if not h5py.is_hdf5(self.path):
                raise StoreError("%s is not an HDF5 results store; refusing to overwrite it "
                                 "(choose another --out)" % self.path)
            try:
                with h5py.File(self.path, "r") as f:
                    foreign = sorted(set(f.keys()) - {"configs"})
            except OSError as e:
                raise StoreError("cannot read results store %s: %s" % (self.path, e)) from None
            if foreign:
                raise StoreError("%s is an HDF5 file but not a results store (it holds %s); "
                                 "choose another --out" % (self.path, ", ".join(foreign)))
            if not self.readonly and _read_only(self.path):
                raise StoreError("results store %s is read-only; make it writable or choose "
                                 "another --out" % self.path)

    def _acquire_lock(self):
        lock_path = self.path + ".lock"
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            # no O_TRUNC: the file holds the current holder's pid
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StoreError("cannot write results store %s: %s"
                             % (self.path, e.strerror or e)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StoreLocked("results store %s is in use by another run (pid %s); wait for "
                              "it to finish or use another --out" % (self.path, holder)) from None
        self._lock_fd = fd
        try:
            os.ftruncate(fd, 0)
            os.write(fd, b"%d\n" % os.getpid())
        except OSError as e:    # the pid is for messages only; the lock is what counts
            log.warning("cannot record this pid in %s: %s", lock_path, e)

    def _release_lock(self):
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- reading --------------------------------------------------------------
    def _load(self):
        if os.path.exists(self.path):
            try:
                with h5py.File(self.path, "r") as f:
                    for key, g in f.get("configs", {}).items():
                        self._configs[key] = json.loads(g.attrs["config"])
                        self._done[key] = set(_ids(g))
            except (OSError, KeyError, ValueError) as e:
                raise StoreError("cannot read results store %s: %s" % (self.path, e)) from None
        if os.path.exists(self.journal_path):
            self._load_journal()

    def _load_journal(self):
        with open(self.journal_path, "rb") as f:
            data = f.read()
        complete = data.rfind(b"\n") + 1      # bytes after it: a write cut short by a kill
        bad = []
        for number, raw in enumerate(data[:complete].split(b"\n")[:-1], 1):
            try:
                rec = Record.from_json(raw.decode())
            except (ValueError, KeyError, TypeError) as e:
                bad.append((number, raw, e))
                continue
            if self.has(rec.key, rec.image_id):
                continue
            self._remember(rec)
            self._pending.append(rec)
        if complete < len(data):
            log.warning("ignoring a torn record at the end of %s", self.journal_path)
        for number, _, err in bad:
            log.warning("%s line %d is not a valid record (%s); skipped, the other records "
                        "are kept", self.journal_path, number, err)
        if self.readonly:
            return
        if bad:
            self._set_aside(data, bad)
        if complete < len(data):
            with open(self.journal_path, "r+b") as f:
                f.truncate(complete)
                os.fsync(f.fileno())

    def _set_aside(self, data, bad):
        """Keep the journal as found (until compaction succeeds) and its bad lines for good."""
        orig = self.journal_path + ".orig"
        if not os.path.exists(orig):     # an earlier run's copy is the older original
            with open(orig, "wb") as f:
                f.write(data)
                os.fsync(f.fileno())
        with open(self.journal_path + ".rejected", "ab") as f:
            for number, raw, _ in bad:
                f.write(b"# line %d\n%s\n" % (number, raw))
            os.fsync(f.fileno())
        log.warning("the journal as found is kept as %s until the next compaction; its bad "
                    "lines are in %s.rejected", orig, self.journal_path)

    def _remember(self, rec):
        self._configs.setdefault(rec.key, rec.config)
        self._done.setdefault(rec.key, set()).add(rec.image_id)

    def has(self, key, image_id):
        return image_id in self._done.get(key, ())

    def configs(self):
        """{key: config} of every configuration with at least one record."""
        return dict(self._configs)

    def records(self, key):
        """All records of a configuration as a dict of row-aligned arrays (one per image id)."""
        rows, seen = [], set()
        if os.path.exists(self.path):
            with h5py.File(self.path, "r") as f:
                g = f.get("configs/" + key)
                if g is not None:
                    ids = _ids(g)
                    cols = {name: g[name][()] for name in g if name not in ("ids", "software")}
                    software = _software_column(g, len(ids))
                    for i, image_id in enumerate(ids):
                        if image_id in seen:    # written twice by an earlier version
                            continue
                        seen.add(image_id)
                        rows.append({"id": image_id, **{n: c[i] for n, c in cols.items()},
                                     "software": software[i]})
        for rec in self._pending:
            if rec.key == key and rec.image_id not in seen:
                seen.add(rec.image_id)
                rows.append({"id": rec.image_id, "cm_clean": rec.cm_clean, "cm_adv": rec.cm_adv,
                             "conf_sum": rec.conf_sum, "ent_sum": rec.ent_sum,
                             "npix": rec.npix, "max_delta": rec.max_delta,
                             "seconds": rec.seconds, "version": rec.version,
                             "software": rec.software})
        return rows

    def summary(self, key, ids=None):
        """Dataset-level numbers of one configuration, computed from its records.

        ids: restrict to these image ids (e.g. the first N of a dataset).
        Returns dict with n_images, miou, miou_clean, iou_ratio, pixel_accuracy,
        confidence, entropy, max_delta, seconds, and software (the distinct
        versions behind the records, see :func:`software_sets`); None when
        there is no record.
        """
        rows = self.records(key)
        if ids is not None:
            wanted = set(ids)
            rows = [r for r in rows if r["id"] in wanted]
        if not rows:
            return None
        # sum in id order: the float sums must not depend on the order records
        # arrived in (workers finish units in any order)
        rows.sort(key=lambda r: r["id"])
        cm_adv = sum(np.asarray(r["cm_adv"], np.int64) for r in rows)
        cm_clean = sum(np.asarray(r["cm_clean"], np.int64) for r in rows)
        npix = sum(int(r["npix"]) for r in rows)
        miou, miou_clean = mean_iou(cm_adv), mean_iou(cm_clean)
        return {
            "n_images": len(rows), "ids": sorted(r["id"] for r in rows),
            "miou": miou, "miou_clean": miou_clean,
            "iou_ratio": iou_ratio(miou, miou_clean) if miou_clean > 0 else float("nan"),
            "pixel_accuracy": pixel_accuracy(cm_adv),
            "confidence": sum(float(r["conf_sum"]) for r in rows) / npix,
            "entropy": sum(float(r["ent_sum"]) for r in rows) / npix,
            "max_delta": max(float(r["max_delta"]) for r in rows),
            "seconds": sum(float(r["seconds"]) for r in rows),
            "software": software_sets(rows),
        }

    # -- writing --------------------------------------------------------------
    def add_image(self, records):
        """Durably add every record of one image (one write, one fsync).

        A record whose (configuration, image) the store already holds, or that
        repeats an earlier one in `records`, is dropped. Raises InvalidRecord
        (nothing written) if any record holds a non-finite number, and
        StoreWriteError (the journal left as it was) if the write fails.
        """
        if self.readonly:
            raise RuntimeError("store opened read-only")
        for r in records:
            r.check()
        fresh, seen = [], set()
        for r in records:
            pair = (r.key, r.image_id)
            if pair not in seen and not self.has(*pair):
                seen.add(pair)
                fresh.append(r)
        if not fresh:
            return
        payload = "".join(r.to_json() + "\n" for r in fresh).encode()
        fd = os.open(self.journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            try:
                view = memoryview(payload)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            except OSError as e:
                os.ftruncate(fd, size)     # no half line for the next append to continue
                raise StoreWriteError("cannot append to %s: %s; the results of earlier images "
                                      "are kept, free space and run again to resume"
                                      % (self.journal_path, e.strerror or e)) from None
        finally:
            os.close(fd)
        for r in fresh:
            self._remember(r)
        self._pending.extend(fresh)
        self._images_since_compact += 1
        if self._images_since_compact >= self.compact_every:
            self.compact()

    def compact(self):
        """Fold the journal into the HDF5 file atomically, then empty the journal."""
        if self.readonly or not self._pending:
            return
        image = self._file_image_with(self._pending)
        tmp = self.path + ".tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(image)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            _fsync_dir(self.path)
        except OSError as e:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise StoreWriteError("cannot write results store %s: %s; every record is still "
                                  "in %s: free space (or raise `ulimit -f`) and run the same "
                                  "command again" % (self.path, e.strerror or e,
                                                     self.journal_path)) from None
        with open(self.journal_path, "wb") as f:
            os.fsync(f.fileno())
        orig = self.journal_path + ".orig"
        if os.path.exists(orig):
            os.unlink(orig)
        self._pending = []
        self._images_since_compact = 0

    def _file_image_with(self, records):
        """Bytes of the HDF5 file with `records` appended, built in memory."""
        buffer = io.BytesIO()
        if os.path.exists(self.path):
            with open(self.path, "rb") as f:
                shutil.copyfileobj(f, buffer)
        with h5py.File(buffer, "a") as f:
            configs = f.require_group("configs")
            by_key = {}
            for r in records:
                by_key.setdefault(r.key, []).append(r)
            for key, recs in by_key.items():
                self._append(configs, key, recs)
        return buffer.getvalue()

    @staticmethod
    def _append(configs, key, recs):
        c = recs[0].cm_adv.shape[0]
        if key not in configs:
            g = configs.create_group(key)
            g.attrs["config"] = json.dumps(recs[0].config, sort_keys=True)
            str_t = h5py.string_dtype()
            g.create_dataset("ids", (0,), maxshape=(None,), dtype=str_t)
            g.create_dataset("version", (0,), maxshape=(None,), dtype=str_t)
            g.create_dataset("software", (0,), maxshape=(None,), dtype=str_t)
            for name in ("cm_clean", "cm_adv"):
                g.create_dataset(name, (0, c, c), maxshape=(None, c, c), dtype=np.int64,
                                 chunks=(64, c, c), compression="gzip")
            for name in _FLOAT_FIELDS:
                g.create_dataset(name, (0,), maxshape=(None,), dtype=np.float64)
            g.create_dataset("npix", (0,), maxshape=(None,), dtype=np.int64)
        g = configs[key]
        have = set(_ids(g))
        fresh = []
        for r in recs:
            if r.image_id not in have:
                have.add(r.image_id)
                fresh.append(r)
        if not fresh:
            return
        n0, n = g["ids"].shape[0], len(fresh)
        if "software" not in g:     # a group written before versions were recorded
            g.create_dataset("software", (n0,), maxshape=(None,), dtype=h5py.string_dtype())
        columns = {
            "ids": [r.image_id for r in fresh], "version": [r.version for r in fresh],
            "software": [_software_text(r.software) for r in fresh],
            "cm_clean": np.stack([r.cm_clean for r in fresh]).astype(np.int64),
            "cm_adv": np.stack([r.cm_adv for r in fresh]).astype(np.int64),
            "npix": np.array([r.npix for r in fresh], np.int64),
        }
        for name in _FLOAT_FIELDS:
            columns[name] = np.array([getattr(r, name) for r in fresh], np.float64)
        for name, values in columns.items():
            ds = g[name]
            ds.resize(n0 + n, axis=0)
            ds[n0:n0 + n] = values

    def close(self):
        try:
            if not self.readonly:
                self.compact()
        finally:
            self._release_lock()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _ids(group):
    return [x.decode() if isinstance(x, bytes) else x for x in group["ids"][()]]


def _software_text(software):
    return json.dumps(software, sort_keys=True) if software else ""


def _software_column(group, n):
    """The ``software`` of each of a group's n rows (None where it was not recorded)."""
    if "software" not in group:
        return [None] * n
    texts = [x.decode() if isinstance(x, bytes) else x for x in group["software"][()]]
    return [json.loads(t) if t else None for t in texts]


def software_sets(rows):
    """The distinct ``software`` values of records, each with its record count.

    Returns
    -------
    list of {"software": dict or None, "n_records": int}
        Most records first; None stands for records without versions.
    """
    counts = {}
    for row in rows:
        text = _software_text(row.get("software"))
        counts[text] = counts.get(text, 0) + 1
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [{"software": json.loads(text) if text else None, "n_records": n}
            for text, n in ordered]
