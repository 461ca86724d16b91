"""APGD (Croce & Hein 2020) for segmentation, with the SEA losses and radius reduction.

One stage of ``iterations`` steps at radius eps (0..255 units):

- step eta = 2 eps per image; the first step is z = Proj(x + eta sign g),
  later ones add momentum: x <- Proj(x + 0.75 (z - x) + 0.25 (x - x_prev));
- checkpoints (``checkpoints``) after floor(0.22 N) iterations, then at
  intervals shrinking by floor(0.03 N) down to floor(0.06 N) (each at least 1);
- at a checkpoint an image's eta is halved and its iterate restarted from the
  point of best tracked loss (``halve_step``) when the loss rose in at most
  75 % of the interval's steps, or when eta was not halved at the previous
  checkpoint and the best loss did not improve since;
- the gradient comes from the chosen loss (``LOSSES``), the checks track
  plain cross-entropy by default (``track="ce"``; ``track="same"`` tracks the
  chosen loss, as the reference repository's evaluation call does);
- the result is the visited point with the lowest per-image pixel accuracy.

``apgd`` runs the progressive radius reduction of SEA (Croce, Singh & Hein,
ECCV 2024): stages of floor(0.3 N), floor(0.3 N) and the rest of the N
iterations at radii 2 eps, 1.5 eps and eps, each starting from the previous
stage's result projected onto the new ball (the first from x itself).

Cost per stage of n iterations: n + 1 forward and n backward passes (the last
iterate needs no gradient); plus one forward for the clean labels.
"""
from dataclasses import dataclass

import numpy as np

from caffe_attacks.attacks import project

from . import losses
from .common import (LABELS_GROUND_TRUTH, LABELS_PREDICTION, PassCounter, StrongResult,
                     attack_labels, check_eps, per_image_accuracy, projection_name)

LOSSES = ("ce", "mce", "mce_bal", "js")
TRACK = ("ce", "same")
RADII = (2.0, 1.5, 1.0)
STAGE_FRACTIONS = (0.3, 0.3)
OSCILLATION_THRESHOLD = 0.75


def loss_and_gradient(name, scores, labels, class_weights=None):
    """Per-image loss (N,) and dL/dscores (float64) for a loss name of ``LOSSES``."""
    if name == "ce":
        return losses.cross_entropy(scores, labels)
    if name == "mce":
        return losses.masked_cross_entropy(scores, labels)
    if name == "mce_bal":
        if class_weights is None:
            raise ValueError("mce_bal needs class_weights (python -m "
                             "caffe_attacks.datasets.class_weights)")
        return losses.masked_cross_entropy(scores, labels, class_weights)
    if name == "js":
        return losses.jensen_shannon(scores, labels)
    raise ValueError("unknown APGD loss %r; choose from %s" % (name, ", ".join(LOSSES)))


def checkpoints(iterations):
    """{iteration index (0-based): interval length k} of the step-size checks."""
    k = max(int(0.22 * iterations), 1)
    shrink = max(int(0.03 * iterations), 1)
    k_min = max(int(0.06 * iterations), 1)
    out, since = {}, 0
    for i in range(iterations):
        since += 1
        if since == k:
            out[i] = k
            since, k = 0, max(k - shrink, k_min)
    return out


def halve_step(window, best, best_at_last_check, halved_last_check,
               threshold=OSCILLATION_THRESHOLD):
    """(N,) bool: which images halve their step at this checkpoint.

    window: (k + 1, N) tracked loss at the point before the interval and after
    each of its k steps; best, best_at_last_check: (N,) best tracked loss now
    and at the previous checkpoint; halved_last_check: (N,) bool.
    """
    window = np.asarray(window, np.float64)
    k = window.shape[0] - 1
    rises = (window[1:] > window[:-1]).sum(axis=0)
    oscillating = rises <= threshold * k
    stalled = ~np.asarray(halved_last_check, bool) & (np.asarray(best_at_last_check)
                                                       >= np.asarray(best))
    return oscillating | stalled


@dataclass
class _Objective:
    loss: str
    track: str
    labels: np.ndarray
    class_weights: object

    def evaluate(self, scores):
        """(tracked loss (N,), dL/dscores of the attack loss)."""
        value, dscores = loss_and_gradient(self.loss, scores, self.labels, self.class_weights)
        if self.track == "ce" and self.loss != "ce":
            value, _ = losses.cross_entropy(scores, self.labels)
        return value, dscores


def _gradient(counter, x_adv, dscores, n_pixels):
    # sign(g) ignores a positive scale: backpropagating the summed (not the
    # mean) loss keeps float32 gradients of deep nets far from underflow.
    return counter.input_gradient(x_adv, (dscores * n_pixels).astype(np.float32))


def apgd_stage(counter, x, start, eps, iterations, objective, clip_to_image):
    """One APGD run of `iterations` steps in the eps-ball around x, from `start`.

    Returns (lowest-accuracy point (N, 3, H, W), its accuracy (N,)).
    """
    n = x.shape[0]
    n_pixels = objective.labels[0].size
    schedule = checkpoints(iterations)
    step = np.full((n, 1, 1, 1), 2.0 * eps, np.float32)
    x_adv = start.copy()
    scores = counter.forward(x_adv)
    tracked, dscores = objective.evaluate(scores)
    grad = _gradient(counter, x_adv, dscores, n_pixels)
    acc_best = per_image_accuracy(scores, objective.labels)
    x_low = x_adv.copy()
    x_best, grad_best, loss_best = x_adv.copy(), grad.copy(), tracked.copy()
    history = [tracked]
    best_at_last_check = loss_best.copy()
    halved_last_check = np.ones(n, bool)
    x_prev = x_adv.copy()
    for i in range(iterations):
        momentum = x_adv - x_prev
        x_prev = x_adv
        a = 0.75 if i > 0 else 1.0
        z = project(x_adv + step * np.sign(grad), x, eps, clip_to_image)
        x_adv = project(x_adv + a * (z - x_adv) + (1.0 - a) * momentum, x, eps, clip_to_image)
        scores = counter.forward(x_adv)
        tracked, dscores = objective.evaluate(scores)
        if i < iterations - 1:
            grad = _gradient(counter, x_adv, dscores, n_pixels)
        acc = per_image_accuracy(scores, objective.labels)
        lower = acc <= acc_best
        x_low[lower] = x_adv[lower]
        acc_best = np.minimum(acc, acc_best)
        improved = tracked > loss_best
        x_best[improved] = x_adv[improved]
        grad_best[improved] = grad[improved]
        loss_best = np.where(improved, tracked, loss_best)
        history.append(tracked)
        if i in schedule:
            k = schedule[i]
            halve = halve_step(np.stack(history[i + 1 - k:i + 2]), loss_best,
                               best_at_last_check, halved_last_check)
            halved_last_check, best_at_last_check = halve, loss_best.copy()
            step[halve] /= 2.0
            x_adv = x_adv.copy()
            x_adv[halve] = x_best[halve]
            grad[halve] = grad_best[halve]
    return x_low, acc_best


def stage_plan(iterations, progressive=True):
    """[(iterations, radius factor)] of the stages; empty stages are dropped."""
    if not progressive:
        return [(iterations, 1.0)]
    sizes = [int(f * iterations) for f in STAGE_FRACTIONS]
    sizes.append(iterations - sum(sizes))
    return [(s, r) for s, r in zip(sizes, RADII) if s > 0]


def expected_passes(iterations, progressive=True, clean_labels=True):
    """(forward, backward) passes of ``apgd``: n + 1 and n per stage, + 1 for the labels."""
    plan = stage_plan(iterations, progressive)
    return (sum(n + 1 for n, _ in plan) + int(clean_labels), sum(n for n, _ in plan))


def apgd(model, x, eps, *, loss="mce", iterations=300, class_weights=None, labels=None,
         track="ce", progressive=True, clip_to_image):
    """APGD with progressive radius reduction on one of ``LOSSES``.

    x: (N, 3, H, W) float32, BGR, mean-subtracted; eps in 0..255 units;
    class_weights: (C,) for "mce_bal"; labels: None for the clean prediction,
    else (N, h, w) ground truth (255 ignored); clip_to_image: an
    ``attacks.ImageBox`` or None (eps-ball only). Deterministic (no random
    start). Returns a ``StrongResult`` whose accuracy is that of x_adv.
    """
    eps = check_eps(eps)
    if loss not in LOSSES:
        raise ValueError("unknown APGD loss %r; choose from %s" % (loss, ", ".join(LOSSES)))
    if track not in TRACK:
        raise ValueError("track must be one of %s, got %r" % (TRACK, track))
    iterations = int(iterations)
    if iterations < 1:
        raise ValueError("iterations must be >= 1, got %d" % iterations)
    counter = PassCounter(model)
    if eps == 0:
        return StrongResult(x.copy(), 0, 0, projection_name(clip_to_image),
                            LABELS_PREDICTION if labels is None else LABELS_GROUND_TRUTH, None)
    labels, label_source = attack_labels(counter, x, labels)
    objective = _Objective(loss, track, labels, class_weights)
    x_adv, acc = x, None
    for n_iter, factor in stage_plan(iterations, progressive):
        radius = factor * eps
        x_adv, acc = apgd_stage(counter, x, project(x_adv, x, radius, clip_to_image), radius,
                                n_iter, objective, clip_to_image)
    return StrongResult(x_adv, counter.forwards, counter.backwards,
                        projection_name(clip_to_image), label_source, None, acc)
