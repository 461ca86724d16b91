"""``make demo``: the whole pipeline on the embedded default, with no downloads.

Writes the synthetic dataset if it is missing, attacks ``tiny_synthetic`` on
its validation split with the four attacks over the paper's eps list
(resumably, into results/demo/store.h5), then renders from the store a
Table A5-style table (experiments/demo_table.json), an IoU-Ratio-against-eps
figure (demo_curves.json) and a Figure A1-style perturbation figure
(demo_perturbation.json) into results/demo/, and prints where they are.
"""
import argparse
import os
import sys
import time

from caffe_attacks import experiments as E
from caffe_attacks import weights as W
from caffe_attacks.cli import run_cli
from caffe_attacks.errors import UsageError
from caffe_attacks.report import figures, tables
from caffe_attacks.runner import set_blas_threads
from caffe_attacks.store import ResultsStore
from caffe_attacks.train_tiny import MEAN_BGR, SYNTHETIC_ARGS, ensure_synthetic

# Images of the synthetic validation split (100 in all) the demo attacks by
# default: all four attacks over the paper's eight eps cost about 190 forward
# and backward passes per image, about 20 CPU-seconds for the tiny net; 12
# images stay inside the 10-minute budget on 2 busy cores (README, Demo).
DEFAULT_LIMIT = 12
DEMO_IDS = ("demo_table", "demo_curves", "demo_perturbation")
DATA_DIR = os.path.join("data", "synthetic_voc")
OUT_DIR = os.path.join("results", "demo")


def tiny_override(weights):
    """Use a caffemodel other than the embedded one (e.g. one trained by hand)."""
    if not weights:
        return None
    protocol = {"mean_bgr": list(MEAN_BGR), "resize": None, "pad": None,
                "scores_to_labels": "crop"}
    try:
        protocol = W.input_protocol("tiny_synthetic")
    except KeyError:
        pass
    return {"tiny_synthetic": {"weights": weights, "protocol": protocol}}


def run_demo(data_dir=DATA_DIR, out_dir=OUT_DIR, limit=DEFAULT_LIMIT, weights=None,
             progress=True, eps=None, experiments_dir=E.EXPERIMENTS_DIR):
    """Run and render the demo; returns (paths written, EnsureReports, table).

    eps: restrict the attacked eps (tests); None for the paper's list.
    """
    ensure_synthetic(data_dir, **SYNTHETIC_ARGS)
    store_path = os.path.join(out_dir, "store.h5")
    examples_dir = os.path.join(out_dir, "examples")
    overrides = tiny_override(weights)
    defns = [E.load(i, experiments_dir) for i in DEMO_IDS]
    if eps is not None:
        defns = [_restrict_eps(d, eps) for d in defns]
    reports = [E.ensure(d, store_path, {"synthetic": data_dir}, limit=limit, progress=progress,
                        examples_dir=examples_dir, overrides=overrides) for d in defns]
    # the images this run covered: a store that holds more (an earlier, larger
    # --limit) must not change what this table shows
    ids = next(iter(reports[0].ids.values()), None)
    paths = []
    with ResultsStore(store_path, readonly=True) as store:
        table = tables.build(defns[0], store, limit=limit, ids=ids)
        paths += tables.write(table, out_dir)
        for d in defns[1:]:
            paths += figures.render(d, store, out_dir, examples_dir=examples_dir,
                                    experiments_dir=experiments_dir, ids=ids)
    return paths, reports, table


def _restrict_eps(defn, eps):
    d = dict(defn)
    keep = [0.0] + [float(e) for e in eps]
    if isinstance(d.get("columns"), dict):
        d["columns"] = {"eps": [e for e in d["columns"]["eps"] if float(e) in keep]}
    elif "eps" in d:
        d["eps"] = [e for e in d["eps"] if float(e) in keep]
    return d


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m caffe_attacks.demo", description=__doc__)
    p.add_argument("--limit", type=int, default=DEFAULT_LIMIT,
                   help="validation images to attack (default %d of 100; 0 = all)"
                        % DEFAULT_LIMIT)
    p.add_argument("--data-dir", default=DATA_DIR, help="synthetic dataset (written if missing)")
    p.add_argument("--out", default=OUT_DIR)
    p.add_argument("--weights", default=None,
                   help="a tiny_synthetic caffemodel to use instead of the embedded one")
    p.add_argument("--blas-threads", type=int, default=1,
                   help="OpenBLAS threads for Caffe (default 1: fastest for the tiny net)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)

    def body():
        if args.limit < 0:
            raise UsageError("--limit must be >= 0")
        t0 = time.time()
        set_blas_threads(args.blas_threads)
        paths, reports, table = run_demo(args.data_dir, args.out, args.limit or None,
                                         args.weights, progress=not args.quiet)
        problems = [m.message for r in reports for m in r.missing] + \
            ["%s: %s" % f for r in reports for f in r.failed]
        for msg in dict.fromkeys(problems):
            print("error: %s" % msg, file=sys.stderr)
        print(tables.to_markdown(table))
        print("demo finished in %.0f s; outputs:" % (time.time() - t0))
        for path in paths:
            print("  %s" % path)
        return 2 if problems else 0

    return run_cli(body, resume_hint="finished images are saved: run `make demo` again to resume")


if __name__ == "__main__":
    sys.exit(main())
