"""Work units: a sweep cut into (what to build, chunk of image ids) that any process can run.

A sweep over a dataset is split into :class:`Unit` s. A unit names the image
ids of its chunk and the (configuration key, image id) pairs the store
already holds for them; a :class:`WorkSpec` says how a worker rebuilds the
dataset and the nets from nothing (it pickles: RunOptions and net labels).
:func:`run_unit` runs one unit through the pipeline and *returns* its records
(a worker never writes the store; the driver alone does, see
:func:`caffe_attacks.runner.sweep.sweep`).

The executors that send units to other processes (local worker processes,
Ray actors) live above the runner, in :mod:`caffe_attacks.experiments.executors`;
they call :func:`load_work` once per worker and :func:`run_unit` per unit,
and yield ``(unit, UnitResult)`` as units finish.
"""
import logging
from dataclasses import dataclass
from typing import FrozenSet, Optional, Tuple

from caffe_attacks.errors import UsageError
from caffe_attacks.runner.options import RunOptions
from caffe_attacks.runner.pipeline import (Target, attack_batch, make_configs, record_base,
                                           transfer_source_fields)
from caffe_attacks.runner.resolve import check_classes, open_data, resolve_model
from caffe_attacks.store import config_key

log = logging.getLogger(__name__)

# Images per unit unless the caller says otherwise: small enough that a lost
# worker costs little and the workers finish together, large enough that
# sending a unit costs nothing next to attacking it.
DEFAULT_UNIT_IMAGES = 4


@dataclass(frozen=True)
class WorkSpec:
    """How a worker rebuilds the dataset and nets of a sweep (picklable, no loaded state).

    options: the run's RunOptions (model, data, attacks, eps, engine, device).
    transfer: None for a white-box run of ``options``' model; for a transfer,
        ((source label, weights or None), ((target label, weights or None), ...)).
    """
    options: RunOptions
    transfer: Optional[tuple] = None

    def on_device(self, gpu=None, device=None):
        """The same work on another device (a Ray worker sees its one GPU as GPU 0)."""
        return WorkSpec(self.options.replace(gpu=gpu, device=device), self.transfer)


@dataclass
class Work:
    """A worker's loaded state for one WorkSpec: dataset, crafting net, targets."""
    dataset: object
    source: object
    targets: list


def load_work(spec):
    """Open the dataset and load the nets of ``spec`` (once per worker)."""
    options = spec.options
    dataset = open_data(options)
    if spec.transfer is None:
        rm = resolve_model(options)
        check_classes(rm, dataset, options.dataset)
        return Work(dataset, rm, [Target(rm, make_configs(record_base(rm, options), options))])
    (src_label, src_weights), targets = spec.transfer
    source = resolve_net(src_label, options, dataset, src_weights)
    nets = [resolve_net(label, options, dataset, w) for label, w in targets]
    return Work(dataset, source, transfer_targets(source, nets, options))


def resolve_net(label, options, dataset=None, weights=None):
    """The net ``label`` (``NAME[@VARIANT]``) under ``options``; weights: a caffemodel or None.

    dataset: when given, the net must predict its classes.
    """
    rm = resolve_model(options.replace(model=label, weights=weights, prototxt=None))
    if dataset is not None:
        check_classes(rm, dataset, options.dataset)
    return rm


def transfer_targets(source, targets, options):
    """[Target] of each target net: its white-box configurations plus ``"source"``."""
    src = transfer_source_fields(source, options)
    return [Target(t, make_configs(record_base(t, options), options, source=src))
            for t in targets]


@dataclass(frozen=True)
class Unit:
    """One chunk of a sweep: image ids and the (config key, id) pairs already stored."""
    number: int
    ids: Tuple[str, ...]
    stored: FrozenSet[tuple] = frozenset()


class RecordCollector:
    """Stands in for the store in a worker: knows what the driver holds, keeps new records."""

    def __init__(self, stored=()):
        self.stored = set(stored)
        self.images = []        # [[Record] per image], in the order they were done

    def has(self, key, image_id):
        return (key, image_id) in self.stored

    def add_image(self, records):
        records = [r for r in records if not self.has(r.key, r.image_id)]
        self.stored.update((r.key, r.image_id) for r in records)
        self.images.append(records)


def config_keys(targets):
    return [config_key(c) for t in targets for _, _, c in t.configs]


def todo_ids(ids, targets, store):
    """The ids of ``ids`` lacking any target configuration in ``store``, in order."""
    keys = config_keys(targets)
    return [i for i in ids if not all(store.has(k, i) for k in keys)]


def make_units(todo, targets, store, unit_images=DEFAULT_UNIT_IMAGES):
    """The ids still to do, cut into units of ``unit_images`` images."""
    if unit_images < 1:
        raise UsageError("--unit-images must be at least 1")
    keys = config_keys(targets)
    units = []
    for n, start in enumerate(range(0, len(todo), unit_images)):
        ids = tuple(todo[start:start + unit_images])
        stored = frozenset((k, i) for i in ids for k in keys if store.has(k, i))
        units.append(Unit(n, ids, stored))
    return units


def attack_ids(dataset, ids, source, targets, sink, options, examples=None,
               example_ids=frozenset(), on_image=None):
    """Attack ``ids`` in batches of one canvas size, recording into ``sink``.

    sink: a ResultsStore or a :class:`RecordCollector`; on_image(n) is called
    after every n images done (skipped bad samples count as done).
    """
    pending = []    # samples waiting to fill a batch of one canvas size
    tick = on_image or (lambda n: None)

    def canvas(sample):
        return source.protocol.placement(sample.image.shape[:2]).canvas_hw

    def flush():
        if pending:
            attack_batch(pending, source, targets, sink, options)
            tick(len(pending))
            pending.clear()

    for image_id in ids:
        sample = dataset.try_load(image_id)
        if sample is None:
            tick(1)
        elif options.batch_images == 1 or image_id in example_ids:
            attack_batch([sample], source, targets, sink, options,
                         examples if image_id in example_ids else None)
            tick(1)
        else:
            if pending and canvas(pending[0]) != canvas(sample):
                flush()
            pending.append(sample)
            if len(pending) == options.batch_images:
                flush()
    flush()


@dataclass
class UnitResult:
    """What a worker sends back: [[Record] per image done] and the bad samples it skipped."""
    images: list
    skipped: list


def run_unit(work, unit, options):
    """Attack one unit in this process; returns a :class:`UnitResult` (nothing written)."""
    sink = RecordCollector(unit.stored)
    before = len(work.dataset.skipped)
    attack_ids(work.dataset, list(unit.ids), work.source, work.targets, sink, options)
    return UnitResult(sink.images, list(work.dataset.skipped[before:]))
