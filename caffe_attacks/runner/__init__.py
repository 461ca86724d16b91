"""The runner: options, the model resolver, the one pipeline and the sweep over a dataset.

Imports run one way: core (attacks, store, datasets, weights, zoo, engines)
-> runner -> experiments -> report -> CLIs. See docs/DESIGN.md.
"""
from caffe_attacks.runner.options import DATASET_KINDS, RunOptions
from caffe_attacks.runner.pipeline import (Target, attack_batch, evaluate_scores, make_configs,
                                           record_base, transfer_source_fields,
                                           transferred_input)
from caffe_attacks.runner.resolve import (MemberModel, ResolvedModel, check_classes, image_ids,
                                          load_engine, open_data, parse_protocol, resolve_model,
                                          set_blas_threads)
from caffe_attacks.runner.sweep import format_table, summarize, sweep, write_summaries

__all__ = ["DATASET_KINDS", "RunOptions", "Target", "attack_batch", "evaluate_scores", "make_configs",
           "record_base", "transfer_source_fields", "transferred_input", "MemberModel",
           "ResolvedModel", "check_classes", "image_ids", "load_engine", "open_data",
           "parse_protocol", "resolve_model", "set_blas_threads", "format_table", "summarize",
           "sweep", "write_summaries"]
