"""A resumable, crash-safe HDF5 store of per-image attack results.

One record per (configuration, image id). A configuration is everything that
changes a number: model, weights md5, dataset and split, attack, eps, attack
options, input protocol, engine, transfer source. Its key is a hash of the
canonical JSON, so records of different configurations never mix.

Crash safety without trusting HDF5 to survive a kill mid-write:

- ``<out>.journal`` (JSON lines) receives every record of an image in one
  write followed by fsync; a torn last line is ignored, so a kill at any
  moment loses at most the image in flight;
- ``<out>`` (HDF5) is only ever replaced atomically: compaction writes a copy
  with the journal's records appended and ``os.replace``s it, then empties the
  journal; records found in both are counted once.

Layout of the HDF5 file: ``/configs/<key>`` groups with attribute ``config``
(JSON) and row-aligned datasets ``ids``, ``cm_clean`` and ``cm_adv`` (n, C, C)
int64, ``conf_sum``, ``ent_sum``, ``max_delta``, ``seconds`` (float64),
``npix`` (int64) and ``version`` (str).
"""
import fcntl
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass

import h5py
import numpy as np

from caffe_attacks import __version__
from caffe_attacks.metrics import iou_ratio, mean_iou, pixel_accuracy

log = logging.getLogger(__name__)

_FLOAT_FIELDS = ("conf_sum", "ent_sum", "max_delta", "seconds")


def config_key(config):
    """16 hex digits identifying a configuration (canonical JSON, sha1)."""
    canon = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(canon.encode()).hexdigest()[:16]


@dataclass
class Record:
    """The result of one configuration on one image.

    cm_clean, cm_adv: (C, C) int64 confusion matrices on the image's label grid
    conf_sum, ent_sum: sums over npix pixels of max-probability and entropy
    max_delta: achieved ||x_adv - x||_inf; seconds: time spent on this record
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

    @property
    def key(self):
        return config_key(self.config)

    def to_json(self):
        return json.dumps({
            "key": self.key, "config": self.config, "id": self.image_id,
            "cm_clean": np.asarray(self.cm_clean).tolist(),
            "cm_adv": np.asarray(self.cm_adv).tolist(),
            "conf_sum": self.conf_sum, "ent_sum": self.ent_sum, "npix": int(self.npix),
            "max_delta": self.max_delta, "seconds": self.seconds, "version": self.version,
        }, sort_keys=True)

    @classmethod
    def from_json(cls, line):
        d = json.loads(line)
        return cls(config=d["config"], image_id=d["id"],
                   cm_clean=np.array(d["cm_clean"], np.int64),
                   cm_adv=np.array(d["cm_adv"], np.int64),
                   conf_sum=d["conf_sum"], ent_sum=d["ent_sum"], npix=d["npix"],
                   max_delta=d["max_delta"], seconds=d["seconds"], version=d["version"])


class StoreLocked(RuntimeError):
    pass


class ResultsStore:
    """Open (or create) a store at `path`; use as a context manager.

    compact_every: fold the journal into the HDF5 file after this many images.
    """

    def __init__(self, path, compact_every=100, readonly=False):
        self.path = str(path)
        self.journal_path = self.path + ".journal"
        self.compact_every = compact_every
        self.readonly = readonly
        self._lock = None
        if not readonly:
            d = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(d, exist_ok=True)
            self._lock = open(self.path + ".lock", "w")
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StoreLocked("%s is in use by another run" % self.path) from None
        self._configs = {}      # key -> config dict
        self._done = {}         # key -> set of image ids
        self._pending = []      # records in the journal, not yet in HDF5
        self._images_since_compact = 0
        self._load()

    # -- reading --------------------------------------------------------------
    def _load(self):
        if os.path.exists(self.path):
            try:
                with h5py.File(self.path, "r") as f:
                    for key, g in f.get("configs", {}).items():
                        self._configs[key] = json.loads(g.attrs["config"])
                        self._done[key] = set(x.decode() if isinstance(x, bytes) else x
                                              for x in g["ids"][()])
            except OSError as e:
                raise OSError("cannot read results store %s: %s" % (self.path, e)) from None
        if os.path.exists(self.journal_path):
            good_bytes = 0
            with open(self.journal_path, "rb") as f:
                for raw in f:
                    if not raw.endswith(b"\n"):
                        log.warning("ignoring a torn record at the end of %s", self.journal_path)
                        break
                    try:
                        rec = Record.from_json(raw.decode())
                    except (ValueError, KeyError):
                        log.warning("ignoring an unreadable record in %s", self.journal_path)
                        break
                    good_bytes += len(raw)
                    if rec.image_id in self._done.get(rec.key, ()):
                        continue
                    self._remember(rec)
                    self._pending.append(rec)
            if not self.readonly and good_bytes < os.path.getsize(self.journal_path):
                with open(self.journal_path, "r+b") as f:
                    f.truncate(good_bytes)

    def _remember(self, rec):
        self._configs.setdefault(rec.key, rec.config)
        self._done.setdefault(rec.key, set()).add(rec.image_id)

    def has(self, key, image_id):
        return image_id in self._done.get(key, ())

    def configs(self):
        """{key: config} of every configuration with at least one record."""
        return dict(self._configs)

    def records(self, key):
        """All records of a configuration as a dict of row-aligned arrays."""
        rows = []
        if os.path.exists(self.path):
            with h5py.File(self.path, "r") as f:
                g = f.get("configs/" + key)
                if g is not None:
                    ids = [x.decode() if isinstance(x, bytes) else x for x in g["ids"][()]]
                    cols = {name: g[name][()] for name in g if name != "ids"}
                    for i, image_id in enumerate(ids):
                        rows.append({"id": image_id, **{n: c[i] for n, c in cols.items()}})
        for rec in self._pending:
            if rec.key == key:
                rows.append({"id": rec.image_id, "cm_clean": rec.cm_clean, "cm_adv": rec.cm_adv,
                             "conf_sum": rec.conf_sum, "ent_sum": rec.ent_sum,
                             "npix": rec.npix, "max_delta": rec.max_delta,
                             "seconds": rec.seconds, "version": rec.version})
        return rows

    def summary(self, key, ids=None):
        """Dataset-level numbers of one configuration, computed from its records.

        ids: restrict to these image ids (e.g. the first N of a dataset).
        Returns dict with n_images, miou, miou_clean, iou_ratio, pixel_accuracy,
        confidence, entropy, max_delta, seconds; None when there is no record.
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
        }

    # -- writing --------------------------------------------------------------
    def add_image(self, records):
        """Durably add every record of one image (one write, one fsync)."""
        if self.readonly:
            raise RuntimeError("store opened read-only")
        records = [r for r in records if not self.has(r.key, r.image_id)]
        if not records:
            return
        payload = "".join(r.to_json() + "\n" for r in records).encode()
        with open(self.journal_path, "ab") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        for r in records:
            self._remember(r)
        self._pending.extend(records)
        self._images_since_compact += 1
        if self._images_since_compact >= self.compact_every:
            self.compact()

    def compact(self):
        """Fold the journal into the HDF5 file atomically, then empty the journal."""
        if self.readonly or not self._pending:
            return
        tmp = self.path + ".tmp"
        if os.path.exists(self.path):
            shutil.copyfile(self.path, tmp)
        elif os.path.exists(tmp):
            os.unlink(tmp)
        with h5py.File(tmp, "a") as f:
            configs = f.require_group("configs")
            by_key = {}
            for r in self._pending:
                by_key.setdefault(r.key, []).append(r)
            for key, recs in by_key.items():
                self._append(configs, key, recs)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        with open(self.journal_path, "wb") as f:
            os.fsync(f.fileno())
        self._pending = []
        self._images_since_compact = 0

    @staticmethod
    def _append(configs, key, recs):
        c = recs[0].cm_adv.shape[0]
        if key not in configs:
            g = configs.create_group(key)
            g.attrs["config"] = json.dumps(recs[0].config, sort_keys=True)
            str_t = h5py.string_dtype()
            g.create_dataset("ids", (0,), maxshape=(None,), dtype=str_t)
            g.create_dataset("version", (0,), maxshape=(None,), dtype=str_t)
            for name in ("cm_clean", "cm_adv"):
                g.create_dataset(name, (0, c, c), maxshape=(None, c, c), dtype=np.int64,
                                 chunks=(64, c, c), compression="gzip")
            for name in _FLOAT_FIELDS:
                g.create_dataset(name, (0,), maxshape=(None,), dtype=np.float64)
            g.create_dataset("npix", (0,), maxshape=(None,), dtype=np.int64)
        g = configs[key]
        have = set(x.decode() if isinstance(x, bytes) else x for x in g["ids"][()])
        recs = [r for r in recs if r.image_id not in have]
        if not recs:
            return
        n0, n = g["ids"].shape[0], len(recs)
        columns = {
            "ids": [r.image_id for r in recs], "version": [r.version for r in recs],
            "cm_clean": np.stack([r.cm_clean for r in recs]).astype(np.int64),
            "cm_adv": np.stack([r.cm_adv for r in recs]).astype(np.int64),
            "npix": np.array([r.npix for r in recs], np.int64),
        }
        for name in _FLOAT_FIELDS:
            columns[name] = np.array([getattr(r, name) for r in recs], np.float64)
        for name, values in columns.items():
            ds = g[name]
            ds.resize(n0 + n, axis=0)
            ds[n0:n0 + n] = values

    def close(self):
        if not self.readonly:
            self.compact()
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
