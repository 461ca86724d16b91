"""Inverse class-frequency weights from a dataset's training labels (SEA's MCE-Bal).

    python -m caffe_attacks.datasets.class_weights --dataset voc --data-dir D \
        --split train --out caffe_attacks/data/class_weights_voc.json

Counts the labelled pixels of every class over the split (void 255 skipped;
Cityscapes at its native 2048x1024, not the paper's 1024x512 evaluation size),
and writes w_c = (1 / f_c) / sum_k (1 / f_k) with f_c the class's share of
the pixels, so the weights sum to 1. A class with no pixel gets weight 0 (it
never occurs as a label, so its weight is never used).
"""
import argparse
import json
import logging
import os
import sys

import numpy as np

from . import DATASET_KINDS, open_dataset
from .labels import VOID

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


def pixel_counts(dataset):
    """(C,) int64 labelled pixels per class over every sample of the dataset."""
    counts = np.zeros(dataset.num_classes, np.int64)
    for sample in dataset:
        label = sample.label[sample.label != VOID]
        counts += np.bincount(label.ravel(), minlength=dataset.num_classes)[:dataset.num_classes]
    return counts


def inverse_frequency(counts):
    """(C,) float64 weights proportional to 1 / frequency, summing to 1; 0 for absent classes."""
    counts = np.asarray(counts, np.float64)
    if counts.sum() <= 0:
        raise ValueError("no labelled pixel: cannot compute class frequencies")
    inverse = np.where(counts > 0, counts.sum() / np.where(counts > 0, counts, 1), 0.0)
    return inverse / inverse.sum()


def class_weight_table(dataset, kind, split):
    """The JSON-ready table: counts, weights and where they came from."""
    counts = pixel_counts(dataset)
    return {"format_version": FORMAT_VERSION, "dataset": kind, "split": split,
            "images": len(dataset), "num_classes": int(dataset.num_classes),
            "class_names": list(dataset.class_names), "pixel_counts": counts.tolist(),
            "weights": inverse_frequency(counts).tolist(),
            "rule": "inverse pixel frequency over the split, void skipped, normalised to sum 1"}


def load_class_weights(path):
    """(C,) float64 weights from a table written by this module."""
    with open(path) as f:
        table = json.load(f)
    weights = np.asarray(table["weights"], np.float64)
    if weights.shape != (table["num_classes"],):
        raise ValueError("%s: %d weights for %d classes"
                         % (path, weights.size, table["num_classes"]))
    return weights


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m caffe_attacks.datasets.class_weights",
        description="Inverse class-frequency weights (MCE-Bal) from training label files.")
    parser.add_argument("--dataset", choices=DATASET_KINDS, required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("--out", required=True, help="JSON file to write")
    args = parser.parse_args(argv)
    opts = {"size": None} if args.dataset == "cityscapes" else {}
    try:
        dataset = open_dataset(args.dataset, args.data_dir, args.split, **opts)
        table = class_weight_table(dataset, args.dataset, args.split)
        write_table(table, args.out)
    except (ValueError, OSError) as err:     # DatasetError is a ValueError
        print("error: %s" % err, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; nothing was written: run the same command again", file=sys.stderr)
        return 130
    print("wrote %s: %d classes from %d %s images"
          % (args.out, table["num_classes"], table["images"], args.split))
    return 0


def write_table(table, path):
    """Write the JSON table whole or not at all (a temporary file, then a rename)."""
    tmp = "%s.tmp-%d" % (path, os.getpid())
    try:
        with open(tmp, "w") as f:
            json.dump(table, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


if __name__ == "__main__":
    sys.exit(main())
