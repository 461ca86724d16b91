"""``python -m caffe_attacks.transfer``: black-box transfer between nets and scales.

A thin CLI over :mod:`caffe_attacks.runner.transfer` (supplementary A4,
Tables A15-A18, Figures A7-A8): a perturbation crafted white-box on a
*source* net is evaluated on one or more *target* nets. Records go to the
same results store as the runner's; see the runner module for what a
transfer record's configuration holds.
"""
import argparse
import sys

from caffe_attacks import __version__
from caffe_attacks import runner
from caffe_attacks.attacks import PAPER_EPS
from caffe_attacks.cli import add_executor_arguments, executor_from_args, run_cli
from caffe_attacks.runner.registry import names as attack_names
from caffe_attacks.runner.transfer import resolve_net, run_transfer
from caffe_attacks.store import ResultsStore

DEFAULTS = runner.RunOptions()
# Tables A15-A18 transfer FGSM at eps 8; the figures use the paper's eps list.
TRANSFER_ATTACKS = ("fgsm",)
TRANSFER_EPS = (8.0,)
TRANSFER_OUT = "results/transfer.h5"


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m caffe_attacks.transfer",
        description="Craft adversarial perturbations on a source net and evaluate them on "
                    "target nets (black-box transfer; source = target is white-box). "
                    "Nets: NAME (zoo), NAME@SCALE (one scale of NAME, e.g. @0.5), "
                    "NAME@max / NAME@avg (scales 1, 0.75, 0.5 fused). Resumable.")
    m = p.add_argument_group("nets")
    m.add_argument("--source", required=True, help="NAME[@SCALE|@max|@avg]")
    m.add_argument("--target", required=True, nargs="+", help="one or more NAME[@VARIANT]")
    m.add_argument("--weights-dir", default=DEFAULTS.weights_dir, help="where caffemodels live")
    m.add_argument("--source-weights", help="caffemodel of the source (default: manifest)")
    m.add_argument("--target-weights", help="caffemodel of every target (default: manifest)")
    m.add_argument("--allow-unverified", action="store_true",
                   help="run even if a caffemodel's md5 does not match the manifest")
    m.add_argument("--protocol", help="input protocol JSON (or file) for every net; "
                                      "default: each net's manifest entry")
    m.add_argument("--engine", default=DEFAULTS.engine, choices=("caffe", "torch"))
    m.add_argument("--gpu", type=int, default=None, help="GPU id (CUDA builds of Caffe)")
    m.add_argument("--device", default=None, help="torch engine device")
    d = p.add_argument_group("data")
    d.add_argument("--dataset", required=True, choices=runner.DATASET_KINDS)
    d.add_argument("--data-dir", required=True)
    d.add_argument("--split", default=DEFAULTS.split)
    d.add_argument("--limit", type=int, default=None, help="first N images only")
    d.add_argument("--skip-bad", action="store_true")
    a = p.add_argument_group("attacks")
    a.add_argument("--attack", nargs="+", default=list(TRANSFER_ATTACKS), choices=attack_names())
    a.add_argument("--eps", nargs="+", default=["%g" % e for e in TRANSFER_EPS],
                   help="l_inf budgets in 0..255 units (default 8, as Tables A15-A18; "
                        "the figures use %s)" % " ".join("%g" % e for e in PAPER_EPS))
    a.add_argument("--alpha", type=float, default=DEFAULTS.alpha)
    a.add_argument("--ifgsm-ll-target", default=DEFAULTS.ifgsm_ll_target,
                   choices=("current", "clean"))
    a.add_argument("--clip-to-image", action="store_true",
                   help="clip source and target adversarial inputs to valid pixel values")
    o = p.add_argument_group("output")
    o.add_argument("--out", default=TRANSFER_OUT, help="results store (HDF5)")
    o.add_argument("--summary", default=None, help="prefix for summary .json/.csv files")
    o.add_argument("--quiet", action="store_true")
    add_executor_arguments(p)
    p.add_argument("--version", action="version", version="caffe_attacks %s" % __version__)
    return p


def options_from_args(args):
    """RunOptions shared by every net of the transfer (the nets are named apart)."""
    return runner.RunOptions(
        weights_dir=args.weights_dir, allow_unverified=args.allow_unverified,
        protocol=args.protocol, engine=args.engine, gpu=args.gpu, device=args.device,
        dataset=args.dataset, data_dir=args.data_dir, split=args.split, limit=args.limit,
        skip_bad=args.skip_bad, attacks=args.attack, eps=args.eps, alpha=args.alpha,
        ifgsm_ll_target=args.ifgsm_ll_target, clip_to_image=args.clip_to_image, out=args.out,
        summary=args.summary, quiet=args.quiet)


def main(argv=None):
    args = build_parser().parse_args(argv)

    def body():
        options = options_from_args(args)
        executor, unit_images = executor_from_args(args, options.gpu)
        dataset = runner.open_data(options)
        # with workers, this process only writes the store: its nets stay on the CPU
        local = options if executor is None else options.replace(gpu=None, device=None)
        source = resolve_net(args.source, local, dataset, args.source_weights)
        targets = [resolve_net(t, local, dataset, args.target_weights)
                   for t in runner.unique_values(args.target, "--target")]
        ids = runner.image_ids(dataset, options.limit)
        with ResultsStore(options.out) as store:
            by_target = run_transfer(dataset, ids, source, targets, store, options,
                                     progress=not options.quiet, executor=executor,
                                     unit_images=unit_images)
        rows = [dict(r, target=name) for name, rs in by_target.items() for r in rs]
        meta = {"version": __version__, "source": source.name, "targets": list(by_target),
                "dataset": options.dataset, "data_dir": options.data_dir,
                "split": options.split, "n_images": len(ids),
                "partial": options.limit is not None}
        prefix = options.summary_prefix
        runner.write_summaries(rows, prefix, meta)
        for name, rs in by_target.items():
            print("source %s -> target %s" % (source.name, name))
            print(runner.format_table(rs))
        print("results: %s; summary: %s.json, %s.csv" % (options.out, prefix, prefix))
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
