"""``python -m caffe_attacks.run``: attack a model over a dataset, resumably.

The one place that wires model, input protocol, dataset, attacks, metrics and
the results store together. Every (configuration, image) result goes to the
store as soon as the image is done, so an interrupted run loses at most the
image in flight; re-running the same command resumes.
"""
import argparse
import csv
import json
import logging
import os
import sys
import time

import numpy as np

from caffe_attacks import __version__
from caffe_attacks.attacks import (ATTACKS, PAPER_EPS, PAPER_NAMES, ImageBox, get_attack,
                                   validate_eps)
from caffe_attacks.losses import softmax
from caffe_attacks.metrics import confidence_entropy_sums, confusion_matrix
from caffe_attacks.store import Record, ResultsStore, config_key

log = logging.getLogger("caffe_attacks.run")


class UsageError(Exception):
    """A problem with the user's input: printed as one line, exit status 2."""


# --------------------------------------------------------------------------
# Wiring: model, protocol, dataset
# --------------------------------------------------------------------------
class ResolvedModel:
    """A model ready to attack, with what the records must say about it."""

    def __init__(self, model, protocol, name, weights_path, weights_md5, verified, num_classes,
                 crf=None):
        self.model = model
        self.crf = crf          # the record's "crf" field (caffe_attacks.crf), None: as defined
        self.protocol = protocol
        self.name = name
        self.weights_path = weights_path
        self.weights_md5 = weights_md5
        self.verified = verified
        self.num_classes = num_classes


def _load_engine(engine, prototxt, weights, gpu, input_blob, score_blob, device=None):
    if engine == "caffe":
        from caffe_attacks.caffe_net import CaffeNet
        return CaffeNet(prototxt, weights, gpu=gpu, input_blob=input_blob, score_blob=score_blob)
    if engine == "torch":
        try:
            from caffe_attacks.torch_net import TorchNet
        except ImportError as e:
            raise UsageError("the torch engine needs PyTorch (pip install .[torch]): %s" % e)
        return TorchNet(prototxt, weights, device=device or "cpu",
                        input_blob=input_blob, score_blob=score_blob)
    raise UsageError("unknown engine %r (caffe or torch)" % engine)


def crf_overrides(args):
    """(normalised --crf overrides, the record's "crf" field); ({}, None) without --crf."""
    items = getattr(args, "crf", None)
    if not items:
        return {}, None
    from caffe_attacks import crf
    try:
        overrides = crf.parse_overrides(items)
    except crf.CrfError as e:
        raise UsageError("bad --crf: %s" % e) from None
    mode = getattr(args, "crf_w2_mode", "scale_learned")
    return overrides, crf.record_field(overrides, mode)


def _load_net(args, prototxt, weights, input_blob, score_blob):
    """The engine's net; with --crf, its MultiStageMeanfield layers overridden."""
    def load(definition):
        return _load_engine(args.engine, definition, weights, args.gpu, input_blob, score_blob,
                            args.device)
    overrides, _ = crf_overrides(args)
    if not overrides:
        return load(prototxt)
    from caffe_attacks import crf
    try:
        return crf.load_with_overrides(load, prototxt, overrides,
                                       getattr(args, "crf_w2_mode", "scale_learned"))
    except crf.CrfError as e:
        raise UsageError("--crf: %s: %s" % (prototxt, e)) from None


def set_blas_threads(n):
    """Fix OpenBLAS's thread count; must run before Caffe (and its BLAS) is loaded."""
    if n is None:
        return
    if n < 1:
        raise UsageError("--blas-threads must be at least 1")
    if "caffe" in sys.modules:
        log.warning("Caffe is already loaded; --blas-threads has no effect")
    os.environ["OPENBLAS_NUM_THREADS"] = str(n)


def _parse_protocol(text):
    from caffe_attacks.preprocess import Protocol
    if text is None:
        return Protocol.from_dict({"mean_bgr": None, "resize": None, "pad": None,
                                   "scores_to_labels": "crop"})
    try:
        d = json.load(open(text)) if os.path.exists(text) else json.loads(text)
    except (OSError, ValueError) as e:
        raise UsageError("--protocol must be JSON or a JSON file: %s" % e)
    return Protocol.from_dict(d)


def resolve_model(args):
    """Build the model named by --model (zoo + manifest) or --prototxt/--weights."""
    from caffe_attacks import weights as W
    from caffe_attacks.preprocess import Protocol

    crf_overrides(args)     # a bad --crf fails before any file is read
    if args.model:
        from caffe_attacks import zoo
        try:
            entry = W.model_entry(args.model)
            spec = zoo.get(args.model)
        except KeyError as e:
            raise UsageError("unknown model %s" % e.args[0]) from None
        prototxt = args.prototxt or str(zoo.prototxt_path(args.model))
        if not os.path.exists(prototxt):
            raise UsageError("prototxt not found: %s (run `make prototxt`)" % prototxt)
        wpath = args.weights or str(W.weights_file(entry, args.weights_dir))
        if not os.path.exists(wpath):
            raise UsageError("weights not found: %s; get them with `make fetch-weights NAMES=%s` "
                             "(or point --weights-dir at them)" % (wpath, args.model))
        check = W.verify_file(args.model, wpath, progress=not args.quiet)
        if check.mismatch and not args.allow_unverified:
            raise UsageError("md5 of %s is %s, not the manifest's %s for %s; refusing "
                             "(--allow-unverified to run anyway)"
                             % (wpath, check.md5, entry.get("md5"), args.model))
        protocol = _parse_protocol(args.protocol) if args.protocol else \
            Protocol.from_dict(entry["input"])
        model = _load_net(args, prototxt, wpath, args.input_blob or spec.input_blob,
                          args.score_blob or spec.score_blob)
        return ResolvedModel(model, protocol, args.model, wpath, check.md5,
                             check.verified, spec.num_classes, crf=crf_overrides(args)[1])

    if not args.prototxt:
        raise UsageError("give --model NAME or --prototxt P [--weights W]")
    if not os.path.exists(args.prototxt):
        raise UsageError("prototxt not found: %s" % args.prototxt)
    md5 = None
    if args.weights:
        if not os.path.exists(args.weights):
            raise UsageError("weights not found: %s" % args.weights)
        md5 = W.md5_file(args.weights)
    model = _load_net(args, args.prototxt, args.weights, args.input_blob, args.score_blob)
    return ResolvedModel(model, _parse_protocol(args.protocol), args.prototxt, args.weights,
                         md5, False, model.num_classes, crf=crf_overrides(args)[1])


def open_data(args):
    from caffe_attacks.datasets import DatasetError, open_dataset
    if not args.data_dir:
        raise UsageError("--data-dir is required (a VOCdevkit, Cityscapes or synthetic directory)")
    if not os.path.isdir(args.data_dir):
        raise UsageError("data directory not found: %s" % args.data_dir)
    try:
        return open_dataset(args.dataset, args.data_dir, split=args.split, skip_bad=args.skip_bad)
    except DatasetError as e:
        raise UsageError(str(e)) from None


# --------------------------------------------------------------------------
# One image
# --------------------------------------------------------------------------
def evaluate_scores(scores, ctx, protocol, label, num_classes):
    """Scores on the canvas -> (confusion matrix, conf sum, entropy sum, npix, prediction)."""
    grid = protocol.scores_to_label_grid(scores, ctx)
    if grid.shape[1:] != label.shape:
        raise UsageError("prediction grid %s differs from the label %s"
                         % (grid.shape[1:], label.shape))
    pred = grid.argmax(0)
    cm = confusion_matrix(label, pred, num_classes)
    conf, ent, npix = confidence_entropy_sums(softmax(grid[None])[0])
    return cm, conf, ent, npix, pred


def attack_options(args, attack):
    """The options that change an attack's result (they enter the config key)."""
    opts = {"clip_to_image": bool(args.clip_to_image)}
    if attack in ("ifgsm", "ifgsm_ll"):
        opts["alpha"] = args.alpha
        if getattr(args, "batch_eps", False):
            # same results as the loop, but kept apart in the store: float
            # reductions in a batch may round differently on some engines
            opts["batch_eps"] = True
    if attack == "ifgsm_ll":
        opts["target"] = args.ifgsm_ll_target
    return opts


def attack_kwargs(options, box):
    """Keyword arguments of an attack function from a record's options."""
    kwargs = {"clip_to_image": box}
    for key in ("alpha", "target", "batch_eps"):
        if key in options:
            kwargs[key] = options[key]
    return kwargs


def make_configs(base, attacks, eps_list, args):
    """[(attack, eps, config)] including the clean configuration first."""
    out = [("clean", 0.0, dict(base, attack="clean", eps=0.0, options={}))]
    for a in attacks:
        for e in eps_list:
            if e == 0:
                continue
            out.append((a, e, dict(base, attack=a, eps=e, options=attack_options(args, a))))
    return out


def process_image(sample, rm, configs, store, args, examples_dir=None):
    """Attack one image with every configuration it still lacks; store the records."""
    return process_batch([sample], rm, configs, store, args, examples_dir)


def process_batch(samples, rm, configs, store, args, examples_dir=None):
    """Attack images of one canvas size as one batch; store each image's records.

    Every image gets what it would get alone (the attacks treat the rows of a
    batch independently: the summed loss's gradient for a row is that row's).
    Attack time is shared evenly over the images and eps of a call. Returns
    the number of records added.
    """
    prepared = [rm.protocol.prepare(s.image) for s in samples]
    x = np.concatenate([p[0] for p in prepared])
    ctxs = [p[1] for p in prepared]
    n_img = len(samples)

    def evaluate(scores):
        return [evaluate_scores(scores[i:i + 1], ctxs[i], rm.protocol, s.label, rm.num_classes)
                for i, s in enumerate(samples)]

    t0 = time.perf_counter()
    clean = evaluate(rm.model.forward(x))
    t_clean = (time.perf_counter() - t0) / n_img
    box = ImageBox.from_mean(rm.protocol.mean_bgr) if args.clip_to_image else None

    records = [[] for _ in samples]
    shown = [[] for _ in samples]
    for attack, e, config in configs:
        if attack == "clean":
            for i, s in enumerate(samples):
                if not store.has(config_key(config), s.id):
                    cm, conf, ent, npix, _ = clean[i]
                    records[i].append(Record(config, s.id, cm, cm, conf, ent, npix, 0.0, t_clean))
    by_attack = {}
    for attack, e, config in configs:
        if attack != "clean" and (examples_dir or any(
                not store.has(config_key(config), s.id) for s in samples)):
            by_attack.setdefault(attack, []).append((e, config))
    for attack, items in by_attack.items():
        fn = get_attack(attack)
        eps = [e for e, _ in items]
        t0 = time.perf_counter()
        advs = fn(rm.model, x, eps, **attack_kwargs(items[0][1]["options"], box))
        per_record = (time.perf_counter() - t0) / (len(eps) * n_img)
        for (e, config), x_adv in zip(items, advs):
            t1 = time.perf_counter()
            adv = evaluate(rm.model.forward(x_adv))
            t_eval = (time.perf_counter() - t1) / n_img
            for i, s in enumerate(samples):
                cm, c_sum, e_sum, n, pred = adv[i]
                records[i].append(Record(config, s.id, clean[i][0], cm, c_sum, e_sum, n,
                                         float(np.abs(x_adv[i] - x[i]).max()),
                                         per_record + t_eval))
                if examples_dir:
                    shown[i].append((attack, e, x_adv[i:i + 1], pred))
    for i, s in enumerate(samples):
        store.add_image(records[i])
        if examples_dir:
            save_examples(examples_dir, s, rm, x[i:i + 1], ctxs[i], clean[i][4], shown[i])
    return sum(len(r) for r in records)


def save_examples(out_dir, sample, rm, x, ctx, pred_clean, shown):
    """Clean image, perturbation (Fig. A1 style), adversarial image, both predictions."""
    from caffe_attacks.visualize import (bgr_to_rgb_uint8, colorize, perturbation_image,
                                         save_panel)
    palette = rm.palette
    os.makedirs(out_dir, exist_ok=True)
    clean_rgb = bgr_to_rgb_uint8(sample.image)
    for attack, e, x_adv, pred in shown:
        delta = rm.protocol.input_to_image(x_adv - x, ctx)
        if rm.protocol.mean_bgr is not None:
            delta = delta - np.asarray(rm.protocol.mean_bgr, np.float32)
        adv_img = rm.protocol.input_to_image(x_adv, ctx)
        panels = [clean_rgb, perturbation_image(delta, rm.protocol.mean_bgr, eps=e),
                  bgr_to_rgb_uint8(adv_img), colorize(pred_clean, palette), colorize(pred, palette)]
        titles = ["image %s" % sample.id, "perturbation x%.3g + mean" % (127.5 / e),
                  "adversarial, eps=%g" % e, "clean prediction",
                  "%s prediction" % PAPER_NAMES[attack]]
        save_panel(os.path.join(out_dir, "%s_%s_eps%g.png" % (sample.id, attack, e)),
                   panels, titles)


# --------------------------------------------------------------------------
# The whole run
# --------------------------------------------------------------------------
def run(rm, dataset, store, base, attacks, eps_list, args, ids, progress=True):
    """Process every id (resuming), then return the summary rows."""
    from tqdm import tqdm
    configs = make_configs(base, attacks, eps_list, args)
    keys = [config_key(c) for _, _, c in configs]
    n_examples = args.save_examples[1] if args.save_examples else 0
    examples_dir = args.save_examples[0] if args.save_examples else None

    def done(i):
        return all(store.has(k, i) for k in keys)

    todo = [i for i in ids if not done(i)]
    example_ids = set(ids[:n_examples])
    if examples_dir:
        todo = sorted(set(todo) | {i for i in example_ids if not _examples_exist(examples_dir, i)},
                      key=ids.index)
    bar = tqdm(total=len(ids), initial=len(ids) - len(todo), unit="img",
               desc=str(base["model"])[:24], disable=not progress, dynamic_ncols=True)
    batch_size = getattr(args, "batch_images", 1) or 1
    pending = []    # samples waiting to fill a batch of one canvas size

    def flush():
        if pending:
            process_batch(pending, rm, configs, store, args)
            bar.update(len(pending))
            pending.clear()

    for image_id in todo:
        sample = dataset.try_load(image_id)
        if sample is None:
            bar.update(1)
        elif batch_size == 1 or image_id in example_ids:
            process_image(sample, rm, configs, store, args,
                          examples_dir if image_id in example_ids else None)
            bar.update(1)
        else:
            if pending and rm.protocol.placement(pending[0].image.shape[:2]).canvas_hw != \
                    rm.protocol.placement(sample.image.shape[:2]).canvas_hw:
                flush()
            pending.append(sample)
            if len(pending) == batch_size:
                flush()
    flush()
    bar.close()
    return summarize(store, configs, ids)


def _examples_exist(examples_dir, image_id):
    return any(f.startswith(image_id + "_") for f in os.listdir(examples_dir)) \
        if os.path.isdir(examples_dir) else False


def summarize(store, configs, ids):
    rows = []
    for attack, e, config in configs:
        s = store.summary(config_key(config), ids=ids)
        if s is None:
            continue
        s = {k: v for k, v in s.items() if k != "ids"}
        rows.append({"attack": attack, "eps": e, **s})
    return rows


def format_table(rows):
    """Attack x eps table of mIoU (%), IoU Ratio, confidence and entropy."""
    head = "%-18s %6s %7s %9s %6s %7s %7s" % ("attack", "eps", "mIoU%", "IoU ratio",
                                              "conf", "entropy", "images")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append("%-18s %6g %7.1f %9.3f %6.3f %7.3f %7d" % (
            PAPER_NAMES.get(r["attack"], r["attack"]), r["eps"], 100 * r["miou"],
            r["iou_ratio"], r["confidence"], r["entropy"], r["n_images"]))
    return "\n".join(lines)


def write_summaries(rows, prefix, meta):
    with open(prefix + ".json", "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=2, default=float)
    fields = ["attack", "eps", "miou", "miou_clean", "iou_ratio", "pixel_accuracy",
              "confidence", "entropy", "max_delta", "n_images", "seconds"]
    with open(prefix + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def prepare(args, model_name=None):
    """Dataset, model, image ids and the base record config for parsed `args`.

    model_name: the name records carry (default: --model, or the prototxt path).
    """
    dataset = open_data(args)
    set_blas_threads(args.blas_threads)
    rm = resolve_model(args)
    rm.palette = dataset.palette
    if dataset.num_classes != rm.num_classes:
        raise UsageError("%s predicts %d classes but the %s dataset has %d"
                         % (model_name or rm.name, rm.num_classes, args.dataset,
                            dataset.num_classes))
    ids = list(dataset.ids[:args.limit] if args.limit else dataset.ids)
    base = {"model": model_name or rm.name, "weights_md5": rm.weights_md5,
            "dataset": args.dataset, "split": args.split, "protocol": rm.protocol.to_dict(),
            "engine": args.engine, "score_blob": getattr(rm.model, "score_blob", None)}
    if rm.crf:
        base["crf"] = rm.crf
    return dataset, rm, ids, base


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m caffe_attacks.run",
        description="Attack a segmentation model over a dataset with the paper's attacks; "
                    "resumable (re-run the same command after an interruption).")
    m = p.add_argument_group("model")
    m.add_argument("--model", help="zoo name (see `python -m caffe_attacks.zoo list`)")
    m.add_argument("--prototxt", help="deploy definition (instead of, or overriding, --model)")
    m.add_argument("--weights", help="caffemodel (default: the manifest's file in --weights-dir)")
    m.add_argument("--weights-dir", default="weights", help="where caffemodels live (default: weights)")
    m.add_argument("--allow-unverified", action="store_true",
                   help="run even if the weights' md5 does not match the manifest")
    m.add_argument("--input-blob")
    m.add_argument("--score-blob", help="logits blob for the attack loss")
    m.add_argument("--protocol", help="input protocol JSON (or file); default: the manifest's")
    m.add_argument("--engine", default="caffe", choices=("caffe", "torch"))
    m.add_argument("--gpu", type=int, default=None, help="GPU id (CUDA builds of Caffe)")
    m.add_argument("--device", default=None, help="torch engine device: cpu, cuda, cuda:N")
    m.add_argument("--crf", action="append", metavar="KEY=VALUE",
                   help="override the net's MultiStageMeanfield (CRF) layer; repeatable. Keys: "
                        "num_iterations, theta_alpha, theta_beta, theta_gamma, "
                        "spatial_filter_weight, bilateral_filter_weight (weights: W = value x I "
                        "after the weights load), w2 (the spatial kernel weight, see "
                        "--crf-w2-mode); records carry \"crf\": {...}")
    m.add_argument("--crf-w2-mode", default="scale_learned",
                   choices=("scale_learned", "replace_diagonal"),
                   help="w2 scales the loaded spatial kernel weights by w2 / the definition's "
                        "spatial_filter_weight (default; 3 in crfrnn_voc and the +crf nets, so "
                        "w2=3 is the model as published) or replaces them by w2 x I")
    m.add_argument("--blas-threads", type=int, default=None,
                   help="OpenBLAS threads for Caffe on the CPU (default: OpenBLAS's own); "
                        "1 is fastest for small nets and on a busy machine")
    d = p.add_argument_group("data")
    d.add_argument("--dataset", required=True, choices=("voc", "cityscapes", "synthetic"))
    d.add_argument("--data-dir", required=True)
    d.add_argument("--split", default="val")
    d.add_argument("--limit", type=int, default=None, help="first N images only")
    d.add_argument("--skip-bad", action="store_true",
                   help="warn about and count bad samples instead of stopping")
    a = p.add_argument_group("attacks")
    a.add_argument("--attack", nargs="+", default=list(ATTACKS), choices=ATTACKS)
    a.add_argument("--eps", nargs="+", default=list(PAPER_EPS),
                   help="l_inf budgets in 0..255 units (default: %s)" % " ".join("%g" % e for e in PAPER_EPS))
    a.add_argument("--alpha", type=float, default=1.0, help="iterative step (default 1)")
    a.add_argument("--ifgsm-ll-target", default="current", choices=("current", "clean"),
                   help="least-likely target of Iterative FGSM II: recomputed every "
                        "iteration (authors' code) or fixed from the clean image")
    a.add_argument("--batch-eps", action="store_true",
                   help="run the eps of an iterative sweep as one batch (for GPUs)")
    a.add_argument("--batch-images", type=int, default=1, metavar="N",
                   help="attack up to N images of one canvas size as a batch (for GPUs)")
    a.add_argument("--clip-to-image", action="store_true",
                   help="also clip adversarial images to valid pixel values (off in the paper's code)")
    o = p.add_argument_group("output")
    o.add_argument("--out", default="results/results.h5", help="results store (HDF5)")
    o.add_argument("--summary", default=None,
                   help="prefix for the summary .json/.csv (default: --out without .h5)")
    o.add_argument("--save-examples", nargs=2, metavar=("DIR", "K"), default=None,
                   help="write qualitative panels for the first K images into DIR")
    o.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--version", action="version", version="caffe_attacks %s" % __version__)
    return p


def validated_eps_and_limit(args):
    """The --eps list, checked, after checking --limit (UsageError on bad values)."""
    if args.limit is not None and args.limit <= 0:
        raise UsageError("--limit must be positive")
    batch = getattr(args, "batch_images", 1)
    if batch is not None and batch < 1:
        raise UsageError("--batch-images must be at least 1")
    if batch and batch > 1 and getattr(args, "batch_eps", False):
        raise UsageError("--batch-eps and --batch-images cannot be combined "
                         "(an eps batch holds one image)")
    try:
        return validate_eps(args.eps)
    except ValueError as e:
        raise UsageError("bad --eps: %s" % e) from None


def cli(body):
    """Run a CLI body: one 'error: ...' line and exit 2 for bad input, 130 on Ctrl-C."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from caffe_attacks.datasets import DatasetError
    try:
        return body()
    except KeyboardInterrupt:
        print("\ninterrupted; finished images are saved — run the same command to resume",
              file=sys.stderr)
        return 130
    except (UsageError, FileNotFoundError, DatasetError, ValueError) as e:
        print("error: %s" % e, file=sys.stderr)
        return 2
    except KeyError as e:  # unknown names; the message is the first argument
        print("error: %s" % (e.args[0] if e.args else e), file=sys.stderr)
        return 2


def main(argv=None):
    args = build_parser().parse_args(argv)

    def body():
        if args.save_examples:
            try:
                args.save_examples = (args.save_examples[0], int(args.save_examples[1]))
            except ValueError:
                raise UsageError("--save-examples DIR K: K must be an integer") from None
        eps_list = validated_eps_and_limit(args)
        dataset, rm, ids, base = prepare(args)
        prefix = args.summary or (args.out[:-3] if args.out.endswith(".h5") else args.out)
        with ResultsStore(args.out) as store:
            rows = run(rm, dataset, store, base, args.attack, eps_list, args, ids,
                       progress=not args.quiet)
        meta = {"version": __version__, "model": rm.name, "crf": rm.crf,
                "weights": rm.weights_path,
                "weights_md5": rm.weights_md5, "weights_verified": rm.verified,
                "dataset": args.dataset, "data_dir": args.data_dir, "split": args.split,
                "n_images": len(ids), "partial": args.limit is not None,
                "skipped": [list(s) for s in getattr(dataset, "skipped", [])]}
        write_summaries(rows, prefix, meta)
        print(format_table(rows))
        if meta["skipped"]:
            print("skipped %d bad sample(s); see the warnings above" % len(meta["skipped"]))
        print("results: %s; summary: %s.json, %s.csv" % (args.out, prefix, prefix))
        return 0

    return cli(body)


if __name__ == "__main__":
    sys.exit(main())
