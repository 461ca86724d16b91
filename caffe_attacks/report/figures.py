"""Figures from the results store (and saved examples): PNG and PDF, matplotlib.

Never runs a network. One renderer per definition kind (experiments/README.md):

- iou_ratio_curves (A4, A5, the demo): IoU Ratio against eps, one panel per
  attack, one line per model; the paper's ratios derived from its absolute-IoU
  tables are drawn dashed beside ours;
- perturbation (A1): input, perturbation + dataset mean, adversarial image and
  prediction for several eps, from examples saved by experiments.examples;
- qualitative_grid (A2, A3): predictions under attack, attacks x eps or
  models x eps;
- crf_sweep (A9-A11), crf_confidence (A13, A14), crf_deeplab (A12) and
  transfer_curves (A6-A8): the CRF and multiscale experiments' figures.

A point is plotted only when the store has it; a figure with nothing to show
still renders (axes and a note), so `make figures` always says what exists.
"""
import itertools
import logging
import os

import numpy as np

from caffe_attacks.experiments.definitions import (EXPERIMENTS_DIR, ExperimentError,
                                                   crf_variant_query, load, sweep_points)
from caffe_attacks.experiments.examples import example_path
from caffe_attacks.experiments.queries import find_config
from caffe_attacks.strong_attacks import ATTACK_NAMES
from caffe_attacks.visualize import colorize, perturbation_image

log = logging.getLogger(__name__)


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, out_dir, name):
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for ext in ("png", "pdf"):
        path = os.path.join(out_dir, "%s.%s" % (name, ext))
        fig.savefig(path, dpi=120, bbox_inches="tight")
        paths.append(path)
    _plt().close(fig)
    return paths


# --------------------------------------------------------------------------
# Numbers from the store
# --------------------------------------------------------------------------
def ratio_curve(store, base_query, attack, eps_list, clean_query=None, ids=None):
    """IoU Ratio of one model under one attack at each eps (nan where not stored).

    Every point is computed over the images that the clean configuration and
    all found attacked configurations share, as the tables do.
    base_query: the model's fields (model, dataset, split, and e.g. a variant)
    ids: restrict to these image ids (None: all stored)
    Returns (ratios (len(eps),) float, n_images int).
    """
    keys = [find_config(store, dict(base_query, attack=attack, eps=float(e))) if store else None
            for e in eps_list]
    clean = find_config(store, dict(clean_query or base_query, attack="clean", eps=0.0)) \
        if store else None
    found = [k for k in keys if k]
    if not found or clean is None:
        return np.full(len(eps_list), np.nan), 0
    common = set(store.summary(clean)["ids"])
    if ids is not None:
        common &= set(ids)
    for k in found:
        common &= set(store.summary(k)["ids"])
    if not common:
        return np.full(len(eps_list), np.nan), 0
    ids = sorted(common)
    clean_miou = store.summary(clean, ids=ids)["miou"]
    out = np.array([store.summary(k, ids=ids)["miou"] / clean_miou if k else np.nan
                    for k in keys])
    return out, len(ids)


def summary_at(store, query):
    """The store summary answering a query, or None."""
    key = find_config(store, query) if store else None
    return store.summary(key) if key else None


def paper_ratios(table_id, model, eps_list, experiments_dir=EXPERIMENTS_DIR):
    """The paper's IoU Ratio for a model, derived from an absolute-IoU table (nan if absent).

    The paper prints absolute IoU (one decimal) in Tables A5-A12 and plots the
    ratio; ratio = IoU(eps) / IoU(0) from the printed values.
    """
    try:
        defn = load(table_id, experiments_dir)
    except ExperimentError:
        return np.full(len(eps_list), np.nan)
    eps_cols = [float(e) for e in defn["columns"]["eps"]]
    for row in defn["rows"]:
        if row.get("model") == model and row.get("paper"):
            paper = dict(zip(eps_cols, row["paper"]))
            clean = paper.get(0.0)
            return np.array([paper[float(e)] / clean if clean and paper.get(float(e)) is not None
                             else np.nan for e in eps_list])
    return np.full(len(eps_list), np.nan)


# --------------------------------------------------------------------------
# Renderers
# --------------------------------------------------------------------------
def _eps_axis(ax, eps):
    ax.set_xscale("log", base=2)
    ax.set_xticks(eps)
    ax.set_xticklabels(["%g" % e for e in eps])
    ax.set_xlabel("eps (l_inf, 0..255)")


def render_iou_ratio_curves(defn, store, out_dir, experiments_dir=EXPERIMENTS_DIR, ids=None,
                            **_):
    """Panels per attack, a line per model (Figs. A4, A5); "panels": "models" swaps them."""
    plt = _plt()
    eps = [float(e) for e in defn["eps"] if e]
    labels = defn.get("labels", {})
    by_model = defn.get("panels") == "models"
    outer, inner = (defn["models"], defn["attacks"]) if by_model else \
        (defn["attacks"], defn["models"])
    fig, axes = plt.subplots(1, len(outer), figsize=(4.2 * len(outer), 3.6), squeeze=False)
    colors = plt.get_cmap("tab10")
    shown = 0
    for ax, p in zip(axes[0], outer):
        for i, q in enumerate(inner):
            model, attack = (p, q) if by_model else (q, p)
            base = {"model": model, "dataset": defn["dataset"], "split": defn.get("split", "val")}
            ours, n = ratio_curve(store, base, attack, eps, ids=ids)
            label = ATTACK_NAMES.get(q, q) if by_model else labels.get(model, model)
            if np.isfinite(ours).any():
                ax.plot(eps, ours, "o-", color=colors(i % 10), ms=3,
                        label="%s (n=%d)" % (label, n))
                shown += 1
            table = (defn.get("paper_from") or {}).get(attack)
            if table:
                paper = paper_ratios(table, model, eps, experiments_dir)
                if np.isfinite(paper).any():
                    ax.plot(eps, paper, "--", color=colors(i % 10), lw=1,
                            label="%s, paper" % label)
        _eps_axis(ax, eps)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("IoU Ratio")
        ax.set_title(labels.get(p, p) if by_model else ATTACK_NAMES.get(p, p))
        ax.grid(alpha=0.3)
    handles, names = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, loc="center left", fontsize=7, bbox_to_anchor=(1.0, 0.5))
    note = "" if shown else "\n(no results in the store yet: paper only)"
    fig.suptitle(defn.get("title", defn["id"]) + note, fontsize=10)
    fig.tight_layout()
    return _save(fig, out_dir, defn["id"])


def _load_examples(examples_dir, exp_id, model):
    path = example_path(examples_dir, exp_id, model)
    if not os.path.exists(path):
        return None
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _missing_figure(defn, out_dir, what):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 1.5))
    ax.axis("off")
    ax.text(0.5, 0.5, "%s: %s" % (defn["id"], what), ha="center", va="center", color="grey")
    return _save(fig, out_dir, defn["id"])


def render_perturbation(defn, store, out_dir, examples_dir=None, **_):
    """Rows: eps. Columns: input, perturbation (+ mean, x gain), adversarial, prediction."""
    plt = _plt()
    ex = _load_examples(examples_dir, defn["id"], defn["model"])
    if ex is None:
        return _missing_figure(defn, out_dir, "no saved examples yet (run it with data)")
    attack = defn["attack"]
    # the eps whose arrays were saved: examples saved for fewer eps (a partial run) draw those
    eps = [float(e) for e in defn["eps"] if e and "delta_%s_%g" % (attack, float(e)) in ex]
    if not eps:
        return _missing_figure(defn, out_dir, "the saved examples have none of its eps")
    gain = defn.get("gain")     # None: 127.5 / eps, the full budget spans the range
    fig, axes = plt.subplots(len(eps), 4, figsize=(10, 2.3 * len(eps)), squeeze=False)
    for r, e in enumerate(eps):
        tag = "%s_%g" % (attack, e)
        g = gain if gain is not None else 127.5 / e
        panels = [ex["image_rgb"], perturbation_image(ex["delta_" + tag], ex["mean_bgr"], gain=g),
                  ex["adv_rgb_" + tag], colorize(ex["pred_" + tag], ex["palette"])]
        titles = ["input", "perturbation x%.3g + mean" % g, "adversarial, eps = %g" % e,
                  "prediction"]
        for ax, img, t in zip(axes[r], panels, titles):
            ax.imshow(img)
            ax.set_title(t, fontsize=8)
            ax.axis("off")
    fig.suptitle(defn.get("title", defn["id"]), fontsize=10)
    fig.tight_layout()
    return _save(fig, out_dir, defn["id"])


def render_qualitative_grid(defn, store, out_dir, examples_dir=None, **_):
    """One model: rows eps, columns attacks. Several models: rows models, columns eps."""
    plt = _plt()
    models = defn.get("models") or [defn["model"]]
    attacks = defn.get("attacks") or [defn["attack"]]
    eps = [float(e) for e in defn["eps"]]
    exs = {m: _load_examples(examples_dir, defn["id"], m) for m in models}
    if not any(v is not None for v in exs.values()):
        return _missing_figure(defn, out_dir, "no saved examples yet (run it with data)")

    def pred(ex, attack, e):
        if ex is None:
            return None
        if e == 0:
            return colorize(ex["clean_pred"], ex["palette"])
        key = "pred_%s_%g" % (attack, e)
        return colorize(ex[key], ex["palette"]) if key in ex else None

    if len(models) == 1:
        ex = exs[models[0]]
        grid = [[pred(ex, a, e) for a in attacks] for e in eps]
        rows = ["eps = %g" % e for e in eps]
        cols = [ATTACK_NAMES.get(a, a) for a in attacks]
    else:
        grid = [[pred(exs[m], attacks[0], e) for e in eps] for m in models]
        rows = [defn.get("labels", {}).get(m, m) for m in models]
        cols = ["eps = %g" % e for e in eps]
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(2.4 * len(cols), 2 * len(rows)),
                             squeeze=False)
    for r, c in itertools.product(range(len(rows)), range(len(cols))):
        ax = axes[r][c]
        if grid[r][c] is not None:
            ax.imshow(grid[r][c])
        ax.set_xticks([])
        ax.set_yticks([])
        if r == 0:
            ax.set_title(cols[c], fontsize=8)
        if c == 0:
            ax.set_ylabel(rows[r], fontsize=8)
    fig.suptitle(defn.get("title", defn["id"]), fontsize=10)
    return _save(fig, out_dir, defn["id"])


def render_crf_sweep(defn, store, out_dir, **_):
    plt = _plt()
    eps = [float(e) for e in defn["eps"] if e]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    shown = 0
    for label, overrides in sweep_points(defn):
        base = crf_variant_query(defn, overrides)
        ratios, n = ratio_curve(store, base, defn["attack"], eps)
        if np.isfinite(ratios).any():
            ax.plot(eps, ratios, "o-", ms=3, label="%s (n=%d)" % (label, n))
            shown += 1
    _eps_axis(ax, eps)
    ax.set_ylabel("IoU Ratio")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    _legend_or_empty(ax, shown, fontsize=7)
    ax.set_title(defn.get("caption", defn["id"]), fontsize=9)
    return _save(fig, out_dir, defn["id"])


def _legend_or_empty(ax, shown, fontsize):
    """A legend when something was plotted, else a note that the store has nothing yet."""
    if shown:
        ax.legend(fontsize=fontsize)
    else:
        ax.text(0.5, 0.5, "no results in the store yet", transform=ax.transAxes, ha="center",
                color="grey")


def render_crf_confidence(defn, store, out_dir, experiments_dir=EXPERIMENTS_DIR, **_):
    """Scatter of mean confidence (or entropy) against IoU Ratio, every model and variant."""
    plt = _plt()
    y_field = "confidence" if "confidence" in defn.get("y", "") else "entropy"
    eps = [float(e) for e in defn["eps"]]
    series = [(m, {"model": m, "dataset": defn["dataset"], "split": defn.get("split", "val")})
              for m in defn["models"]]
    for sweep_id in defn.get("variants_from", ()):
        try:
            sweep = load(sweep_id, experiments_dir)
        except ExperimentError:
            continue
        for label, overrides in sweep_points(sweep):
            base = crf_variant_query(sweep, overrides)
            if "crf" in base:
                series.append(("%s %s" % (sweep["model"], label), base))
    fig, ax = plt.subplots(figsize=(5.5, 4))
    shown = 0
    for label, base in series:
        xs, ys = [], []
        clean = summary_at(store, dict(base, attack="clean", eps=0.0))
        for e in eps:
            s = clean if e == 0 else summary_at(store, dict(base, attack=defn["attack"], eps=e))
            if s is not None and clean is not None:
                xs.append(s["miou"] / clean["miou"])
                ys.append(s[y_field])
        if xs:
            ax.plot(xs, ys, "o", ms=4, label=label)
            shown += 1
    ax.set_xlabel("IoU Ratio")
    ax.set_ylabel("mean %s" % y_field)
    ax.grid(alpha=0.3)
    _legend_or_empty(ax, shown, fontsize=6)
    ax.set_title(defn.get("caption", defn["id"]), fontsize=9)
    return _save(fig, out_dir, defn["id"])


def transfer_query_fields(source, target):
    """A transfer line's extra query fields: its source, none on the white-box diagonal."""
    return {} if source == target else {"source": {"model": source}}


def render_crf_deeplab(defn, store, out_dir, **_):
    """Panels of IoU Ratio against eps: each panel's target, compared as it says."""
    plt = _plt()
    eps = [float(e) for e in defn["eps"] if e]
    panels = defn["panels"]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, p in zip(axes[0], panels):
        lines = [("%s from %s" % (p["target"], p["source"]), p["target"],
                  transfer_query_fields(p["source"], p["target"]))]
        if p.get("compare"):
            lines.append((p["compare"], p["compare"], {}))
        if p.get("compare_white_box"):
            lines.append(("%s (white box)" % p["target"], p["target"], {}))
        for label, model, extra in lines:
            base = {"model": model, "dataset": defn["dataset"], "split": defn.get("split", "val")}
            ratios, n = ratio_curve(store, dict(base, **extra), p["attack"], eps, clean_query=base)
            if np.isfinite(ratios).any():
                ax.plot(eps, ratios, "o-", ms=3, label="%s (n=%d)" % (label, n))
        _eps_axis(ax, eps)
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
        ax.set_title("(%s) %s" % (p.get("panel", ""), ATTACK_NAMES.get(p["attack"], p["attack"])),
                     fontsize=9)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    fig.suptitle(defn.get("caption", defn["id"]), fontsize=10)
    return _save(fig, out_dir, defn["id"])


def render_transfer_curves(defn, store, out_dir, **_):
    """IoU Ratio against eps (Figures A6-A8, the multiscale experiments' format).

    white_box_only: one panel per attack, one line per net (source = target);
    otherwise one panel per target, one line per source (white box marked).
    A white-box point is the transfer CLI's self-transfer record, or the
    runner's plain record where the net is a zoo model.
    """
    plt = _plt()
    eps = [float(e) for e in defn["eps"] if e]
    base_of = lambda m: {"model": m, "dataset": defn["dataset"], "split": defn.get("split", "val")}
    labels = dict(zip(defn["targets"], defn.get("series_labels") or defn["targets"]))

    def curve(source, target, attack):
        base = base_of(target)
        ratios, n = ratio_curve(store, dict(base, source={"model": source}), attack, eps,
                                clean_query=base)
        if source == target and not np.isfinite(ratios).any():
            ratios, n = ratio_curve(store, base, attack, eps)
        return ratios, n

    if defn.get("white_box_only"):
        panels = [(ATTACK_NAMES.get(a, a), a, [(labels.get(t, t), t, t) for t in defn["targets"]])
                  for a in defn["attacks"]]
    else:
        a = defn["attacks"][0]
        panels = [("target %s" % t, a, [("from %s%s" % (s, " (white box)" if s == t else ""),
                                         s, t) for s in defn["sources"]])
                  for t in defn["targets"]]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (title, attack, lines) in zip(axes[0], panels):
        for label, source, target in lines:
            ratios, n = curve(source, target, attack)
            if np.isfinite(ratios).any():
                ax.plot(eps, ratios, "o-" if source != target else "s-k", ms=3,
                        label="%s (n=%d)" % (label, n))
        _eps_axis(ax, eps)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("IoU Ratio")
        ax.grid(alpha=0.3)
        ax.set_title(title, fontsize=8)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    fig.suptitle(defn.get("caption", defn["id"]), fontsize=9)
    fig.tight_layout()
    return _save(fig, out_dir, defn["id"])


RENDERERS = {
    "iou_ratio_curves": render_iou_ratio_curves,
    "perturbation": render_perturbation,
    "qualitative_grid": render_qualitative_grid,
    "crf_sweep": render_crf_sweep,
    "crf_confidence": render_crf_confidence,
    "crf_deeplab": render_crf_deeplab,
    "transfer_curves": render_transfer_curves,
}


def render(defn, store, out_dir, examples_dir=None, experiments_dir=EXPERIMENTS_DIR, ids=None):
    """Render one figure definition; returns the written paths (PNG, PDF).

    ids: image ids to summarise over (IoU-ratio curves; None: all stored).
    """
    try:
        fn = RENDERERS[defn["kind"]]
    except KeyError:
        raise ExperimentError("no figure renderer for kind %r" % defn["kind"]) from None
    return fn(defn, store, out_dir, examples_dir=examples_dir, experiments_dir=experiments_dir,
              ids=ids)
