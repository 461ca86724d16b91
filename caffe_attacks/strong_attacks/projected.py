"""PGD, SegPGD and CosPGD: l_inf projected sign-gradient ascent from a random start.

All three take steps x <- Proj(x + alpha sign(dL/dx)) from x + U(-eps, eps)
and differ only in the per-pixel weights of the cross-entropy L:

- ``pgd``: 1 (plain cross-entropy; Madry et al. 2018);
- ``segpgd``: (1 - lambda) on correctly and lambda on wrongly classified
  pixels, lambda = t / (2T) at iteration t (Gu et al., ECCV 2022);
- ``cospgd``: cos(softmax(z), onehot(y)), without gradient (Agnihotri &
  Keuper, ICML 2024).

eps and alpha are in 0..255 pixel units; x is (N, 3, H, W) float32, BGR,
mean-subtracted. ``clip_to_image`` is required: an ``attacks.ImageBox``
projects onto the eps-ball intersected with the valid image (these attacks'
own convention), None keeps the paper's eps-ball-only rule. With restarts,
each image keeps the restart whose final iterate has the lowest pixel
accuracy against the labels (ties: the earlier restart).

Cost: one forward for the clean labels (when labels is None), steps forward
and backward passes per restart, and one forward per restart to rank the
restarts when restarts > 1.
"""
import numpy as np

from caffe_attacks.attacks import project

from . import losses
from .common import (LABELS_GROUND_TRUTH, LABELS_PREDICTION, PassCounter, StrongResult,
                     as_generator, attack_labels, check_eps, per_image_accuracy, projection_name,
                     random_start)


def default_alpha(eps, steps):
    """2.5 eps / steps: enough travel to cross the ball from any start (Madry et al.)."""
    return 2.5 * eps / steps


def _uniform_weights(scores, labels, t, steps):
    return np.ones(np.shape(labels))


def _segpgd_weights(scores, labels, t, steps):
    return losses.segpgd_weights(scores, labels, t, steps)


def _cospgd_weights(scores, labels, t, steps):
    return losses.cospgd_weights(scores, labels)


def _ascend(counter, x, start, eps, labels, weights_of, steps, alpha, clip_to_image):
    x_adv = start
    n_pixels = labels[0].size
    for t in range(steps):
        scores = counter.forward(x_adv)
        _, dscores = losses.weighted_cross_entropy(scores, labels,
                                                   weights_of(scores, labels, t, steps))
        # sign(g) ignores a positive scale: backpropagating the summed (not the
        # mean) loss keeps float32 gradients of deep nets far from underflow.
        g = counter.input_gradient(x_adv, (dscores * n_pixels).astype(np.float32))
        x_adv = project(x_adv + alpha * np.sign(g), x, eps, clip_to_image)
    return x_adv


def _pgd_family(model, x, eps, weights_of, *, steps, alpha, restarts, seed, labels,
                clip_to_image):
    eps = check_eps(eps)
    steps, restarts = int(steps), int(restarts)
    if steps < 1 or restarts < 1:
        raise ValueError("steps and restarts must be >= 1, got %d and %d" % (steps, restarts))
    rng, recorded_seed = as_generator(seed)
    counter = PassCounter(model)
    if eps == 0:
        return StrongResult(x.copy(), 0, 0, projection_name(clip_to_image),
                            LABELS_PREDICTION if labels is None else LABELS_GROUND_TRUTH,
                            recorded_seed)
    labels, label_source = attack_labels(counter, x, labels)
    alpha = default_alpha(eps, steps) if alpha is None else float(alpha)
    best, best_acc = None, None
    for _ in range(restarts):
        x_adv = _ascend(counter, x, random_start(x, eps, rng, clip_to_image), eps, labels,
                        weights_of, steps, alpha, clip_to_image)
        if restarts == 1:
            best = x_adv
            break
        acc = per_image_accuracy(counter.forward(x_adv), labels)
        if best is None:
            best, best_acc = x_adv, acc
        else:
            better = acc < best_acc
            best[better] = x_adv[better]
            best_acc = np.where(better, acc, best_acc)
    return StrongResult(best, counter.forwards, counter.backwards, projection_name(clip_to_image),
                        label_source, recorded_seed, best_acc)


def pgd(model, x, eps, *, steps=100, alpha=None, restarts=1, seed=0, labels=None,
        clip_to_image):
    """PGD on the per-pixel cross-entropy.

    steps: iterations per restart; alpha: step in 0..255 units (None:
    ``default_alpha``); seed: int or numpy Generator for the random start;
    labels: None for the clean prediction, else (N, h, w) ground truth (255
    ignored). Returns a ``StrongResult``.
    """
    return _pgd_family(model, x, eps, _uniform_weights, steps=steps, alpha=alpha,
                       restarts=restarts, seed=seed, labels=labels, clip_to_image=clip_to_image)


def segpgd(model, x, eps, *, steps=100, alpha=None, restarts=1, seed=0, labels=None,
           clip_to_image):
    """SegPGD: the cross-entropy reweighted from correct towards wrong pixels over time."""
    return _pgd_family(model, x, eps, _segpgd_weights, steps=steps, alpha=alpha,
                       restarts=restarts, seed=seed, labels=labels, clip_to_image=clip_to_image)


def cospgd(model, x, eps, *, steps=100, alpha=None, restarts=1, seed=0, labels=None,
           clip_to_image):
    """CosPGD: the cross-entropy weighted by the cosine of softmax and one-hot label."""
    return _pgd_family(model, x, eps, _cospgd_weights, steps=steps, alpha=alpha,
                       restarts=restarts, seed=seed, labels=labels, clip_to_image=clip_to_image)
