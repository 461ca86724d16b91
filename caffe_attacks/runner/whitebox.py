"""A white-box run: resolve the model named by RunOptions, sweep the dataset into a store."""
from dataclasses import dataclass
from typing import Any, List

from caffe_attacks.runner import strong
from caffe_attacks.runner.examples import PanelExamples
from caffe_attacks.runner.pipeline import Target, make_configs, record_base
from caffe_attacks.runner.registry import record_options
from caffe_attacks.runner.resolve import (ResolvedModel, check_classes, image_ids, open_data,
                                          resolve_model, set_blas_threads)
from caffe_attacks.runner.sweep import summarize, sweep
from caffe_attacks.runner.units import DEFAULT_UNIT_IMAGES, WorkSpec
from caffe_attacks.store import ResultsStore


@dataclass
class WhiteBoxRun:
    """What a run covered (net, dataset, image ids, configurations) and its summary rows."""
    model: ResolvedModel
    dataset: Any
    ids: List[str]
    configs: List[tuple]
    rows: List[dict]


def run_white_box(options, store_path, progress=None, executor=None,
                  unit_images=DEFAULT_UNIT_IMAGES):
    """Attack, resumably, everything ``options`` asks for into the store at ``store_path``.

    The store is opened only once the data and the model resolved.
    progress: show a progress bar (default: not ``options.quiet``).
    executor: None attacks here; else units of ``unit_images`` images go to its
    workers and this process only writes the store (it loads the net on the
    CPU, for the records' configuration; see :func:`caffe_attacks.runner.sweep.sweep`).
    """
    dataset = open_data(options)
    set_blas_threads(options.blas_threads)
    rm = resolve_model(options if executor is None else options.replace(gpu=None, device=None))
    check_classes(rm, dataset, options.dataset)
    ids = image_ids(dataset, options.limit)
    configs = make_configs(record_base(rm, options), options)
    examples = None
    if options.save_examples:
        examples = PanelExamples(options.save_examples[0], options.save_examples[1],
                                 dataset.palette)
    with ResultsStore(store_path) as store:
        sweep(dataset, ids, rm, [Target(rm, configs)], store, options, examples=examples,
              progress=not options.quiet if progress is None else progress,
              executor=executor, spec=WorkSpec(options), unit_images=unit_images)
        if "sea" in options.attacks:
            members = {(a, e): c for a, e, c in configs}
            sea = strong.sea_configs(members, record_options(options, "sea"), options.eps, ids)
            strong.add_sea_records(store, sea, ids)
            configs = configs + sea
        rows = summarize(store, configs, ids)
    return WhiteBoxRun(rm, dataset, ids, configs, rows)
