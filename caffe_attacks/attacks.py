"""The paper's four attacks as plain functions over the model protocol.

Every function takes a model with ``forward(x) -> scores`` and
``input_gradient(x, dscores) -> dx`` (docs/DESIGN.md), an input
``x: (N, 3, H, W) float32, BGR, mean-subtracted`` and one eps or a list of
them, in 0..255 pixel units. Semantics follow the paper authors' code
(anuragarnab/adversarial-attacks; docs/FIDELITY.md):

- labels are the network's own clean prediction (no label leaking);
- the loss is SoftmaxWithLoss with normalize: false, summed over the canvas;
- iterative attacks take steps of alpha = 1 for
  T = max(ceil(min(eps + 4, 1.25 eps)), 1) iterations and are projected onto
  the eps-ball around x after every step (and nowhere else);
- eps = 0 returns x unchanged (the clean input).

Every result passes through ``project``, the one place that enforces the
eps-ball and the optional valid-image box.
"""
import math
from dataclasses import dataclass

import numpy as np

from caffe_attacks.losses import softmax_cross_entropy

PAPER_EPS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
ATTACKS = ("fgsm", "fgsm_ll", "ifgsm", "ifgsm_ll")
# The paper's names, for tables and figures.
PAPER_NAMES = {"clean": "Clean", "fgsm": "FGSM", "fgsm_ll": "FGSM II",
               "ifgsm": "Iterative FGSM", "ifgsm_ll": "Iterative FGSM II"}


def num_iterations(eps):
    """T = max(ceil(min(eps + 4, 1.25 eps)), 1) (Kurakin et al., as the paper)."""
    return max(int(math.ceil(min(eps + 4.0, 1.25 * eps))), 1)


def validate_eps(eps):
    """Return eps as a list of floats; reject non-finite or negative values."""
    values = [eps] if np.isscalar(eps) else list(eps)
    if not values:
        raise ValueError("no eps value given")
    out = []
    for e in values:
        try:
            e = float(e)
        except (TypeError, ValueError):
            raise ValueError("eps must be a number, got %r" % (e,)) from None
        if not math.isfinite(e) or e < 0:
            raise ValueError("eps must be finite and >= 0 (0 = clean), got %r" % e)
        out.append(e)
    return out


@dataclass(frozen=True)
class ImageBox:
    """The valid-image range in the model's input space, for ``clip_to_image``.

    lo, hi: arrays broadcastable to x, e.g. -mean and 255 - mean per channel
    (shape (1, 3, 1, 1)) for a mean-subtracted BGR input.
    """
    lo: np.ndarray
    hi: np.ndarray

    @classmethod
    def from_mean(cls, mean_bgr):
        mean = np.zeros(3, np.float32) if mean_bgr is None else np.asarray(mean_bgr, np.float32)
        m = mean.reshape(1, 3, 1, 1)
        return cls(lo=-m, hi=255.0 - m)


def project(x_adv, x, eps, clip_to_image=None):
    """Project x_adv onto the l_inf ball of radius eps around x (and the image box)."""
    out = np.clip(x_adv, x - eps, x + eps)
    if clip_to_image is not None:
        out = np.clip(out, clip_to_image.lo, clip_to_image.hi)
    return out.astype(np.float32, copy=False)


def predicted_labels(scores):
    """Per-pixel argmax: (N, C, h, w) -> (N, h, w) int64."""
    return scores.argmax(axis=1)


def least_likely_labels(scores):
    """Per-pixel argmin (the class ranked last): (N, C, h, w) -> (N, h, w) int64."""
    return scores.argmin(axis=1)


def loss_gradient(model, x, target, scores=None):
    """dL/dx of the summed cross-entropy of model(x) against `target`.

    `scores` may be passed when model.forward(x) was just computed; the model
    then reuses its activations for the backward pass.
    """
    if scores is None:
        scores = model.forward(x)
    _, dscores = softmax_cross_entropy(scores, target, ignore_label=None)
    return model.input_gradient(x, dscores)


def _single_step(model, x, eps_list, direction, target_of, clip_to_image):
    """One gradient shared by every eps: sign(g) does not depend on eps."""
    scores = model.forward(x)
    step = np.sign(loss_gradient(model, x, target_of(scores), scores))
    return [x.copy() if e == 0 else project(x + direction * e * step, x, e, clip_to_image)
            for e in eps_list]


def _unwrap(eps, results):
    return results[0] if np.isscalar(eps) else results


def fgsm(model, x, eps, *, clip_to_image=None):
    """FGSM: x + eps * sign(grad L(f(x), argmax f(x))).

    Returns x_adv (N, 3, H, W) float32, or a list aligned with `eps` when eps
    is a sequence. One forward and one backward serve every eps.
    """
    results = _single_step(model, x, validate_eps(eps), +1.0, predicted_labels, clip_to_image)
    return _unwrap(eps, results)


def fgsm_ll(model, x, eps, *, clip_to_image=None):
    """FGSM II (targeted, least likely): x - eps * sign(grad L(f(x), argmin f(x)))."""
    results = _single_step(model, x, validate_eps(eps), -1.0, least_likely_labels, clip_to_image)
    return _unwrap(eps, results)


def _iterate(model, x, e, direction, target_of, alpha, iterations, clip_to_image, fixed):
    if e == 0:
        return x.copy()
    steps = num_iterations(e) if iterations is None else int(iterations)
    x_adv = x.copy()
    target = fixed
    for _ in range(steps):
        scores = model.forward(x_adv)
        if fixed is None:
            target = target_of(scores)
        g = loss_gradient(model, x_adv, target, scores)
        x_adv = project(x_adv + direction * alpha * np.sign(g), x, e, clip_to_image)
    return x_adv


def _iterate_batched(model, x, eps_list, direction, target_of, alpha, iterations,
                     clip_to_image, fixed):
    """Every eps of a sweep as one batch: row i takes the steps of eps_list[i].

    x: (1, 3, H, W). Rows whose schedule is finished leave the batch, so the
    work equals the per-eps loop's; each row's gradient is that of its own
    summed loss (the batch loss is a sum over rows), so the result is the
    per-eps result.
    """
    eps = np.asarray(eps_list, np.float32)
    steps = np.array([0 if e == 0 else (num_iterations(e) if iterations is None
                                        else int(iterations)) for e in eps_list])
    x_adv = np.repeat(x, len(eps_list), axis=0)
    for t in range(int(steps.max(initial=0))):
        rows = np.flatnonzero(steps > t)
        xb = x_adv[rows]
        scores = model.forward(xb)
        target = np.repeat(fixed, len(rows), axis=0) if fixed is not None else target_of(scores)
        g = loss_gradient(model, xb, target, scores)
        x_adv[rows] = project(xb + direction * alpha * np.sign(g), x,
                              eps[rows].reshape(-1, 1, 1, 1), clip_to_image)
    return [x_adv[i:i + 1].copy() for i in range(len(eps_list))]


def _sweep(model, x, eps_list, direction, target_of, alpha, iterations, clip_to_image,
           fixed, batch_eps):
    if batch_eps:
        if x.shape[0] != 1:
            raise ValueError("batch_eps needs a single image (x of shape (1, 3, H, W))")
        return _iterate_batched(model, x, eps_list, direction, target_of, alpha,
                                iterations, clip_to_image, fixed)
    return [_iterate(model, x, e, direction, target_of, alpha, iterations, clip_to_image,
                     fixed) for e in eps_list]


def ifgsm(model, x, eps, *, alpha=1.0, iterations=None, clip_to_image=None, batch_eps=False):
    """Iterative FGSM: ascend the loss of the clean prediction, fixed throughout.

    iterations: None for the paper's schedule ``num_iterations(eps)``.
    batch_eps: run the eps of a sweep as one batch (for GPUs; same results).
    """
    eps_list = validate_eps(eps)
    target = predicted_labels(model.forward(x))
    results = _sweep(model, x, eps_list, +1.0, None, alpha, iterations, clip_to_image,
                     target, batch_eps)
    return _unwrap(eps, results)


def ifgsm_ll(model, x, eps, *, alpha=1.0, iterations=None, clip_to_image=None,
             target="current", batch_eps=False):
    """Iterative FGSM II: descend towards the least-likely class.

    target: "current" recomputes the least-likely class of every iterate (the
    paper authors' code, the default); "clean" fixes it from the clean image
    (Kurakin et al.).
    batch_eps: run the eps of a sweep as one batch (for GPUs; same results).
    """
    if target not in ("current", "clean"):
        raise ValueError("target must be 'current' or 'clean', got %r" % (target,))
    eps_list = validate_eps(eps)
    fixed = least_likely_labels(model.forward(x)) if target == "clean" else None
    results = _sweep(model, x, eps_list, -1.0, least_likely_labels, alpha, iterations,
                     clip_to_image, fixed, batch_eps)
    return _unwrap(eps, results)


ATTACK_FUNCTIONS = {"fgsm": fgsm, "fgsm_ll": fgsm_ll, "ifgsm": ifgsm, "ifgsm_ll": ifgsm_ll}


def get_attack(name):
    """The attack function for a paper name; a clear error for anything else."""
    try:
        return ATTACK_FUNCTIONS[name]
    except KeyError:
        raise ValueError("unknown attack %r; choose from %s" % (name, ", ".join(ATTACKS))) from None
