"""The one white-box pipeline: prepare -> attack -> evaluate -> record.

:func:`attack_batch` is the only place that turns images into adversarial
inputs and results: the runner, the transfer CLI, the figure examples and the
demo all call it. Perturbations are crafted on a *source* net and evaluated
on one or more *targets*; a plain run is the case where the one target is the
source itself. Every (configuration, image) result goes to the results store
as soon as its image is done.
"""
import time
from dataclasses import dataclass
from typing import List

import numpy as np

from caffe_attacks.attacks import ImageBox
from caffe_attacks.errors import UsageError
from caffe_attacks.finite import NonFiniteError
from caffe_attacks.losses import softmax
from caffe_attacks.metrics import confidence_entropy_sums, confusion_matrix
from caffe_attacks.runner import registry, strong
from caffe_attacks.runner.resolve import ResolvedModel
from caffe_attacks.store import Record, config_key


@dataclass
class Target:
    """A net the adversarial inputs are evaluated on, and its configurations.

    configs: [(attack, eps, config)] from :func:`make_configs`, clean first.
    """
    model: ResolvedModel
    configs: List[tuple]


def record_base(rm, options):
    """What every record of net ``rm`` under ``options`` says about net and data."""
    base = {"model": rm.name, "weights_md5": rm.weights_md5, "dataset": options.dataset,
            "split": options.split, "protocol": rm.protocol.to_dict(), "engine": options.engine,
            "score_blob": getattr(rm.model, "score_blob", None)}
    if options.dataset == "cityscapes":
        base["image_dtype"] = options.cityscapes_image_dtype   # the reader's resize
    if rm.crf:
        base["crf"] = rm.crf
    if rm.member is not None:
        base["member"] = rm.member.describe()
    if rm.init is not None:     # no weights: keep these records apart from any trained net's
        base["init"] = rm.init
    return base


def make_configs(base, options, source=None):
    """[(attack, eps, config)] of ``options``' attacks and eps, the clean configuration first.

    source: the crafting net's :func:`record_base` fields for a transfer
    (added to every attacked configuration; the clean one does not depend on it).
    """
    out = [("clean", 0.0, dict(base, attack="clean", eps=0.0, options={}))]
    # SEA runs as its three members; runner.strong forms its records from theirs
    for a in strong.expand_attacks(options.attacks):
        for e in options.eps:
            if e == 0:
                continue
            config = dict(base, attack=a, eps=e, options=registry.record_options(options, a))
            passes = registry.cost(a, config["options"])
            if passes is not None:
                config["passes"] = passes
            if source is not None:
                config["source"] = source
            out.append((a, e, config))
    return out


def transfer_source_fields(rm, options):
    """A transfer record's "source": the crafting net's fields, without dataset and split."""
    return {k: v for k, v in record_base(rm, options).items() if k not in ("dataset", "split")}


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


class _View:
    """One target's clean inputs and clean results for a batch of samples.

    score_hw: the source's score grid (white-box view only: its clean forward
    is the source's forward of the batch).
    """

    def __init__(self, target, source, samples, x, ctxs):
        rm = target.model
        self.white_box = rm is source
        self.score_hw = None
        t0 = time.perf_counter()
        if self.white_box:
            # the source's own batch: one forward for every image
            self.inputs = [(x[i:i + 1], ctxs[i]) for i in range(len(samples))]
            scores = rm.model.forward(x)
            self.score_hw = tuple(scores.shape[2:])
            self.clean = [evaluate_scores(scores[i:i + 1], ctxs[i], rm.protocol, s.label,
                                          rm.num_classes) for i, s in enumerate(samples)]
        else:
            self.inputs = [rm.protocol.prepare(s.image) for s in samples]
            self.clean = [evaluate_scores(rm.model.forward(xt), ct, rm.protocol, s.label,
                                          rm.num_classes)
                          for (xt, ct), s in zip(self.inputs, samples)]
        self.seconds_clean = (time.perf_counter() - t0) / len(samples)


def ground_truth_grids(samples, ctxs, protocol, score_hw):
    """(N, h, w) uint8: each sample's label on the source's (h, w) score grid, 255 = void.

    The strong attacks' ground-truth labels (``--strong-labels ground_truth``):
    the label is placed as the protocol places the image, and cells outside
    the image are void, so the losses ignore them.
    """
    return np.stack([protocol.label_to_score_grid(s.label, c, score_hw)
                     for s, c in zip(samples, ctxs)])


def attack_batch(samples, source, targets, store, options, examples=None):
    """Attack images of one canvas size as one batch; evaluate and record every target.

    A NaN or inf in an input or a net's scores raises NonFiniteError naming
    the batch's images; nothing of the batch is recorded.

    Parameters
    ----------
    samples : datasets Samples whose images share one canvas under ``source``'s protocol
    source : ResolvedModel that crafts the perturbations
    targets : list of :class:`Target`; a target whose model *is* ``source`` is
        white-box (it sees the adversarial batch itself), any other receives
        the perturbation mapped onto its own canvas (:func:`transferred_input`)
    store : ResultsStore, or None: record nothing and attack every configuration
    options : RunOptions (``clip_to_image``)
    examples : optional sink with ``save(sample, rm, x, ctx, pred_clean, shown)``,
        shown = [(attack, eps, x_adv (1, 3, H, W), prediction)] of the white-box target

    Every image gets what it would get alone (the attacks treat the rows of a
    batch independently: the summed loss's gradient for a row is that row's).
    Attack time is shared evenly over the images and eps of a call. Returns
    the number of records added (0 without a store).
    """
    try:
        return _attack_batch(samples, source, targets, store, options, examples)
    except NonFiniteError as e:
        raise NonFiniteError("image %s: %s; nothing was stored for it"
                             % (", ".join(s.id for s in samples), e)) from None


def _attack_batch(samples, source, targets, store, options, examples):
    prepared = [source.protocol.prepare(s.image) for s in samples]
    x = np.concatenate([p[0] for p in prepared])
    ctxs = [p[1] for p in prepared]
    n_img = len(samples)

    def missing(config, i):
        return store is None or not store.has(config_key(config), samples[i].id)

    views = [_View(t, source, samples, x, ctxs) for t in targets]
    records = [[] for _ in samples]
    shown = [[] for _ in samples]
    for target, view in zip(targets, views):
        for attack, _, config in target.configs:
            if attack != "clean":
                continue
            for i, s in enumerate(samples):
                if missing(config, i):
                    cm, conf, ent, npix, _ = view.clean[i]
                    records[i].append(Record(config, s.id, cm, cm, conf, ent, npix, 0.0,
                                             view.seconds_clean))

    # (attack, options key) -> (options, {eps: [(target index, config)]}) still to make
    todo = {}
    for t, target in enumerate(targets):
        for attack, e, config in target.configs:
            if attack != "clean" and (examples is not None or any(
                    missing(config, i) for i in range(n_img))):
                key = (attack, config_key(config["options"]))
                todo.setdefault(key, (config["options"], {}))[1].setdefault(e, []).append(
                    (t, config))
    clip = options.clip_to_image
    # each record's options say whether its attack clips (the strong attacks by default)
    box_s = ImageBox.from_mean(source.protocol.mean_bgr)
    truth = None    # ground-truth label grids, made once for the batch when asked for
    for (attack, _), (record_opts, by_eps) in todo.items():
        eps = sorted(by_eps)
        t0 = time.perf_counter()
        kwargs = registry.attack_kwargs(record_opts, box_s)
        if strong.uses_ground_truth(record_opts):
            if truth is None:
                score_hw = next((v.score_hw for v in views if v.white_box), None)
                if score_hw is None:
                    # no white-box target has run the source on the batch: one
                    # forward gives its score grid (experiments.cost counts it)
                    score_hw = tuple(source.model.forward(x).shape[2:])
                truth = ground_truth_grids(samples, ctxs, source.protocol, score_hw)
            kwargs["label_grids"] = truth
        advs = registry.entry(attack).fn(source.model, x, eps, **kwargs)
        per_record = (time.perf_counter() - t0) / (len(eps) * n_img)
        for e, x_adv in zip(eps, advs):
            for t, config in by_eps[e]:
                rm, view = targets[t].model, views[t]
                t1 = time.perf_counter()
                if view.white_box:
                    scores = rm.model.forward(x_adv)
                    adv_inputs = [x_adv[i:i + 1] for i in range(n_img)]
                    results = [evaluate_scores(scores[i:i + 1], ctxs[i], rm.protocol, s.label,
                                               rm.num_classes) for i, s in enumerate(samples)]
                else:
                    box_t = ImageBox.from_mean(rm.protocol.mean_bgr) if clip else None
                    adv_inputs = [transferred_input(x[i:i + 1], x_adv[i:i + 1], ctxs[i],
                                                    source.protocol, xt, ct, rm.protocol, box_t)
                                  for i, (xt, ct) in enumerate(view.inputs)]
                    results = [evaluate_scores(rm.model.forward(xa), ct, rm.protocol, s.label,
                                               rm.num_classes)
                               for xa, (_, ct), s in zip(adv_inputs, view.inputs, samples)]
                seconds = per_record + (time.perf_counter() - t1) / n_img
                for i, s in enumerate(samples):
                    cm, c_sum, e_sum, n, pred = results[i]
                    if missing(config, i):
                        max_delta = float(np.abs(adv_inputs[i] - view.inputs[i][0]).max())
                        records[i].append(Record(config, s.id, view.clean[i][0], cm, c_sum,
                                                 e_sum, n, max_delta, seconds))
                    if examples is not None and view.white_box:
                        shown[i].append((attack, e, x_adv[i:i + 1], pred))
    for i, s in enumerate(samples):
        if store is not None:
            store.add_image(records[i])
        if examples is not None:
            white = [v for v in views if v.white_box]
            pred_clean = white[0].clean[i][4] if white else None
            examples.save(s, source, x[i:i + 1], ctxs[i], pred_clean, shown[i])
    return 0 if store is None else sum(len(r) for r in records)
