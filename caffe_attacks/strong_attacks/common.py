"""What every strong attack shares: pass counting, labels, accuracy, results.

The attacks run over the model protocol (``forward(x) -> scores``,
``input_gradient(x, dscores) -> dx``); ``PassCounter`` wraps a model and
counts both calls, so each result can say what it cost.
"""
from dataclasses import dataclass
from typing import Optional

import numpy as np

from caffe_attacks.attacks import predicted_labels, project

from .losses import IGNORE_LABEL

# The record's "projection": the strong attacks' default (as in their papers)
# and the paper's no-clip rule for its own four attacks.
PROJECTION_BOX = "eps_ball+image_box"
PROJECTION_BALL = "eps_ball"
LABELS_PREDICTION = "prediction"
LABELS_GROUND_TRUTH = "ground_truth"


class PassCounter:
    """A model wrapper that counts forward and backward (input-gradient) passes."""

    def __init__(self, model):
        self.model = model
        self.forwards = 0
        self.backwards = 0

    def forward(self, x):
        self.forwards += 1
        return self.model.forward(x)

    def input_gradient(self, x, dscores):
        self.backwards += 1
        return self.model.input_gradient(x, dscores)


@dataclass(frozen=True)
class StrongResult:
    """One strong attack on a batch at one eps.

    x_adv: (N, 3, H, W) float32, in the model's input space.
    n_forward, n_backward: passes the attack used (the clean-label forward
        included; the runner's evaluation forward not).
    projection: PROJECTION_BOX or PROJECTION_BALL.
    label_source: LABELS_PREDICTION (the clean argmax, the paper's
        convention) or LABELS_GROUND_TRUTH.
    seed: the seed of the random start (None when the attack has none).
    accuracy: (N,) pixel accuracy of x_adv against the attack's labels where
        the attack measured it, else None.
    """
    x_adv: np.ndarray
    n_forward: int
    n_backward: int
    projection: str
    label_source: str
    seed: Optional[int]
    accuracy: Optional[np.ndarray] = None


def projection_name(clip_to_image):
    return PROJECTION_BALL if clip_to_image is None else PROJECTION_BOX


def attack_labels(counter, x, labels):
    """(labels (N, h, w), label source): the clean prediction when labels is None."""
    if labels is None:
        return predicted_labels(counter.forward(x)), LABELS_PREDICTION
    return np.asarray(labels), LABELS_GROUND_TRUTH


def per_image_accuracy(scores, labels, ignore_label=IGNORE_LABEL):
    """(N,) fraction of non-ignored pixels whose argmax equals the label (0 if none)."""
    labels = np.asarray(labels)
    valid = labels != ignore_label
    correct = (np.asarray(scores).argmax(axis=1) == labels) & valid
    n = labels.shape[0]
    return correct.reshape(n, -1).sum(1) / np.maximum(valid.reshape(n, -1).sum(1), 1)


def random_start(x, eps, rng, clip_to_image):
    """x + U(-eps, eps) per element, projected (image box included when given)."""
    noise = rng.uniform(-eps, eps, size=x.shape).astype(np.float32)
    return project(x + noise, x, eps, clip_to_image)


def as_generator(seed):
    """(Generator, recorded seed): an int seeds a new Generator; a Generator is used as is."""
    if isinstance(seed, np.random.Generator):
        return seed, None
    return np.random.default_rng(int(seed)), int(seed)


def check_eps(eps):
    eps = float(eps)
    if not np.isfinite(eps) or eps < 0:
        raise ValueError("eps must be finite and >= 0 (0 = clean), got %r" % eps)
    return eps
