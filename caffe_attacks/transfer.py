"""``python -m caffe_attacks.transfer``: black-box transfer between nets and scales.

A perturbation is crafted white-box on a *source* net and added to the input
of one or more *target* nets (supplementary A4, Tables A15-A18, Figures
A7-A8). Nets are named ``NAME[@VARIANT]`` (:func:`caffe_attacks.zoo.
multiscale.parse_member`): ``deeplabv2_resnet101_msc_voc@0.5`` is the 50 %
member of DeepLab's multiscale net, ``fcn8s_vgg_voc_authors@max`` FCN-8s
made multiscale at test time.

Where source and target share the input canvas (same protocol and placement,
e.g. all scales of one net: the resizing happens inside the nets) the target
sees exactly the source's adversarial input. Otherwise the perturbation goes
through image space with :meth:`Protocol.map_delta` (crop the image
rectangle, resize to the image, place as the target places an image) and is
added to the target's clean input; see docs/FIDELITY.md, "Multiscale and
transfer".

Records go to the same results store as the runner's. A transfer record's
configuration is the target's white-box configuration plus ``"source"`` (the
source net's label, weights md5, protocol and score blob); the clean record
of a target carries no source (it does not depend on one) and so is shared
with the runner's. A run from a net to itself therefore reproduces the
white-box numbers under a different key.
"""
import argparse
import logging
import os
import sys
import tempfile
import time

import numpy as np

from caffe_attacks import __version__
from caffe_attacks.attacks import ATTACKS, PAPER_EPS, ImageBox, get_attack
from caffe_attacks.run import (ResolvedModel, UsageError, attack_kwargs, attack_options, cli,
                               evaluate_scores, format_table, open_data,
                               validated_eps_and_limit, write_summaries)
from caffe_attacks.store import Record, ResultsStore, config_key

log = logging.getLogger("caffe_attacks.transfer")


# --------------------------------------------------------------------------
# Nets
# --------------------------------------------------------------------------
def resolve_endpoint(text, args, weights=None):
    """Load the net named ``text`` (``NAME[@VARIANT]``) as a ResolvedModel.

    Weights: ``weights`` if given, else the manifest's file under
    ``args.weights_dir`` (md5-checked as the runner does). Protocol:
    ``args.protocol`` (JSON) if given, else the manifest's. The ResolvedModel
    gains ``member`` (a :class:`~caffe_attacks.zoo.multiscale.Member`).
    """
    from caffe_attacks import weights as W
    from caffe_attacks import zoo
    from caffe_attacks.preprocess import Protocol
    from caffe_attacks.run import _load_engine, _parse_protocol
    from caffe_attacks.zoo.multiscale import parse_member

    try:
        member = parse_member(text)
    except ValueError as e:
        raise UsageError(str(e)) from None
    spec = zoo.get(member.zoo_name)
    try:
        entry = W.model_entry(member.zoo_name)
    except KeyError:
        entry = None
    if weights is None:
        if entry is None:
            raise UsageError("%s has no manifest entry; give its caffemodel with "
                             "--source-weights / --target-weights" % member.zoo_name)
        weights = str(W.weights_file(entry, args.weights_dir))
        if not os.path.exists(weights):
            raise UsageError("weights not found: %s; get them with `make fetch-weights NAMES=%s` "
                             "(or point --weights-dir at them)" % (weights, member.zoo_name))
    elif not os.path.exists(weights):
        raise UsageError("weights not found: %s" % weights)
    if entry is not None:
        check = W.verify_file(member.zoo_name, weights, progress=not args.quiet)
        if check.mismatch and not args.allow_unverified:
            raise UsageError("md5 of %s is %s, not the manifest's %s for %s; refusing "
                             "(--allow-unverified to run anyway)"
                             % (weights, check.md5, entry.get("md5"), member.zoo_name))
        md5, verified = check.md5, check.verified
    else:
        md5, verified = W.md5_file(weights), False
    if args.protocol:
        protocol = _parse_protocol(args.protocol)
    elif entry is not None:
        protocol = Protocol.from_dict(entry["input"])
    else:
        raise UsageError("%s has no manifest entry; give --protocol" % member.zoo_name)

    if member.generated:
        def load(prototxt, score_blob):
            return _load_engine(args.engine, prototxt, weights, args.gpu, spec.input_blob,
                                score_blob, getattr(args, "device", None))
        model = MemberModel(member, load)
        model.build(_canvas_hw(protocol, spec))   # build (and fail) now, not mid-run
    else:
        prototxt = str(zoo.prototxt_path(member.zoo_name))
        if not os.path.exists(prototxt):
            raise UsageError("prototxt not found: %s (run `make prototxt`)" % prototxt)
        model = _load_engine(args.engine, prototxt, weights, args.gpu, spec.input_blob,
                             spec.score_blob, getattr(args, "device", None))
    rm = ResolvedModel(model, protocol, member.label, weights, md5, verified, spec.num_classes)
    rm.member = member
    return rm


def _canvas_hw(protocol, spec):
    return tuple(protocol.canvas) if protocol.canvas else tuple(spec.reference_input)


class MemberModel:
    """A generated net (``NAME@VARIANT``) as a model, built per input canvas size.

    Its score-resizing Interp layers have sizes fixed at generation, so an
    input of another size gets its own net (built once, cached). Implements
    the model protocol of docs/DESIGN.md.

    Parameters
    ----------
    member : caffe_attacks.zoo.multiscale.Member
    load : callable (prototxt path, score blob) -> model (e.g. a CaffeNet with weights)
    """

    def __init__(self, member, load):
        self.member = member
        self._load = load
        self._nets = {}
        self.score_blob = None

    def build(self, hw):
        """The net for canvas (H, W), built on first use; sets ``score_blob``."""
        from caffe_attacks.zoo.multiscale import member_net
        hw = tuple(int(v) for v in hw)
        if hw not in self._nets:
            text, ms = member_net(self.member, input_hw=hw)
            with tempfile.NamedTemporaryFile("w", suffix=".prototxt", delete=False) as f:
                f.write(text)
                path = f.name
            try:
                self._nets[hw] = self._load(path, ms.score_blob)
            finally:
                os.unlink(path)
            self.score_blob = ms.score_blob
        return self._nets[hw]

    @property
    def num_classes(self):
        return next(iter(self._nets.values())).num_classes

    def forward(self, x):
        return self.build(np.shape(x)[2:]).forward(x)

    def input_gradient(self, x, dscores):
        return self.build(np.shape(x)[2:]).input_gradient(x, dscores)


def net_config(rm, engine="caffe"):
    """What a record says about one net (the runner's fields, plus the member's)."""
    d = {"model": rm.name, "weights_md5": rm.weights_md5, "protocol": rm.protocol.to_dict(),
         "engine": engine, "score_blob": getattr(rm.model, "score_blob", None)}
    member = getattr(rm, "member", None)
    if member is not None and member.generated:
        d["member"] = member.describe()
    return d


def make_transfer_configs(source, targets, attacks, eps_list, args, dataset, split):
    """{target index: [(attack, eps, config)]}, the clean configuration first.

    A target's configurations are the runner's white-box ones for that target
    (``run.make_configs`` fields) with ``"source"`` added to every attacked one.
    """
    src = net_config(source, args.engine)
    out = {}
    for t, target in enumerate(targets):
        base = dict(net_config(target, args.engine), dataset=dataset, split=split)
        configs = [("clean", 0.0, dict(base, attack="clean", eps=0.0, options={}))]
        for a in attacks:
            for e in eps_list:
                if e == 0:
                    continue
                configs.append((a, e, dict(base, attack=a, eps=e,
                                           options=attack_options(args, a), source=src)))
        out[t] = configs
    return out


# --------------------------------------------------------------------------
# Delta mapping
# --------------------------------------------------------------------------
def shares_canvas(src_protocol, ctx_src, dst_protocol, ctx_dst):
    """True when both nets receive the image on the very same canvas."""
    return src_protocol == dst_protocol and ctx_src == ctx_dst


def transferred_input(x_src, x_adv, ctx_src, src_protocol, x_dst, ctx_dst, dst_protocol,
                      clip_to_image=None):
    """The target's adversarial input for a source's ``x_adv``.

    Parameters
    ----------
    x_src, x_adv : (1, 3, H_s, W_s) float32, the source's clean and adversarial inputs
    x_dst : (1, 3, H_t, W_t) float32, the target's clean input
    ctx_src, ctx_dst : Placements of the image under the two protocols
    clip_to_image : ImageBox of the target, optional

    Returns
    -------
    (1, 3, H_t, W_t) float32: ``x_adv`` itself on a shared canvas (bit-exact:
    the white-box input), else ``x_dst + map_delta(x_adv - x_src)``.
    """
    if shares_canvas(src_protocol, ctx_src, dst_protocol, ctx_dst):
        out = np.array(x_adv, dtype=np.float32, copy=True)
    else:
        delta = src_protocol.map_delta(np.asarray(x_adv, np.float32) - x_src, ctx_src,
                                       dst_protocol, ctx_dst)
        out = (x_dst + delta).astype(np.float32)
    if clip_to_image is not None:
        out = np.clip(out, clip_to_image.lo, clip_to_image.hi).astype(np.float32)
    return out


# --------------------------------------------------------------------------
# One image, the whole run
# --------------------------------------------------------------------------
def transfer_image(sample, source, targets, configs, store, args):
    """Craft on ``source`` once per (attack, eps), evaluate on every target; store.

    Parameters
    ----------
    sample : datasets Sample (id, image, label)
    source : ResolvedModel
    targets : list of ResolvedModel
    configs : from :func:`make_transfer_configs`
    store : ResultsStore

    Returns
    -------
    int, the number of records added
    """
    clip = bool(args.clip_to_image)
    x_s, ctx_s = source.protocol.prepare(sample.image)
    prepared, records = [], []
    for t, target in enumerate(targets):
        x_t, ctx_t = target.protocol.prepare(sample.image)
        t0 = time.perf_counter()
        cm_clean, conf, ent, npix, _ = evaluate_scores(
            target.model.forward(x_t), ctx_t, target.protocol, sample.label, target.num_classes)
        t_clean = time.perf_counter() - t0
        prepared.append((x_t, ctx_t, cm_clean))
        attack, _, config = configs[t][0]
        if attack == "clean" and not store.has(config_key(config), sample.id):
            records.append(Record(config, sample.id, cm_clean, cm_clean, conf, ent, npix,
                                  0.0, t_clean))

    # (attack, options) -> {eps: [(target index, config)]} still missing
    todo = {}
    for t, items in configs.items():
        for attack, e, config in items:
            if attack != "clean" and not store.has(config_key(config), sample.id):
                key = (attack, config_key(config["options"]))
                todo.setdefault(key, (config["options"], {}))[1].setdefault(e, []).append(
                    (t, config))
    box_s = ImageBox.from_mean(source.protocol.mean_bgr) if clip else None
    for (attack, _), (options, by_eps) in todo.items():
        eps = sorted(by_eps)
        t0 = time.perf_counter()
        advs = get_attack(attack)(source.model, x_s, eps, **attack_kwargs(options, box_s))
        per_eps = (time.perf_counter() - t0) / len(eps)
        for e, x_adv in zip(eps, advs):
            for t, config in by_eps[e]:
                target = targets[t]
                x_t, ctx_t, cm_clean = prepared[t]
                t1 = time.perf_counter()
                box_t = ImageBox.from_mean(target.protocol.mean_bgr) if clip else None
                x_t_adv = transferred_input(x_s, x_adv, ctx_s, source.protocol, x_t, ctx_t,
                                            target.protocol, box_t)
                cm, c_sum, e_sum, n, _ = evaluate_scores(
                    target.model.forward(x_t_adv), ctx_t, target.protocol, sample.label,
                    target.num_classes)
                records.append(Record(config, sample.id, cm_clean, cm, c_sum, e_sum, n,
                                      float(np.abs(x_t_adv - x_t).max()),
                                      per_eps + time.perf_counter() - t1))
    store.add_image(records)
    return len(records)


def run_transfer(source, targets, dataset, store, attacks, eps_list, args, ids, split="val",
                 progress=True):
    """Process every image id (resuming); return {target label: summary rows}.

    ``args`` carries the attack options (alpha, ifgsm_ll_target,
    clip_to_image), ``engine`` and ``dataset`` (the kind, for the records).
    """
    from tqdm import tqdm
    configs = make_transfer_configs(source, targets, attacks, eps_list, args, args.dataset,
                                    split)
    keys = [config_key(c) for items in configs.values() for _, _, c in items]
    todo = [i for i in ids if not all(store.has(k, i) for k in keys)]
    bar = tqdm(total=len(ids), initial=len(ids) - len(todo), unit="img",
               desc=("%s->" % source.name)[:24], disable=not progress, dynamic_ncols=True)
    for image_id in todo:
        sample = dataset.try_load(image_id)
        if sample is not None:
            transfer_image(sample, source, targets, configs, store, args)
        bar.update(1)
    bar.close()
    return {targets[t].name: summarize(store, items, ids) for t, items in configs.items()}


def summarize(store, configs, ids):
    """Summary rows (attack, eps, the store's summary) of one target's configurations."""
    rows = []
    for attack, e, config in configs:
        s = store.summary(config_key(config), ids=ids)
        if s is not None:
            rows.append({"attack": attack, "eps": e,
                         "source": (config.get("source") or {}).get("model"),
                         **{k: v for k, v in s.items() if k != "ids"}})
    return rows


# --------------------------------------------------------------------------
# Experiments: Tables A13-A18, Figures A6-A8 (and Figure A12's transfer panel)
# --------------------------------------------------------------------------
def experiment_runs(defn):
    """The transfer runs a multiscale/transfer definition needs.

    Parameters
    ----------
    defn : a multiscale_clean, transfer_matrix or transfer_curves definition
        (raw, or normalised by experiments.normalize, which keeps it as "original")

    Returns
    -------
    list of (source label or None, [target labels], attacks, eps): one run per
    source, every target at once (its diagonal, source = target, is the
    white-box cell); source None: clean records only.
    """
    d = defn.get("original", defn)
    if d["kind"] == "multiscale_clean":
        return [(None, list(d["models"]), [], [])]
    eps = d["eps"] if isinstance(d["eps"], list) else [d["eps"]]
    eps = [float(e) for e in eps if e]
    if d["kind"] == "transfer_curves" and d.get("white_box_only"):
        return [(t, [t], list(d["attacks"]), eps) for t in d["targets"]]
    return [(s, list(d["targets"]), list(d["attacks"]), eps) for s in d["sources"]]


def missing_inputs(labels, dataset, split, context):
    """experiments.Missing entries for the nets ``labels`` on ``dataset`` (empty: can run)."""
    from caffe_attacks import experiments as E
    from caffe_attacks.zoo.multiscale import parse_member
    out, seen = [], set()
    for label in labels:
        try:
            zoo_name = parse_member(label).zoo_name
        except ValueError as e:
            out.append(E.Missing(label, str(e)))
            continue
        for m in E.check_job(E.Job(zoo_name, dataset, split), context.get("data_dirs"),
                             context.get("weights_dir", "weights")):
            # nets that share a caffemodel (NAME and NAME+crf) name it once
            key = _weights_file(zoo_name, context) if m.what.startswith("weights:") else m.what
            if key not in seen:
                seen.add(key)
                out.append(m)
    return out


def _weights_file(zoo_name, context):
    from caffe_attacks import weights as W
    return str(W.weights_file(W.model_entry(zoo_name), context.get("weights_dir", "weights")))


class ExperimentSession:
    """Runs transfer jobs into one store for an experiment; nets are loaded once.

    context: as experiments.ensure gives it (store_path, data_dirs,
    weights_dir, limit, progress, gpu).
    """

    def __init__(self, dataset, split, context):
        from caffe_attacks import experiments as E
        self.context = context
        argv = ["--source", "-", "--target", "-", "--dataset", dataset, "--data-dir",
                str(E.data_dir_for(dataset, context.get("data_dirs"))), "--split", split,
                "--weights-dir", str(context.get("weights_dir", "weights")),
                "--out", str(context["store_path"])]
        if context.get("gpu") is not None:
            argv += ["--gpu", str(context["gpu"])]
        self.args = build_parser().parse_args(argv)
        self.args.quiet = not context.get("progress", True)
        self.split = split
        self.dataset = open_data(self.args)
        limit = context.get("limit")
        self.ids = list(self.dataset.ids[:limit] if limit else self.dataset.ids)
        self._nets = {}

    def net(self, label):
        if label not in self._nets:
            rm = resolve_endpoint(label, self.args)
            if rm.num_classes != self.dataset.num_classes:
                raise UsageError("%s predicts %d classes but the %s dataset has %d"
                                 % (label, rm.num_classes, self.args.dataset,
                                    self.dataset.num_classes))
            self._nets[label] = rm
        return self._nets[label]

    def run(self, source, targets, attacks, eps):
        """One transfer run (resumable); source None: the targets' clean records only."""
        nets = [self.net(t) for t in targets]
        src = self.net(source) if source else nets[0]
        with ResultsStore(self.context["store_path"]) as store:
            run_transfer(src, nets, self.dataset, store, list(attacks), list(eps), self.args,
                         self.ids, split=self.split,
                         progress=self.context.get("progress", True))


def describe_run(source, targets, attacks, eps):
    if source is None:
        return "clean %s" % ", ".join(targets)
    return "%s -> %s (%s at eps %s)" % (source, ", ".join(targets), ", ".join(attacks),
                                         " ".join("%g" % e for e in eps))


def run_experiment(defn, context):
    """experiments.ensure's runner for multiscale_clean, transfer_matrix and transfer_curves.

    Runs (resumably, into context["store_path"]) every transfer the definition
    needs; returns an experiments.EnsureReport (missing weights or data are
    listed there, nothing raises for them).
    """
    from caffe_attacks import experiments as E
    report = E.EnsureReport()
    d = defn.get("original", defn)
    split = d.get("split", "val")
    runs = experiment_runs(d)
    labels = sorted({n for s, ts, _, _ in runs for n in ([s] if s else []) + ts})
    report.missing = missing_inputs(labels, d["dataset"], split, context)
    if report.missing:
        return report
    try:
        session = ExperimentSession(d["dataset"], split, context)
    except UsageError as e:
        report.failed.append((d["id"], str(e)))
        return report
    for source, targets, attacks, eps in runs:
        what = describe_run(source, targets, attacks, eps)
        try:
            session.run(source, targets, attacks, eps)
            report.ran.append(what)
        except UsageError as e:
            report.failed.append((what, str(e)))
    return report


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------
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
    m.add_argument("--weights-dir", default="weights", help="where caffemodels live")
    m.add_argument("--source-weights", help="caffemodel of the source (default: manifest)")
    m.add_argument("--target-weights", help="caffemodel of every target (default: manifest)")
    m.add_argument("--allow-unverified", action="store_true",
                   help="run even if a caffemodel's md5 does not match the manifest")
    m.add_argument("--protocol", help="input protocol JSON (or file) for every net; "
                                      "default: each net's manifest entry")
    m.add_argument("--engine", default="caffe", choices=("caffe", "torch"))
    m.add_argument("--gpu", type=int, default=None, help="GPU id (CUDA builds of Caffe)")
    m.add_argument("--device", default=None, help="torch engine device")
    d = p.add_argument_group("data")
    d.add_argument("--dataset", required=True, choices=("voc", "cityscapes", "synthetic"))
    d.add_argument("--data-dir", required=True)
    d.add_argument("--split", default="val")
    d.add_argument("--limit", type=int, default=None, help="first N images only")
    d.add_argument("--skip-bad", action="store_true")
    a = p.add_argument_group("attacks")
    a.add_argument("--attack", nargs="+", default=["fgsm"], choices=ATTACKS)
    a.add_argument("--eps", nargs="+", default=["8"],
                   help="l_inf budgets in 0..255 units (default 8, as Tables A15-A18; "
                        "the figures use %s)" % " ".join("%g" % e for e in PAPER_EPS))
    a.add_argument("--alpha", type=float, default=1.0)
    a.add_argument("--ifgsm-ll-target", default="current", choices=("current", "clean"))
    a.add_argument("--clip-to-image", action="store_true",
                   help="clip source and target adversarial inputs to valid pixel values")
    o = p.add_argument_group("output")
    o.add_argument("--out", default="results/transfer.h5", help="results store (HDF5)")
    o.add_argument("--summary", default=None, help="prefix for summary .json/.csv files")
    o.add_argument("--quiet", action="store_true")
    p.add_argument("--version", action="version", version="caffe_attacks %s" % __version__)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)

    def body():
        eps_list = validated_eps_and_limit(args)
        dataset = open_data(args)
        source = resolve_endpoint(args.source, args, args.source_weights)
        targets = [resolve_endpoint(t, args, args.target_weights) for t in args.target]
        for rm in [source] + targets:
            if rm.num_classes != dataset.num_classes:
                raise UsageError("%s predicts %d classes but the %s dataset has %d"
                                 % (rm.name, rm.num_classes, args.dataset, dataset.num_classes))
        ids = list(dataset.ids[:args.limit] if args.limit else dataset.ids)
        prefix = args.summary or (args.out[:-3] if args.out.endswith(".h5") else args.out)
        with ResultsStore(args.out) as store:
            by_target = run_transfer(source, targets, dataset, store, args.attack, eps_list,
                                     args, ids, split=args.split, progress=not args.quiet)
        rows = [dict(r, target=name) for name, rs in by_target.items() for r in rs]
        meta = {"version": __version__, "source": source.name, "targets": list(by_target),
                "dataset": args.dataset, "data_dir": args.data_dir, "split": args.split,
                "n_images": len(ids), "partial": args.limit is not None}
        write_summaries(rows, prefix, meta)
        for name, rs in by_target.items():
            print("source %s -> target %s" % (source.name, name))
            print(format_table(rs))
        print("results: %s; summary: %s.json, %s.csv" % (args.out, prefix, prefix))
        return 0

    return cli(body)


if __name__ == "__main__":
    sys.exit(main())
