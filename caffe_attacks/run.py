"""``python -m caffe_attacks.run``: attack a model over a dataset, resumably.

A thin CLI: argparse -> :class:`~caffe_attacks.runner.RunOptions` -> the
runner (:mod:`caffe_attacks.runner`) -> printed table. Every (configuration,
image) result goes to the store as soon as the image is done, so an
interrupted run loses at most the image in flight; re-running the same
command resumes.
"""
import argparse
import sys

from caffe_attacks import __version__
from caffe_attacks import runner
from caffe_attacks.attacks import PAPER_EPS
from caffe_attacks.cli import add_executor_arguments, executor_from_args, run_cli
from caffe_attacks.runner.registry import names as attack_names
from caffe_attacks.runner.strong import LABEL_SOURCES
from caffe_attacks.runner.whitebox import run_white_box

DEFAULTS = runner.RunOptions()


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m caffe_attacks.run",
        description="Attack a segmentation model over a dataset with the paper's attacks; "
                    "resumable (re-run the same command after an interruption).")
    m = p.add_argument_group("model")
    m.add_argument("--model", help="zoo name (see `python -m caffe_attacks.zoo list`)")
    m.add_argument("--prototxt", help="deploy definition (instead of, or overriding, --model)")
    m.add_argument("--weights", help="caffemodel (default: the manifest's file in --weights-dir)")
    m.add_argument("--weights-dir", default=DEFAULTS.weights_dir,
                   help="where caffemodels live (default: %s)" % DEFAULTS.weights_dir)
    m.add_argument("--random-init", action="store_true",
                   help="run without weights: the definition's fillers, seed 0 (Caffe's "
                        "default filler is 0); records say \"init\": \"fillers\"")
    m.add_argument("--allow-unverified", action="store_true",
                   help="run even if the weights' md5 does not match the manifest")
    m.add_argument("--input-blob")
    m.add_argument("--score-blob", help="logits blob for the attack loss")
    m.add_argument("--protocol", help="input protocol JSON (or file); default: the manifest's")
    m.add_argument("--engine", default=DEFAULTS.engine, choices=("caffe", "torch"))
    m.add_argument("--gpu", type=int, default=None, help="GPU id (CUDA builds of Caffe)")
    m.add_argument("--device", default=None, help="torch engine device: cpu, cuda, cuda:N")
    m.add_argument("--crf", action="append", metavar="KEY=VALUE", default=[],
                   help="override the net's MultiStageMeanfield (CRF) layer; repeatable. Keys: "
                        "num_iterations, theta_alpha, theta_beta, theta_gamma, "
                        "spatial_filter_weight, bilateral_filter_weight (weights: W = value x I "
                        "after the weights load), w2 (the spatial kernel weight, see "
                        "--crf-w2-mode); records carry \"crf\": {...}")
    m.add_argument("--crf-w2-mode", default=DEFAULTS.crf_w2_mode,
                   choices=("scale_learned", "replace_diagonal"),
                   help="w2 scales the loaded spatial kernel weights by w2 / the definition's "
                        "spatial_filter_weight (default; 3 in crfrnn_voc and the +crf nets, so "
                        "w2=3 is the model as published) or replaces them by w2 x I")
    m.add_argument("--blas-threads", type=int, default=None,
                   help="OpenBLAS threads for Caffe on the CPU (default: OpenBLAS's own); "
                        "1 is fastest for small nets and on a busy machine")
    d = p.add_argument_group("data")
    d.add_argument("--dataset", required=True, choices=runner.DATASET_KINDS)
    d.add_argument("--data-dir", required=True)
    d.add_argument("--split", default=DEFAULTS.split)
    d.add_argument("--limit", type=int, default=None, help="first N images only")
    d.add_argument("--cityscapes-image-dtype", default=DEFAULTS.cityscapes_image_dtype,
                   choices=runner.CITYSCAPES_IMAGE_DTYPES,
                   help="dtype of the resized Cityscapes image: float64 (default; the "
                        "authors' unrounded resize), float32, or uint8 (rounded grey levels)")
    d.add_argument("--skip-bad", action="store_true",
                   help="warn about and count bad samples instead of stopping")
    a = p.add_argument_group("attacks")
    a.add_argument("--attack", nargs="+", default=list(DEFAULTS.attacks), choices=attack_names())
    a.add_argument("--eps", nargs="+", default=list(DEFAULTS.eps),
                   help="l_inf budgets in 0..255 units (default: %s)"
                        % " ".join("%g" % e for e in PAPER_EPS))
    a.add_argument("--alpha", type=float, default=DEFAULTS.alpha,
                   help="iterative step (default %g)" % DEFAULTS.alpha)
    a.add_argument("--ifgsm-ll-target", default=DEFAULTS.ifgsm_ll_target,
                   choices=("current", "clean"),
                   help="least-likely target of Iterative FGSM II: recomputed every "
                        "iteration (authors' code) or fixed from the clean image")
    a.add_argument("--batch-eps", action="store_true",
                   help="run the eps of an iterative sweep as one batch (for GPUs)")
    a.add_argument("--batch-images", type=int, default=DEFAULTS.batch_images, metavar="N",
                   help="attack up to N images of one canvas size as a batch (for GPUs)")
    a.add_argument("--clip-to-image", action="store_true",
                   help="also clip adversarial images to valid pixel values (off in the paper's code)")
    s = p.add_argument_group("stronger attacks (pgd segpgd cospgd apgd_mce apgd_mce_bal apgd_js sea)")
    s.add_argument("--iterations", type=int, default=None,
                   help="PGD-family steps (default 100) / APGD and SEA iterations (default 300)")
    s.add_argument("--restarts", type=int, default=DEFAULTS.restarts,
                   help="PGD-family random restarts (per image the lowest accuracy is kept)")
    s.add_argument("--seed", type=int, default=DEFAULTS.seed,
                   help="random start of the PGD family; SEA's mIoU selection order")
    s.add_argument("--pgd-alpha", type=float, default=None,
                   help="PGD-family step in 0..255 units (default 2.5 eps / steps)")
    s.add_argument("--strong-no-clip", action="store_true",
                   help="project the strong attacks onto the eps-ball only (the paper's rule) "
                        "instead of the eps-ball and the valid image box")
    s.add_argument("--strong-labels", default=DEFAULTS.strong_labels,
                   choices=LABEL_SOURCES,
                   help="labels of the strong attacks' losses: the clean prediction (default, "
                        "the paper's convention) or the ground truth on the net's score grid "
                        "(void ignored; no clean-label forward)")
    s.add_argument("--apgd-track", default=DEFAULTS.apgd_track, choices=("ce", "same"),
                   help="loss APGD's step-size checks track (default plain cross-entropy)")
    s.add_argument("--class-weights", default=None,
                   help="MCE-Bal class-weight table (python -m caffe_attacks.datasets."
                        "class_weights); default: by dataset, in caffe_attacks/data")
    s.add_argument("--sea-selection", default=DEFAULTS.sea_selection,
                   choices=("miou", "accuracy"),
                   help="SEA's per-image choice: greedy lowest dataset mIoU (default) or "
                        "lowest pixel accuracy")
    o = p.add_argument_group("output")
    o.add_argument("--out", default=DEFAULTS.out, help="results store (HDF5)")
    o.add_argument("--summary", default=None,
                   help="prefix for the summary .json/.csv (default: --out without .h5)")
    o.add_argument("--save-examples", nargs=2, metavar=("DIR", "K"), default=None,
                   help="write qualitative panels for the first K images into DIR")
    o.add_argument("--quiet", action="store_true", help="no progress bar")
    add_executor_arguments(p)
    p.add_argument("--version", action="version", version="caffe_attacks %s" % __version__)
    return p


def options_from_args(args):
    """RunOptions from this CLI's parsed arguments (validated there)."""
    return runner.RunOptions(
        model=args.model, prototxt=args.prototxt, weights=args.weights,
        weights_dir=args.weights_dir, allow_unverified=args.allow_unverified,
        random_init=args.random_init, input_blob=args.input_blob, score_blob=args.score_blob,
        protocol=args.protocol,
        engine=args.engine, gpu=args.gpu, device=args.device, crf=args.crf,
        crf_w2_mode=args.crf_w2_mode, blas_threads=args.blas_threads, dataset=args.dataset,
        data_dir=args.data_dir, split=args.split, limit=args.limit, skip_bad=args.skip_bad,
        cityscapes_image_dtype=args.cityscapes_image_dtype,
        attacks=args.attack, eps=args.eps, alpha=args.alpha,
        ifgsm_ll_target=args.ifgsm_ll_target, batch_eps=args.batch_eps,
        batch_images=args.batch_images, clip_to_image=args.clip_to_image,
        iterations=args.iterations, restarts=args.restarts, seed=args.seed,
        pgd_alpha=args.pgd_alpha, strong_clip=not args.strong_no_clip,
        strong_labels=args.strong_labels,
        apgd_track=args.apgd_track, class_weights=args.class_weights,
        sea_selection=args.sea_selection, out=args.out,
        summary=args.summary, save_examples=args.save_examples, quiet=args.quiet)


def summary_meta(result, options):
    """The "meta" block of the summary files."""
    rm = result.model
    return {"version": __version__, "model": rm.name, "crf": rm.crf,
            "weights": rm.weights_path, "weights_md5": rm.weights_md5,
            "weights_verified": rm.verified, "weights_manifest_match": list(rm.manifest_match),
            "init": rm.init, "dataset": options.dataset,
            "data_dir": options.data_dir, "split": options.split, "n_images": len(result.ids),
            "partial": options.limit is not None,
            "skipped": [list(s) for s in result.dataset.skipped]}


def weights_line(rm):
    """What the records say about the weights: file and md5, and a manifest match."""
    if rm.weights_path is None:
        return "weights: none (--random-init: the definition's fillers, seed 0)"
    if rm.verified:
        note = "verified against the manifest"
    elif rm.manifest_match:
        note = "the manifest's md5 for %s" % ", ".join(rm.manifest_match)
    else:
        note = "no manifest entry has this md5"
    return "weights: %s (md5 %s, %s)" % (rm.weights_path, rm.weights_md5, note)


def main(argv=None):
    args = build_parser().parse_args(argv)

    def body():
        options = options_from_args(args)
        executor, unit_images = executor_from_args(args, options.gpu)
        result = run_white_box(options, options.out, executor=executor, unit_images=unit_images)
        meta = summary_meta(result, options)
        runner.write_summaries(result.rows, options.summary_prefix, meta)
        print(weights_line(result.model))
        print(runner.format_table(result.rows))
        if meta["skipped"]:
            print("skipped %d bad sample(s); see the warnings above" % len(meta["skipped"]))
        prefix = options.summary_prefix
        print("results: %s; summary: %s.json, %s.csv" % (options.out, prefix, prefix))
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
