"""One definition rendered from the store: a table into RESULTS/tables, a figure into RESULTS/figures."""
import os
from dataclasses import dataclass, field
from typing import List, Optional

from caffe_attacks.experiments.definitions import TABLE_KINDS
from caffe_attacks.experiments.examples import default_examples_dir
from caffe_attacks.report import figures, tables
from caffe_attacks.store import ResultsStore


@dataclass
class Rendered:
    """Paths written, and a table's Markdown (None for a figure)."""
    paths: List[str] = field(default_factory=list)
    markdown: Optional[str] = None


def render(defn, store_path, results_dir, limit=None, experiments_dir=None):
    """Render ``defn`` from the store at ``store_path`` (read-only) into ``results_dir``.

    limit: the LIMIT the table was asked for (marks it partial).
    """
    with ResultsStore(store_path, readonly=True) as store:
        if defn["kind"] in TABLE_KINDS:
            table = tables.build(defn, store, limit=limit)
            return Rendered(tables.write(table, os.path.join(results_dir, "tables")),
                            tables.to_markdown(table))
        kwargs = {"experiments_dir": experiments_dir} if experiments_dir else {}
        return Rendered(figures.render(defn, store, os.path.join(results_dir, "figures"),
                                       examples_dir=default_examples_dir(store_path), **kwargs))
