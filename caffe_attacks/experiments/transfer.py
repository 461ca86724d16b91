"""The multiscale and transfer experiments: Tables A13-A18, Figures A6-A8 (and A12's panel).

:func:`run_experiment` is the experiment runner of the multiscale_clean,
transfer_matrix and transfer_curves kinds: it runs, through
:mod:`caffe_attacks.runner.transfer`, every transfer a definition needs that
the store lacks.
"""
from caffe_attacks import weights as W
from caffe_attacks.errors import UsageError
from caffe_attacks.experiments.jobs import EnsureReport, Job, Missing, check_job, data_dir_for
from caffe_attacks.runner import RunOptions, image_ids, open_data
from caffe_attacks.runner.transfer import resolve_net, run_transfer
from caffe_attacks.runner.units import DEFAULT_UNIT_IMAGES
from caffe_attacks.store import ResultsStore
from caffe_attacks.zoo.multiscale import parse_member


def experiment_runs(defn):
    """The transfer runs a multiscale/transfer definition needs.

    Parameters
    ----------
    defn : a multiscale_clean, transfer_matrix or transfer_curves definition
        (raw, or normalised by definitions.normalize, which keeps it as "original")

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
    """Missing entries for the nets ``labels`` on ``dataset`` (empty: can run)."""
    out, seen = [], set()
    weights_dir = context.get("weights_dir", "weights")
    for label in labels:
        try:
            zoo_name = parse_member(label).zoo_name
        except ValueError as e:
            out.append(Missing(label, str(e)))
            continue
        for m in check_job(Job(zoo_name, dataset, split), context.get("data_dirs"), weights_dir):
            # nets that share a caffemodel (NAME and NAME+crf) name it once
            key = str(W.weights_file(W.model_entry(zoo_name), weights_dir)) \
                if m.what.startswith("weights:") else m.what
            if key not in seen:
                seen.add(key)
                out.append(m)
    return out


class ExperimentSession:
    """Runs transfer jobs into one store for an experiment; nets are loaded once.

    context: as experiments.ensure gives it (store_path, data_dirs,
    weights_dir, limit, progress, gpu).
    """

    def __init__(self, dataset, split, context):
        self.context = context
        self.options = RunOptions(
            dataset=dataset, data_dir=data_dir_for(dataset, context.get("data_dirs")),
            split=split, weights_dir=str(context.get("weights_dir", "weights")),
            gpu=context.get("gpu"), quiet=not context.get("progress", True),
            attacks=(), eps=(0.0,))
        self.dataset = open_data(self.options)
        self.executor = context.get("executor")
        # with workers, this process only writes the store: its nets stay on the CPU
        self.local_options = self.options if self.executor is None else \
            self.options.replace(gpu=None, device=None)
        self.ids = image_ids(self.dataset, context.get("limit"))
        self.nets = {}

    def net(self, label):
        if label not in self.nets:
            self.nets[label] = resolve_net(label, self.local_options, self.dataset)
        return self.nets[label]

    def run(self, source, targets, attacks, eps):
        """One transfer run (resumable); source None: the targets' clean records only."""
        nets = [self.net(t) for t in targets]
        src = self.net(source) if source else nets[0]
        options = self.options.replace(attacks=tuple(attacks), eps=tuple(eps) or (0.0,))
        with ResultsStore(self.context["store_path"]) as store:
            run_transfer(self.dataset, self.ids, src, nets, store, options,
                         progress=self.context.get("progress", True), executor=self.executor,
                         unit_images=self.context.get("unit_images", DEFAULT_UNIT_IMAGES))


def describe_run(source, targets, attacks, eps):
    if source is None:
        return "clean %s" % ", ".join(targets)
    return "%s -> %s (%s at eps %s)" % (source, ", ".join(targets), ", ".join(attacks),
                                         " ".join("%g" % e for e in eps))


def run_experiment(defn, context):
    """The experiment runner of multiscale_clean, transfer_matrix and transfer_curves.

    Runs (resumably, into context["store_path"]) every transfer the definition
    needs; returns an EnsureReport (missing weights or data are listed there,
    nothing raises for them).
    """
    report = EnsureReport()
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
