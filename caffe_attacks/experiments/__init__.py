"""Experiments: declarative definitions of the paper's tables and figures, and what they need.

- :mod:`.definitions` loads and validates experiments/*.json and expands a
  table into cells (store queries + the paper's values);
- :mod:`.queries` finds the stored configuration answering a query;
- :mod:`.jobs` plans the runner jobs a definition needs (data, nothing run),
  checks their inputs and runs one;
- :mod:`.examples`, :mod:`.crf`, :mod:`.transfer`: the qualitative examples,
  the CRF and the multiscale/transfer experiments;
- :mod:`.ensure` runs what the store lacks (the RUNNERS table);
- ``python -m caffe_attacks.experiments`` is the CLI (:mod:`.__main__`).

Tables and figures are rendered by :mod:`caffe_attacks.report` from the store alone.
"""
from caffe_attacks.experiments.definitions import (ADAPTED_KINDS, DATA_VARIABLE,
                                                   EXPERIMENTS_DIR, FIGURE_KINDS,
                                                   FULL_SPLIT_SIZE, REPO_ROOT, TABLE_KINDS, Cell,
                                                   ExperimentError, crf_variant_query,
                                                   expand_columns, list_ids, load, normalize,
                                                   normalize_id, sweep_points, table_cells,
                                                   validate)
from caffe_attacks.experiments.ensure import KIND_RUNNERS, RUNNERS, ensure, runner_of
from caffe_attacks.experiments.examples import default_examples_dir, example_path
from caffe_attacks.experiments.jobs import (EnsureReport, Job, Missing, check_job, job_options,
                                            plan, queries_of, run_job)
from caffe_attacks.experiments.queries import config_matches, default_options, find_config

__all__ = ["ADAPTED_KINDS", "DATA_VARIABLE", "EXPERIMENTS_DIR", "FIGURE_KINDS",
           "FULL_SPLIT_SIZE", "REPO_ROOT", "TABLE_KINDS", "Cell", "ExperimentError",
           "crf_variant_query", "expand_columns", "list_ids", "load", "normalize",
           "normalize_id", "sweep_points", "table_cells", "validate", "KIND_RUNNERS", "RUNNERS",
           "ensure", "runner_of", "default_examples_dir", "example_path", "EnsureReport", "Job",
           "Missing", "check_job", "job_options", "plan", "queries_of", "run_job",
           "config_matches", "default_options", "find_config"]
