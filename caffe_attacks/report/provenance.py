"""Provenance per model from the results store: weights, engine, versions, images, dates.

Never runs a network and never re-hashes a caffemodel: a record carries the
md5 of the weights it was produced with, and that md5 is judged against the
weights manifest (:func:`caffe_attacks.weights.compare`), so the verdict is
about the weights the numbers came from, not about whatever file lies in the
weights folder today.

Records gain fields over time (software versions, devices, dates, pass
counts); this module shows what a store holds and says "not recorded"
otherwise. Fields it does not know are listed as they are, so nothing a
record says is hidden.
"""
import datetime
import json
import os
from dataclasses import dataclass, field

from caffe_attacks import weights as W

NOT_RECORDED = "not recorded"
# Configuration fields this module presents in a column of its own (or that
# select rather than describe: attack, eps and options are the table's business).
KNOWN_CONFIG_FIELDS = {"model", "weights_md5", "dataset", "split", "protocol", "engine",
                       "score_blob", "attack", "eps", "options", "source", "crf", "member",
                       "device", "gpu"}
# Where a configuration may keep software versions (a dict of name -> version); a
# record's own "software" column (JSON text or a dict, empty for old records) is read too.
SOFTWARE_FIELDS = ("software", "versions", "environment")
# Per-record columns the store always has; any other column is shown as recorded.
STANDARD_COLUMNS = {"id", "cm_clean", "cm_adv", "conf_sum", "ent_sum", "npix", "max_delta",
                    "seconds", "version", "software"}
DATE_WORDS = ("date", "time", "started", "finished", "created")
PASS_WORD = "pass"

# Weights verdicts in the report's words (weights.Status -> label, css class).
VERDICTS = {
    W.Status.OK: ("verified", "ok"),
    W.Status.OK_TRUNCATED: ("truncated match", "ok"),
    W.Status.NO_CHECKSUM: ("unverified (no published checksum)", "warn"),
    W.Status.MISMATCH: ("MISMATCH with the manifest", "bad"),
}


@dataclass
class ModelProvenance:
    """What the store says about one net (model name, weights md5, engine)."""
    model: str
    title: str
    weights_md5: str
    weights_file: str
    weights_present: bool
    verdict: str
    verdict_class: str
    expected_md5: str
    engine: str
    device: str
    versions: list                      # distinct per-record project versions
    software: dict                      # name -> sorted distinct values
    records_without_software: int
    datasets: list                      # [(dataset/split, n images)]
    n_configs: int = 0
    n_records: int = 0
    seconds: float = 0.0
    dates: str = NOT_RECORDED
    passes: dict = field(default_factory=dict)      # field name -> total
    other: dict = field(default_factory=dict)       # unknown field -> sorted distinct values
    as_source: int = 0                  # configurations that crafted on this net (transfer)


def _text(value):
    """A stored value as text (HDF5 gives bytes for strings)."""
    if value is None:
        return "none"
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def manifest_entry(model, manifest=None):
    """The manifest entry of a record's model name (``NAME@VARIANT``: NAME's), or None."""
    base = model.split("@")[0]
    for name in dict.fromkeys((model, base, base.replace("+crf", ""))):
        try:
            return W.model_entry(name, manifest)
        except KeyError:
            continue
    return None


def weights_verdict(model, md5, weights_dir="weights", manifest=None):
    """(weights file, present, verdict, css class, expected md5) of a record's weights.

    The md5 is the one the record carries; the manifest says what it should be.
    """
    if not md5:
        return "", False, "no weights (random initialisation)", "warn", None
    entry = manifest_entry(model, manifest)
    if entry is None:
        return "", False, "unverified (not a manifest model)", "warn", None
    path = W.weights_file(entry, weights_dir)
    status = W.compare(md5, entry.get("md5"), bool(entry.get("md5_truncated")))
    if status is W.Status.NO_CHECKSUM and entry.get("sha1"):
        # a sha1-only entry cannot be judged from a record's md5
        label, css = "unverified (published sha1 only; run `make verify-weights`)", "warn"
    else:
        label, css = VERDICTS[status]
    return str(path), path.is_file(), label, css, entry.get("md5")


def _title(model, manifest=None):
    entry = manifest_entry(model, manifest)
    return entry.get("title", "") if entry else ""


def _device(config):
    if config.get("device") is not None:
        return _text(config["device"])
    if config.get("gpu") is not None:
        return "GPU %s" % _text(config["gpu"])
    return NOT_RECORDED


def _software(config):
    for name in SOFTWARE_FIELDS:
        value = config.get(name)
        if isinstance(value, dict):
            return value
    return {}


def _record_software(value):
    """A record's software versions as a dict ({} when it has none)."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except ValueError:
            return {"software": value}
    return value if isinstance(value, dict) else {}


def _date_range(values):
    stamps = []
    for v in values:
        if isinstance(v, (int, float)) and v > 1e9:      # seconds since the epoch
            stamps.append(datetime.datetime.fromtimestamp(float(v), datetime.timezone.utc)
                          .strftime("%Y-%m-%d %H:%M UTC"))
        else:
            stamps.append(_text(v))
    if not stamps:
        return None
    lo, hi = min(stamps), max(stamps)
    return lo if lo == hi else "%s to %s" % (lo, hi)


def collect(store, weights_dir="weights", manifest=None):
    """[ModelProvenance] of every net with records in ``store`` (None: empty list), by model.

    manifest: the weights manifest (default: weights_manifest.json).
    """
    if store is None:
        return []
    manifest = manifest or W.load_manifest()
    groups = {}
    for key, config in sorted(store.configs().items()):
        ident = (config.get("model", "?"), config.get("weights_md5"), config.get("engine", "?"))
        g = groups.setdefault(ident, _Group())
        g.add(store, key, config)
        source = config.get("source")
        if isinstance(source, dict) and source.get("model"):
            s_ident = (source["model"], source.get("weights_md5"), source.get("engine", "?"))
            groups.setdefault(s_ident, _Group()).sources += 1
    return [g.finish(ident, weights_dir, manifest) for ident, g in
            sorted(groups.items(), key=lambda kv: tuple(str(x) for x in kv[0]))]


def _pass_counts(name, value):
    """{what: passes} of a field counting passes (``"passes": {"forward": n, ...}`` or
    ``"forward_passes": n``), or {} for any other field."""
    if PASS_WORD not in name:
        return {}
    if isinstance(value, bool):
        return {}
    if isinstance(value, (int, float)):
        return {name: value}
    if isinstance(value, dict) and value and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value.values()):
        return dict(value)
    return {}


class _Group:
    """Accumulates the configurations and records of one net."""

    def __init__(self):
        self.configs = []
        self.ids = {}               # "dataset/split" -> set of ids
        self.versions = set()
        self.software = {}
        self.devices = set()
        self.seconds = 0.0
        self.n_records = 0
        self.dates = []
        self.passes = {}
        self.other = {}
        self.sources = 0
        self.no_software = 0        # records that say nothing of their software

    def add(self, store, key, config):
        self.configs.append(config)
        self.devices.add(_device(config))
        for name, value in _software(config).items():
            self.software.setdefault(name, set()).add(_text(value))
        rows = store.records(key)
        for name, value in config.items():
            if name in KNOWN_CONFIG_FIELDS or name in SOFTWARE_FIELDS:
                continue
            per_image = _pass_counts(name, value)
            if per_image:
                # a configuration's pass counts are per image: every record took them
                for what, n in per_image.items():
                    self.passes[what] = self.passes.get(what, 0) + n * len(rows)
            else:
                self.other.setdefault(name, set()).add(_text(value))
        ids = self.ids.setdefault("%s/%s" % (config.get("dataset"), config.get("split")), set())
        for row in rows:
            self.n_records += 1
            ids.add(_text(row["id"]))
            self.versions.add(_text(row.get("version", NOT_RECORDED)))
            software = _record_software(row.get("software"))
            if software:
                for name, value in software.items():
                    self.software.setdefault(name, set()).add(_text(value))
            else:
                self.no_software += 1
            self.seconds += float(row.get("seconds", 0.0))
            for name, value in row.items():
                if name in STANDARD_COLUMNS:
                    continue
                value = value.item() if hasattr(value, "item") and getattr(value, "size", 1) == 1 \
                    else value
                if _pass_counts(name, value):
                    for what, n in _pass_counts(name, value).items():
                        self.passes[what] = self.passes.get(what, 0) + n
                elif any(w in name for w in DATE_WORDS):
                    self.dates.append(value)
                elif isinstance(value, (str, bytes, int, float)):
                    self.other.setdefault(name, set()).add(_text(value))

    def finish(self, ident, weights_dir, manifest):
        model, md5, engine = ident
        path, present, verdict, css, expected = weights_verdict(model, md5, weights_dir,
                                                                manifest)
        return ModelProvenance(
            model=model, title=_title(model, manifest), weights_md5=md5 or "", weights_file=path,
            weights_present=present, verdict=verdict, verdict_class=css, expected_md5=expected,
            engine=engine, device=", ".join(sorted(self.devices)) or NOT_RECORDED,
            versions=sorted(self.versions), software={k: sorted(v, key=str) for k, v in
                                                      sorted(self.software.items())},
            records_without_software=self.no_software if self.software else 0,
            datasets=[(k, len(v)) for k, v in sorted(self.ids.items()) if v],
            n_configs=len(self.configs), n_records=self.n_records, seconds=self.seconds,
            dates=_date_range(self.dates) or NOT_RECORDED, passes=dict(sorted(self.passes.items())),
            other={k: sorted(v) for k, v in sorted(self.other.items())}, as_source=self.sources)


def store_modified(store_path):
    """The store file's modification time as text (a date the store itself does not record)."""
    if not store_path or not os.path.exists(store_path):
        return None
    stamp = os.path.getmtime(store_path)
    return datetime.datetime.fromtimestamp(stamp, datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M UTC")
