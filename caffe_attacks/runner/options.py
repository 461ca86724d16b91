"""RunOptions: every option of a run, typed, with its default and its check in one place.

The CLIs (``run``, ``transfer``) turn argparse's namespace into a RunOptions;
the experiments build one directly. Construction validates and normalises
(eps to floats, CRF overrides to their canonical types), so a RunOptions that
exists is usable; bad values raise :class:`~caffe_attacks.errors.UsageError`
naming the command-line option.
"""
import dataclasses
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Mapping, Optional, Tuple

from caffe_attacks.attacks import ATTACKS, PAPER_EPS, validate_alpha, validate_eps
# the one import of the dataset-kind list for the runner and its CLIs
from caffe_attacks.datasets import DATASET_KINDS
from caffe_attacks.errors import UsageError
from caffe_attacks.runner import registry
from caffe_attacks.runner.strong import LABEL_SOURCES, SEA_SELECTIONS
from caffe_attacks.strong_attacks.auto_pgd import TRACK as APGD_TRACK

ENGINES = ("caffe", "torch")
# as caffe_attacks.layers.meanfield.W2_MODES; that module needs pycaffe, which
# must not load before --blas-threads takes effect (so crf is imported lazily)
W2_MODES = ("scale_learned", "replace_diagonal")
IFGSM_LL_TARGETS = ("current", "clean")
# as caffe_attacks.datasets.cityscapes.IMAGE_DTYPES (float64: the authors' unrounded resize)
CITYSCAPES_IMAGE_DTYPES = ("float64", "float32", "uint8")

log = logging.getLogger(__name__)


def unique_values(values, option):
    """`values` without repeats, first occurrences in order; a repeat is logged as a note.

    A repeated --eps 8 8 or --attack fgsm fgsm (or a transfer --target given
    twice) is one configuration: running it twice would only write the same
    records again.
    """
    out, repeated = [], []
    for v in values:
        (repeated if v in out else out).append(v)
    if repeated:
        log.warning("%s repeats %s; each value runs once", option,
                    " ".join("%g" % v if isinstance(v, float) else str(v)
                             for v in dict.fromkeys(repeated)))
    return tuple(out)


@dataclass(frozen=True)
class RunOptions:
    """What to attack, how, on which data and where the results go.

    Model (one of): ``model`` (zoo name, ``NAME+crf``, ``NAME@VARIANT``) or
    ``prototxt`` [+ ``weights``]; ``protocol`` is input-protocol JSON text or
    a JSON file (default: the manifest's). ``crf``: overrides of the net's
    MultiStageMeanfield layer ({key: value}, or ``["KEY=VALUE", ...]``).
    Attacks: registry names (:mod:`caffe_attacks.runner.registry`); eps and
    alpha in 0..255 pixel units.
    """
    # model
    model: Optional[str] = None
    prototxt: Optional[str] = None
    weights: Optional[str] = None
    weights_dir: str = "weights"
    allow_unverified: bool = False
    random_init: bool = False       # no weights: the definition's fillers (seed 0)
    input_blob: Optional[str] = None
    score_blob: Optional[str] = None
    protocol: Optional[str] = None
    engine: str = "caffe"
    gpu: Optional[int] = None
    device: Optional[str] = None
    crf: Mapping[str, float] = field(default_factory=dict)
    crf_w2_mode: str = "scale_learned"
    blas_threads: Optional[int] = None
    # data
    dataset: Optional[str] = None
    data_dir: Optional[str] = None
    split: str = "val"
    limit: Optional[int] = None
    skip_bad: bool = False
    cityscapes_image_dtype: str = "float64"   # dtype of the resized Cityscapes image
    # attacks
    attacks: Tuple[str, ...] = ATTACKS        # the paper's four; any registered name works
    eps: Tuple[float, ...] = PAPER_EPS
    alpha: float = 1.0
    ifgsm_ll_target: str = "current"
    batch_eps: bool = False
    batch_images: int = 1
    clip_to_image: bool = False
    # the strong attacks (issue 17); iterations None: 100 PGD steps, 300 APGD iterations
    iterations: Optional[int] = None
    restarts: int = 1
    seed: int = 0
    pgd_alpha: Optional[float] = None           # None: 2.5 eps / steps
    strong_clip: bool = True                    # eps-ball and image box (False: ball only)
    apgd_track: str = "ce"
    class_weights: Optional[str] = None         # MCE-Bal table (default: by dataset)
    sea_selection: str = "miou"
    # the strong attacks' labels: the clean prediction (the paper's) or the ground truth
    strong_labels: str = "prediction"
    # output
    out: str = "results/results.h5"
    summary: Optional[str] = None
    save_examples: Optional[Tuple[str, int]] = None     # (directory, number of images)
    quiet: bool = False

    def __post_init__(self):
        def set_(name, value):
            object.__setattr__(self, name, value)

        if self.limit is not None and self.limit <= 0:
            raise UsageError("--limit must be positive")
        if self.batch_images is None or self.batch_images < 1:
            raise UsageError("--batch-images must be at least 1")
        if self.batch_images > 1 and self.batch_eps:
            raise UsageError("--batch-eps and --batch-images cannot be combined "
                             "(an eps batch holds one image)")
        if self.blas_threads is not None and self.blas_threads < 1:
            raise UsageError("--blas-threads must be at least 1")
        if self.engine not in ENGINES:
            raise UsageError("unknown engine %r (caffe or torch)" % self.engine)
        if self.dataset is not None and self.dataset not in DATASET_KINDS:
            raise UsageError("unknown dataset kind %r (one of %s)"
                             % (self.dataset, ", ".join(DATASET_KINDS)))
        if self.cityscapes_image_dtype not in CITYSCAPES_IMAGE_DTYPES:
            raise UsageError("--cityscapes-image-dtype must be one of %s"
                             % ", ".join(CITYSCAPES_IMAGE_DTYPES))
        if self.ifgsm_ll_target not in IFGSM_LL_TARGETS:
            raise UsageError("--ifgsm-ll-target must be one of %s" % ", ".join(IFGSM_LL_TARGETS))
        if self.crf_w2_mode not in W2_MODES:
            raise UsageError("--crf-w2-mode must be one of %s" % ", ".join(W2_MODES))
        if self.iterations is not None and self.iterations < 1:
            raise UsageError("--iterations must be at least 1")
        if self.restarts < 1:
            raise UsageError("--restarts must be at least 1")
        if self.pgd_alpha is not None and not (math.isfinite(self.pgd_alpha)
                                               and self.pgd_alpha > 0):
            raise UsageError("--pgd-alpha must be finite and > 0")
        if self.apgd_track not in APGD_TRACK:
            raise UsageError("--apgd-track must be one of %s" % ", ".join(APGD_TRACK))
        if self.sea_selection not in SEA_SELECTIONS:
            raise UsageError("--sea-selection must be one of %s" % ", ".join(SEA_SELECTIONS))
        if self.strong_labels not in LABEL_SOURCES:
            raise UsageError("--strong-labels must be one of %s" % ", ".join(LABEL_SOURCES))
        for a in self.attacks:
            registry.entry(a)
        set_("attacks", unique_values(self.attacks, "--attack"))
        try:
            set_("eps", unique_values(validate_eps(self.eps), "--eps"))
        except ValueError as e:
            raise UsageError("bad --eps: %s" % e) from None
        try:
            set_("alpha", validate_alpha(self.alpha))
        except ValueError as e:
            raise UsageError("bad --alpha: %s" % e) from None
        if self.gpu is not None and (isinstance(self.gpu, bool) or not isinstance(self.gpu, int)
                                     or self.gpu < 0):
            raise UsageError("--gpu must be a device number >= 0, got %r" % (self.gpu,))
        if self.random_init and self.weights:
            raise UsageError("--random-init and --weights exclude each other")
        if self.crf:
            from caffe_attacks import crf as crf_variants
            try:
                overrides = self.crf if isinstance(self.crf, Mapping) else \
                    crf_variants.parse_overrides(self.crf)
                set_("crf", crf_variants.normalize_overrides(overrides))
            except crf_variants.CrfError as e:
                raise UsageError("bad --crf: %s" % e) from None
        else:
            set_("crf", {})
        if self.save_examples is not None:
            directory, count = self.save_examples
            try:
                count = int(count)
            except (TypeError, ValueError):
                raise UsageError("--save-examples DIR K: K must be an integer") from None
            if count < 0:
                raise UsageError("--save-examples DIR K: K must be >= 0")
            if os.path.exists(str(directory)) and not os.path.isdir(str(directory)):
                raise UsageError("--save-examples DIR K: %s exists and is not a directory"
                                 % directory)
            set_("save_examples", (str(directory), count))

    def replace(self, **changes):
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @property
    def summary_prefix(self):
        """Where the summary .json/.csv go: --summary, or --out without .h5."""
        if self.summary:
            return self.summary
        return self.out[:-3] if self.out.endswith(".h5") else self.out

    def crf_record(self):
        """The records' "crf" field: the overrides (+ w2_mode with w2), None without any."""
        if not self.crf:
            return None
        from caffe_attacks import crf as crf_variants
        return crf_variants.record_field(self.crf, self.crf_w2_mode)
