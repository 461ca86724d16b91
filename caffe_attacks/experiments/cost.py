"""What a table costs: units, images, forward and backward passes per net and attack.

The counts are what the runner does (:mod:`caffe_attacks.runner.pipeline`
with the attacks of :mod:`caffe_attacks.attacks`), image by image:

- every image still lacking a record gets one clean forward on every target;
- FGSM and FGSM II: one forward and one backward, shared by every eps;
- Iterative FGSM: one forward (the clean prediction it keeps), then T(eps)
  forward+backward steps per eps, T(eps) = max(ceil(min(eps + 4, 1.25 eps)), 1);
- Iterative FGSM II: T(eps) steps per eps (its target is recomputed every
  step), plus one forward with ``target="clean"``;
- the strong attacks (PGD, SegPGD, CosPGD, APGD with its three losses):
  the passes their registry entry's ``cost`` gives for one eps (the record's
  ``"passes"``, which the runner checks against the passes the attack used),
  once per eps, as each eps is a run of its own (with ``labels:
  ground_truth`` without the clean-label forward; if no target is the source
  itself, the source's score grid then costs one forward of the image);
- SEA: its three APGD members, each counted as itself; SEA's own records are
  formed by the driver from the members' stored records, with no pass;
- every (attack, eps) record lacking: one evaluation forward on its target;
- an eps every target already holds is not attacked again, an image whose
  records are all stored is skipped.

A pass over a batch of k rows (``--batch-eps``, ``--batch-images``) counts
as k passes. ``tests/test_cost.py`` checks these counts against a counting
wrapper around a real model running the real pipeline.
"""
import math
import time
from dataclasses import dataclass, field

import numpy as np

from caffe_attacks.attacks import num_iterations
from caffe_attacks.experiments.definitions import DATA_VARIABLE, FULL_SPLIT_SIZE
from caffe_attacks.experiments.jobs import plan, queries_of
from caffe_attacks.experiments.queries import default_options, find_config
from caffe_attacks.experiments.transfer import experiment_runs
from caffe_attacks.runner import registry
from caffe_attacks.runner.strong import expand_attacks, uses_ground_truth


def single_step_passes(eps, options):
    return (1, 1) if eps else (0, 0)


def ifgsm_passes(eps, options):
    steps = sum(num_iterations(e) for e in eps)
    return (1 + steps, steps) if eps else (0, 0)


def ifgsm_ll_passes(eps, options):
    steps = sum(num_iterations(e) for e in eps)
    fixed = 1 if options.get("target") == "clean" else 0
    return (fixed + steps, steps) if eps else (0, 0)


# The paper's attacks share passes across the eps of one call (one FGSM
# gradient for every eps), which a per-record cost cannot say:
# attack -> passes(eps list, record options) -> (forwards, backwards) of one image.
# Every other attack is counted from its registry entry's per-record cost.
ATTACK_PASSES = {"fgsm": single_step_passes, "fgsm_ll": single_step_passes,
                 "ifgsm": ifgsm_passes, "ifgsm_ll": ifgsm_ll_passes}


def register_passes(attack, passes):
    """Count the passes of an attack whose eps share passes (overrides its registry cost)."""
    ATTACK_PASSES[attack] = passes


def registry_passes(attack, eps, options):
    """(forwards, backwards) of ``attack`` at every eps from its registry cost; None without one.

    options: its record options ({} or None: the runner's defaults).
    """
    if attack not in registry.names():
        return None
    opts = options or default_options(attack)
    per_eps = registry.cost(attack, opts)
    if per_eps is None:
        return None
    return per_eps["forward"] * len(eps), per_eps["backward"] * len(eps)


def attack_passes(attack, eps, options=None):
    """(forwards, backwards) crafting one image at every eps of ``eps``; None if unknown.

    SEA counts its three APGD members (each with SEA's record options, as the
    runner runs them).
    """
    eps = sorted(float(e) for e in eps if e)
    members = expand_attacks([attack])
    if members != [attack]:
        parts = [attack_passes(m, eps, options) for m in members]
        if any(p is None for p in parts):
            return None
        return tuple(map(sum, zip(*parts)))
    fn = ATTACK_PASSES.get(attack)
    if fn is not None:
        return fn(eps, options or {})
    return registry_passes(attack, eps, options)


@dataclass
class Run:
    """One sweep: attacks crafted on ``source``, evaluated on every target."""
    source: str
    targets: list
    attacks: list
    eps: list
    dataset: str
    split: str
    transfer: bool = False

    def pipeline_attacks(self):
        """The attacks the pipeline runs: SEA as its three APGD members (each once)."""
        return expand_attacks(self.attacks)


def table_runs(defn):
    """The runs a table needs (runner jobs or transfers); [] for a table that runs nothing."""
    d = defn.get("original", defn)
    if d["kind"] in ("multiscale_clean", "transfer_matrix", "transfer_curves"):
        split = d.get("split", "val")
        return [Run(s or ts[0], list(ts), list(a), list(e), d["dataset"], split, s is not None)
                for s, ts, a, e in experiment_runs(d)]
    return [Run(j.model, [j.model], list(j.attacks), list(j.eps), j.dataset, j.split)
            for j in plan(queries_of(defn))]


@dataclass
class Cost:
    """Passes of one run: images to do, units, and {(net, what): [forwards, backwards]}."""
    run: Run
    images: int
    held: int
    units: int
    passes: dict = field(default_factory=dict)
    unknown: list = field(default_factory=list)     # attacks without a pass count

    def add(self, net, what, forwards, backwards):
        """One more image needing ``forwards`` and ``backwards`` of ``net`` for ``what``."""
        p = self.passes.setdefault((net, what), [0, 0, 0])
        p[0] += forwards
        p[1] += backwards
        p[2] += 1

    def totals(self):
        return (sum(p[0] for p in self.passes.values()),
                sum(p[1] for p in self.passes.values()))


def image_passes(run, missing, options_of):
    """{(net, what): (forwards, backwards)} of one image lacking the records ``missing``.

    missing: set of (target, attack, eps) (attack "clean", eps 0 for a clean record;
    SEA's members, never SEA, whose records cost no pass).
    options_of: attack -> its record options.
    """
    out = {}
    if not missing:
        return out, []
    for t in run.targets:
        out[(t, "clean")] = (1, 0)
    unknown = []
    for a in run.pipeline_attacks():
        eps = sorted({e for t, aa, e in missing if aa == a})
        if not eps:
            continue
        if uses_ground_truth(options_of(a) or {}) and run.source not in run.targets:
            # the pipeline's one forward (per batch) that finds the source's score grid
            out[(run.source, "label grid")] = (1, 0)
        p = attack_passes(a, eps, options_of(a))
        if p is None:
            unknown.append(a)
        else:
            f, b = out.get((run.source, a), (0, 0))
            out[(run.source, a)] = (f + p[0], b + p[1])
        for t, aa, e in missing:
            if aa == a:
                f, b = out.get((t, "evaluation"), (0, 0))
                out[(t, "evaluation")] = (f + 1, b)
    return out, unknown


def run_cost(run, store=None, ids=None, n_images=None, unit_images=4, options_of=None):
    """The :class:`Cost` of a run given what ``store`` holds.

    ids: the dataset's image ids (exact); without them ``n_images`` images
    (default the full split) of which the stored ids are taken to be part.
    """
    options_of = options_of or default_options
    # what the sweep looks for: SEA's records are formed afterwards from its members'
    wanted = [(t, "clean", 0.0) for t in run.targets] + \
        [(t, a, float(e)) for t in run.targets for a in run.pipeline_attacks()
         for e in run.eps if e]
    held = {}
    for t, a, e in wanted:
        query = {"model": t, "dataset": run.dataset, "split": run.split, "attack": a, "eps": e}
        if a != "clean":
            query["options"] = dict(options_of(a))
            if run.transfer:
                query["source"] = {"model": run.source}
        key = find_config(store, query) if store is not None else None
        held[(t, a, e)] = set(store.summary(key)["ids"]) if key else set()
    if ids is None:
        total = n_images or FULL_SPLIT_SIZE.get((run.dataset, run.split), 0)
        known = sorted(set().union(*held.values()))[:total]
        ids = known + [None] * (total - len(known))     # None: an image nothing holds
    cost = Cost(run, len(ids), 0, 0)
    todo = 0
    for image_id in ids:
        missing = {w for w in wanted if image_id not in held[w]}
        if not missing:
            cost.held += 1
            continue
        todo += 1
        passes, unknown = image_passes(run, missing, options_of)
        cost.unknown += [a for a in unknown if a not in cost.unknown]
        for (net, what), (f, b) in passes.items():
            cost.add(net, what, f, b)
    cost.units = math.ceil(todo / unit_images)
    return cost


def net_canvas(label):
    """(prototxt text or path, score blob, input blob, (H, W)) of net ``label`` at its canvas."""
    from caffe_attacks import weights as W
    from caffe_attacks import zoo
    from caffe_attacks.preprocess import Protocol
    from caffe_attacks.zoo.multiscale import member_net, parse_member
    member = parse_member(label)
    spec = zoo.get(member.zoo_name)
    protocol = Protocol.from_dict(W.model_entry(member.zoo_name)["input"])
    hw = tuple(protocol.canvas) if protocol.canvas else tuple(spec.reference_input)
    if member.generated:
        text, ms = member_net(member, input_hw=hw)
        return text, ms.score_blob, spec.input_blob, hw
    return str(zoo.prototxt_path(member.zoo_name)), spec.score_blob, spec.input_blob, hw


def time_passes(model, hw, repeats=2):
    """(seconds per forward, seconds per backward) of ``model`` on a random (1, 3, H, W) input."""
    rng = np.random.default_rng(0)
    x = rng.normal(0, 50, (1, 3) + tuple(hw)).astype(np.float32)
    scores = model.forward(x)          # warm-up: allocations, first-call costs
    dscores = rng.normal(0, 1, scores.shape).astype(np.float32)
    model.input_gradient(x, dscores)
    t0 = time.perf_counter()
    for _ in range(repeats):
        model.forward(x)
    t_forward = (time.perf_counter() - t0) / repeats
    t0 = time.perf_counter()
    for _ in range(repeats):
        model.forward(x)
        model.input_gradient(x, dscores)
    t_backward = max(0.0, (time.perf_counter() - t0) / repeats - t_forward)
    return t_forward, t_backward


def measure_net(label, engine="caffe", repeats=2, gpu=None, device=None):
    """Seconds per forward and backward of net ``label`` at its canvas, random weights.

    Returns (t_forward, t_backward, (H, W)).
    """
    from caffe_attacks.runner.resolve import load_engine
    definition, score_blob, input_blob, hw = net_canvas(label)
    model = load_engine(engine, definition, None, gpu, input_blob, score_blob, device)
    return time_passes(model, hw, repeats) + (hw,)


def hours(seconds):
    return "%.2f h" % (seconds / 3600.0) if seconds >= 360 else "%.1f s" % seconds


def row_order(run, net_item):
    """Nets as the run names them (source first); per net: clean, attacks, evaluation."""
    net, item = net_item
    nets = list(dict.fromkeys([run.source] + run.targets))
    items = ["clean"] + run.pipeline_attacks() + ["evaluation"]
    return nets.index(net), items.index(item) if item in items else len(items)


def format_plan(name, costs, timings=None, workers=1):
    """The plan of one table as text: a row per (net, attack), then totals and estimates.

    timings: {net: (s per forward, s per backward, (H, W))} from :func:`measure_net`;
    the estimate for N workers is the 1-worker time / N (benchmarks/scaling.py
    measures how close the executors come).
    """
    timings = timings or {}
    head = "%-34s %-12s %7s %10s %10s" % ("net", "passes for", "images", "forwards", "backwards")
    if timings:
        head += " %9s %9s %11s" % ("s/fwd", "s/bwd", "est. time")
    lines = ["%s: %d run(s)" % (name, len(costs)), head, "-" * len(head)]
    total_f = total_b = total_s = 0.0
    unknown = set()
    for c in costs:
        what = ("%s -> %s" % (c.run.source, ", ".join(c.run.targets)) if c.run.transfer
                else c.run.source)
        lines.append("# %s on %s/%s: %d images, %d stored, %d unit(s)"
                     % (what, c.run.dataset, c.run.split, c.images, c.held, c.units))
        if not c.images and (c.run.dataset, c.run.split) not in FULL_SPLIT_SIZE:
            lines.append("# (its size is unknown here: point %s= at the %s set to count it)"
                         % (DATA_VARIABLE.get(c.run.dataset, c.run.dataset.upper() + "_DIR"),
                            c.run.dataset))
        for a in c.run.attacks:
            members = expand_attacks([a])
            if members != [a]:
                lines.append("# %s: formed from the records of %s, no passes of its own"
                             % (a, ", ".join(members)))
        for (net, item), (f, b, n) in sorted(c.passes.items(), key=lambda kv: row_order(c.run,
                                                                                        kv[0])):
            line = "%-34s %-12s %7d %10d %10d" % (net[:34], item, n, f, b)
            if net in timings:
                tf, tb, _ = timings[net]
                seconds = f * tf + b * tb
                total_s += seconds
                line += " %9.3f %9.3f %11s" % (tf, tb, hours(seconds))
            lines.append(line)
        f, b = c.totals()
        total_f += f
        total_b += b
        unknown.update(c.unknown)
    lines.append("-" * len(head))
    units = sum(c.units for c in costs)
    lines.append("total: %d unit(s), %d forwards, %d backwards" % (units, total_f, total_b))
    if timings:
        lines.append("estimated: %s with 1 worker, %s with %d workers"
                     % (hours(total_s), hours(total_s / max(1, workers)), max(1, workers)))
        lines += ["canvas %s: %dx%d" % (net, hw[0], hw[1]) for net, (_, _, hw) in timings.items()]
    if unknown:
        lines.append("not counted (no pass count registered): %s" % ", ".join(sorted(unknown)))
    return "\n".join(lines)
