"""SEA (Croce, Singh & Hein, ECCV 2024): the worst case over three APGD attacks.

The members are APGD with the MCE-Bal, MCE and JS losses (``MEMBERS``, in
the reference's order, MCE-Bal first). Per image the worst case is taken:

- for accuracy, the member with the lowest pixel accuracy (ties: the first
  in ``MEMBERS`` order) — ``worst_by_accuracy``;
- for mIoU, which is a dataset quantity, a greedy search over per-image
  choices that lowers the dataset mIoU (``greedy_miou_selection``): start
  from MCE-Bal everywhere, then in rounds visit the images in a shuffled
  order and switch an image to another member whenever that lowers the
  mIoU; stop after ``max_rounds`` or when a round gains <= ``tol``. The
  shuffle is seeded, so a seed fixes the result.

Both selections work on per-image confusion matrices (M members, N images,
C x C), so SEA can be formed from stored records of its members.
"""
from dataclasses import dataclass, replace

import numpy as np

from caffe_attacks.attacks import predicted_labels
from caffe_attacks.metrics import mean_iou, pixel_accuracy

from .auto_pgd import apgd
from .common import LABELS_GROUND_TRUTH, LABELS_PREDICTION, StrongResult

MEMBERS = ("apgd_mce_bal", "apgd_mce", "apgd_js")
MEMBER_LOSSES = {"apgd_mce_bal": "mce_bal", "apgd_mce": "mce", "apgd_js": "js"}
MAX_ROUNDS = 1000
TOL = 1e-6


def _check_cms(cms):
    cms = np.asarray(cms)
    if cms.ndim != 4 or cms.shape[2] != cms.shape[3]:
        raise ValueError("expected (members, images, C, C) confusion matrices, got %s"
                         % (cms.shape,))
    return cms.astype(np.int64)


def worst_by_accuracy(cms):
    """(N,) member index with the lowest per-image pixel accuracy (first on ties)."""
    cms = _check_cms(cms)
    acc = np.array([[pixel_accuracy(cm) if cm.sum() else 1.0 for cm in member]
                    for member in cms])
    return acc.argmin(axis=0)


@dataclass(frozen=True)
class GreedySelection:
    choice: np.ndarray   # (N,) member index per image
    miou: float          # dataset mIoU under that choice
    start_miou: float    # dataset mIoU of the start member everywhere
    rounds: int          # rounds run (the last one gained <= tol or hit the cap)
    seed: int


def greedy_miou_selection(cms, *, start=0, seed=0, max_rounds=MAX_ROUNDS, tol=TOL):
    """Per-image member choice that greedily minimises the dataset mIoU.

    cms: (M, N, C, C) int confusion matrices (rows ground truth) of member m
    on image n. An image switches member only when the dataset mIoU strictly
    drops, so the result is never above the start member's mIoU.
    """
    cms = _check_cms(cms)
    m_count, n_images = cms.shape[:2]
    rng = np.random.default_rng(int(seed))
    choice = np.full(n_images, int(start))
    total = cms[start].sum(axis=0)
    start_miou = current = mean_iou(total)
    rounds = 0
    for rounds in range(1, max_rounds + 1):
        before = current
        for n in rng.permutation(n_images):
            for m in range(m_count):
                if m == choice[n]:
                    continue
                candidate = total - cms[choice[n], n] + cms[m, n]
                value = mean_iou(candidate)
                if value < current:
                    total, current, choice[n] = candidate, value, m
        if before - current <= tol:
            break
    return GreedySelection(choice, float(current), float(start_miou), rounds, int(seed))


def combine(results, choice):
    """One StrongResult taking image n from results[choice[n]]; passes add up."""
    x_adv = np.stack([results[c].x_adv[n] for n, c in enumerate(choice)])
    acc = None
    if all(r.accuracy is not None for r in results):
        acc = np.array([results[c].accuracy[n] for n, c in enumerate(choice)])
    first = results[0]
    return StrongResult(x_adv, sum(r.n_forward for r in results),
                        sum(r.n_backward for r in results), first.projection,
                        first.label_source, None, acc)


def sea(model, x, eps, *, iterations=300, class_weights, labels=None, track="ce",
        clip_to_image):
    """The three APGD members and, per image, the one of lowest pixel accuracy.

    Returns (combined StrongResult, {member name: StrongResult}). The members
    share one clean-label forward; passes add up (3 x (iterations + 3)
    forward + 1 and 3 x iterations backward with radius reduction).
    """
    given = labels is not None
    if not given:
        labels = predicted_labels(model.forward(x))
    source = LABELS_GROUND_TRUTH if given else LABELS_PREDICTION
    members = {name: replace(apgd(model, x, eps, loss=MEMBER_LOSSES[name],
                                  iterations=iterations, class_weights=class_weights,
                                  labels=labels, track=track, clip_to_image=clip_to_image),
                             label_source=source)
               for name in MEMBERS}
    results = [members[name] for name in MEMBERS]
    if results[0].accuracy is None:     # eps = 0: every member returned x
        choice = np.zeros(x.shape[0], int)
    else:
        choice = np.stack([r.accuracy for r in results]).argmin(axis=0)
    combined = combine(results, choice)
    return replace(combined, n_forward=combined.n_forward + int(not given)), members
