"""Stronger attacks than the paper's: PGD, SegPGD, CosPGD, APGD (three losses), SEA.

Pure functions over the model protocol (core layer: numpy and the project's
core only). Each returns a ``StrongResult`` with the adversarial input, the
forward and backward passes it used, its projection and its label source.
Modules: ``projected`` (PGD, SegPGD, CosPGD), ``auto_pgd`` (APGD), ``ensemble``
(SEA), ``losses``, ``common``.
"""
from caffe_attacks.attacks import PAPER_NAMES

from .auto_pgd import apgd
from .common import (LABELS_GROUND_TRUTH, LABELS_PREDICTION, PROJECTION_BALL, PROJECTION_BOX,
                     PassCounter, StrongResult)
from .projected import cospgd, pgd, segpgd
from .ensemble import MEMBERS as SEA_MEMBERS
from .ensemble import greedy_miou_selection, sea, worst_by_accuracy

STRONG_ATTACKS = ("pgd", "segpgd", "cospgd", "apgd_mce", "apgd_mce_bal", "apgd_js", "sea")
STRONG_NAMES = {"pgd": "PGD", "segpgd": "SegPGD", "cospgd": "CosPGD", "apgd_mce": "APGD (MCE)",
                "apgd_mce_bal": "APGD (MCE-Bal)", "apgd_js": "APGD (JS)", "sea": "SEA"}
# Display names of every attack, the paper's and these, for tables, figures and summaries.
ATTACK_NAMES = {**PAPER_NAMES, **STRONG_NAMES}

__all__ = ["apgd", "pgd", "segpgd", "cospgd", "sea", "greedy_miou_selection",
           "worst_by_accuracy", "StrongResult", "PassCounter", "STRONG_ATTACKS", "SEA_MEMBERS",
           "PROJECTION_BOX", "PROJECTION_BALL", "LABELS_PREDICTION", "LABELS_GROUND_TRUTH",
           "STRONG_NAMES", "ATTACK_NAMES"]
