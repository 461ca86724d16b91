"""``python -m caffe_attacks.experiments table|figure|list|check NAMES``: run, then render;
``... report``: the HTML reproduction report from the stores (runs nothing).

A thin CLI: what a table or figure needs runs through
:func:`caffe_attacks.experiments.ensure` (resumably), then
:func:`caffe_attacks.report.render` writes it from the store;
:func:`caffe_attacks.report.html.write_report` writes RESULTS/report/index.html.
"""
import argparse
import os
import sys

from caffe_attacks.cli import add_executor_arguments, executor_from_args, run_cli, scale_numbers
from caffe_attacks.errors import UsageError
from caffe_attacks.experiments import (EXPERIMENTS_DIR, check_job, ensure, list_ids, load,
                                       normalize_id, plan, queries_of)
from caffe_attacks.report import render
from caffe_attacks.report.html import default_stores, write_report

RESUME_HINT = "finished images are saved: run the same command to resume"


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m caffe_attacks.experiments",
        description="Run what a supplementary table or figure needs (resumably), then render "
                    "it beside the paper's values; 'plan' prints what tables cost; 'report' writes "
                    "RESULTS/report/index.html, every table, figure and provenance from the stores "
                    "(runs nothing).")
    p.add_argument("what", choices=("table", "figure", "list", "check", "plan", "report"))
    p.add_argument("names", nargs="*", help="A5, table_A5, fig_A4 ... or 'all' "
                   "(plan: table NAMES, e.g. `plan table A5`)")
    p.add_argument("--results", default="results", help="results folder (store.h5 inside)")
    p.add_argument("--store", default=None, help="results store (default RESULTS/store.h5)")
    p.add_argument("--demo-store", default=None,
                   help="report: the demo's store (default RESULTS/demo/store.h5 when present)")
    p.add_argument("--out", default=None, help="report: output folder (default RESULTS/report)")
    p.add_argument("--voc-dir", default=None)
    p.add_argument("--cityscapes-dir", default=None)
    p.add_argument("--synthetic-dir", default=None)
    p.add_argument("--weights-dir", default="weights")
    p.add_argument("--limit", type=int, default=None, help="first N images only (partial)")
    p.add_argument("--no-run", action="store_true", help="render from the store only")
    p.add_argument("--gpu", type=int, default=None)
    p.add_argument("--experiments", default=str(EXPERIMENTS_DIR), help=argparse.SUPPRESS)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--engine", default="caffe", choices=("caffe", "torch"),
                   help="plan --measure: the engine to time")
    p.add_argument("--measure", action="store_true",
                   help="plan: time a few forward+backward passes of each net at its canvas "
                        "(random weights) and estimate the time")
    add_executor_arguments(p)
    return p


def _ids(what, names, directory):
    prefix = "table" if what == "table" else "fig"
    if names in (["all"], []):
        return list_ids(prefix, directory)
    return [normalize_id(n, prefix) for n in names]


def _one(defn, args, data_dirs, store_path, executor=None, unit_images=None):
    """Run (unless --no-run or check) and render one definition; returns its exit status."""
    status = 0
    if args.what == "check":
        for job in plan(queries_of(defn)):
            for m in check_job(job, data_dirs, args.weights_dir):
                print("missing (%s): %s" % (defn["id"], m.message))
                status = 2
        return status
    if not args.no_run:
        report = ensure(defn, store_path, data_dirs, args.weights_dir, args.limit,
                        progress=not args.quiet, gpu=args.gpu, experiments_dir=args.experiments,
                        executor=executor, unit_images=unit_images)
        for m in report.missing:
            print("missing (%s): %s" % (defn["id"], m.message), file=sys.stderr)
        for note in report.notes:
            print("note: %s" % note, file=sys.stderr)
        for what, msg in report.failed:
            print("failed (%s): %s: %s" % (defn["id"], what, msg), file=sys.stderr)
        if report.missing or report.failed:
            status = 2
    out = render(defn, store_path, args.results, limit=args.limit,
                 experiments_dir=args.experiments)
    if out.markdown is not None and not args.quiet:
        print(out.markdown)
    for path in out.paths:
        print("wrote %s" % path)
    return status


def _plan(args, data_dirs, store_path):
    """Print what each table costs (runs nothing but the timing passes of --measure)."""
    from caffe_attacks.experiments import cost
    from caffe_attacks.runner import RunOptions, image_ids, open_data
    from caffe_attacks.store import ResultsStore
    names = list(args.names)
    if names and names[0] in ("table", "figure"):
        if names.pop(0) == "figure":
            raise UsageError("plan covers tables (`plan table A5`); figures reuse their records")
    workers, unit_images = scale_numbers(args)
    workers = workers or 1
    store = ResultsStore(store_path, readonly=True) if os.path.exists(store_path) else None
    timings = {}
    try:
        for defn in [load(i, args.experiments) for i in _ids("table", names, args.experiments)]:
            costs = []
            for run in cost.table_runs(defn):
                ids = None
                data_dir = data_dirs.get(run.dataset)
                if data_dir:
                    dataset = open_data(RunOptions(dataset=run.dataset, data_dir=data_dir,
                                                   split=run.split))
                    ids = image_ids(dataset, args.limit)
                costs.append(cost.run_cost(run, store, ids, args.limit or defn.get("n_images"),
                                           unit_images))
                if args.measure:
                    for net in [run.source] + run.targets:
                        if net not in timings:
                            timings[net] = cost.measure_net(net, args.engine, gpu=args.gpu)
            print(cost.format_plan(defn["id"], costs,
                                   {n: timings[n] for c in costs
                                    for n in [c.run.source] + c.run.targets if n in timings},
                                   workers))
            print()
    finally:
        if store is not None:
            store.close()
    return 0


def _report(args):
    """Write the HTML report from the stores; runs nothing."""
    if args.names:
        raise UsageError("report takes no names (it shows every definition)")
    stores = default_stores(args.results)
    if args.store:
        stores["results"] = args.store
        if not args.demo_store and stores["demo"] == os.path.join(args.results, "store.h5"):
            stores["demo"] = args.store
    if args.demo_store:
        stores["demo"] = args.demo_store
    data_dirs = {"voc": args.voc_dir, "cityscapes": args.cityscapes_dir,
                 "synthetic": args.synthetic_dir}
    out = args.out or os.path.join(args.results, "report")
    path, report = write_report(out, stores, experiments_dir=args.experiments,
                                data_dirs=data_dirs, weights_dir=args.weights_dir)
    if not args.quiet:
        t = report.totals
        print("%d table(s): %d cell(s) within %g of the paper, %d within %g, %d further; "
              "%d measured without a paper value; %d not run; %d figure(s)"
              % (len(report.tables), t["within_1"], report.bands[0], t["within_3"],
                 report.bands[1], t["beyond_3"], t["ours_only"], t["not_run"],
                 len(report.figures)))
        for label, store_path in stores.items():
            print("%s store: %s%s" % (label, store_path,
                                      "" if os.path.exists(store_path) else " (none: paper only)"))
    print("wrote %s" % path)
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)

    def body():
        if args.limit is not None and args.limit <= 0:
            raise UsageError("LIMIT must be positive")
        if args.what == "report":
            return _report(args)
        if args.what == "list":
            for i in list_ids(directory=args.experiments):
                d = load(i, args.experiments)
                print("%-10s %-18s %s" % (i, d["kind"], d.get("title") or d.get("caption", "")))
            return 0
        data_dirs = {"voc": args.voc_dir, "cityscapes": args.cityscapes_dir,
                     "synthetic": args.synthetic_dir}
        store_path = args.store or os.path.join(args.results, "store.h5")
        if args.what == "plan":
            return _plan(args, data_dirs, store_path)
        defns = [load(i, args.experiments) for i in _ids(args.what, args.names, args.experiments)]
        executor, unit_images = (None, None) if args.no_run or args.what == "check" else \
            executor_from_args(args, args.gpu)
        status = 0
        for defn in defns:
            status = max(status, _one(defn, args, data_dirs, store_path, executor, unit_images))
        return status

    return run_cli(body, resume_hint=RESUME_HINT)


if __name__ == "__main__":
    sys.exit(main())
