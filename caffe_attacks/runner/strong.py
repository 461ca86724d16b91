"""The strong attacks in the runner: registry adapters, their record options and costs, SEA.

Adapters give :mod:`caffe_attacks.strong_attacks` the registry's signature
``fn(model, x, eps_list, **kwargs) -> [x_adv]`` and check that the passes an
attack used equal the schedule the record states (``passes``), so a stored
cost is a measured one. The labels are the clean prediction (the paper's
convention) or, with ``strong_labels="ground_truth"``, each image's label on
the source net's score grid (:meth:`Protocol.label_to_score_grid`, void
outside the image), which the pipeline passes as ``label_grids``; then the
attack needs no clean-label forward. Unless ``strong_clip`` is off the
attacks project onto the eps-ball intersected with the valid image box.

SEA is not run as one attack: ``--attack sea`` runs its three APGD members
as ordinary configurations (so stored member records are reused, and a
member run is also a SEA run), and :func:`add_sea_records` forms SEA's
records from the members' stored confusion matrices.
"""
import hashlib
import json
import os

import numpy as np

from caffe_attacks.datasets.class_weights import load_class_weights
from caffe_attacks.errors import UsageError
from caffe_attacks.store import Record, config_key
from caffe_attacks.strong_attacks import (apgd, cospgd, greedy_miou_selection, pgd, segpgd,
                                          worst_by_accuracy)
from caffe_attacks.strong_attacks.auto_pgd import expected_passes
from caffe_attacks.strong_attacks.common import LABELS_GROUND_TRUTH, LABELS_PREDICTION
from caffe_attacks.strong_attacks.ensemble import MEMBER_LOSSES, MEMBERS

PGD_ATTACKS = ("pgd", "segpgd", "cospgd")
APGD_ATTACKS = ("apgd_mce", "apgd_mce_bal", "apgd_js")
STRONG = PGD_ATTACKS + APGD_ATTACKS + ("sea",)
LABEL_SOURCES = (LABELS_PREDICTION, LABELS_GROUND_TRUTH)
DEFAULT_PGD_STEPS = 100
DEFAULT_APGD_ITERATIONS = 300
SEA_SELECTIONS = ("miou", "accuracy")
DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")
_PGD_FUNCTIONS = {"pgd": pgd, "segpgd": segpgd, "cospgd": cospgd}


def iterations_of(options, attack):
    if options.iterations is not None:
        return options.iterations
    return DEFAULT_PGD_STEPS if attack in PGD_ATTACKS else DEFAULT_APGD_ITERATIONS


def default_class_weights(options):
    """The table for the run's dataset (a file name in caffe_attacks/data); None without one.

    Without a dataset (the defaults a store query starts from) there is no
    table, so a query that names none matches whichever the run used.
    """
    if options.dataset is None:
        return None
    if options.dataset == "synthetic":
        fmt = "voc"
        meta = os.path.join(options.data_dir or "", "synthetic.json")
        if options.data_dir and os.path.isfile(meta):
            with open(meta) as f:
                fmt = json.load(f).get("format", "voc")
        return "class_weights_synthetic_%s.json" % fmt
    return "class_weights_%s.json" % options.dataset


def class_weights_path(name):
    path = name if os.path.isabs(name) or os.path.exists(name) else os.path.join(DATA_DIR, name)
    if not os.path.exists(path):
        raise UsageError("class-weight table %s not found; make it with `python -m "
                         "caffe_attacks.datasets.class_weights --dataset KIND --data-dir D "
                         "--split train --out %s` (or pass --class-weights FILE)" % (name, path))
    return path


def pgd_record_options(attack):
    def record(options):
        return {"clip_to_image": bool(options.strong_clip), "labels": options.strong_labels,
                "steps": iterations_of(options, attack), "restarts": options.restarts,
                "alpha": options.pgd_alpha, "seed": options.seed}
    return record


def apgd_record_options(attack):
    def record(options):
        opts = {"clip_to_image": bool(options.strong_clip), "labels": options.strong_labels,
                "iterations": iterations_of(options, attack), "track": options.apgd_track}
        table = options.class_weights or default_class_weights(options)
        if attack == "apgd_mce_bal" and table:
            opts["class_weights"] = table
        return opts
    return record


def uses_ground_truth(record_opts):
    """True when a record's attack takes the ground truth as labels (no clean-label forward)."""
    return record_opts.get("labels") == LABELS_GROUND_TRUTH


def pgd_cost(opts):
    restarts, steps = opts["restarts"], opts["steps"]
    clean_labels = 0 if uses_ground_truth(opts) else 1
    return {"forward": clean_labels + restarts * steps + (restarts if restarts > 1 else 0),
            "backward": restarts * steps}


def apgd_cost(opts):
    forward, backward = expected_passes(opts["iterations"],
                                        clean_labels=not uses_ground_truth(opts))
    return {"forward": forward, "backward": backward}


def attack_labels(labels, label_grids):
    """The ``labels=`` of a strong attack function: None (the clean prediction) or the grids.

    labels: the record's "labels"; label_grids: (N, h, w) ground truth on the
    source's score grid, which the pipeline gives exactly when labels says so.
    """
    if labels == LABELS_PREDICTION:
        return None
    if label_grids is None:
        raise RuntimeError("ground-truth labels were asked for but the pipeline gave none")
    return label_grids


def _checked(result, cost):
    if (result.n_forward, result.n_backward) != (cost["forward"], cost["backward"]):
        raise RuntimeError("the attack used %d forward and %d backward passes, its schedule "
                           "says %d and %d" % (result.n_forward, result.n_backward,
                                               cost["forward"], cost["backward"]))
    return result.x_adv


def pgd_adapter(attack):
    def run(model, x, eps_list, *, clip_to_image, labels, steps, restarts, alpha, seed,
            label_grids=None):
        cost = pgd_cost({"steps": steps, "restarts": restarts, "labels": labels})
        grids = attack_labels(labels, label_grids)
        out = []
        for e in eps_list:
            # one Generator per eps from the recorded seed: a record does not
            # depend on which other eps ran in the same call
            r = _PGD_FUNCTIONS[attack](model, x, e, steps=steps, alpha=alpha, restarts=restarts,
                                       seed=seed, labels=grids, clip_to_image=clip_to_image)
            out.append(_checked(r, cost) if e else r.x_adv)
        return out
    return run


def apgd_adapter(attack):
    def run(model, x, eps_list, *, clip_to_image, labels, iterations, track, class_weights=None,
            label_grids=None):
        weights = load_class_weights(class_weights_path(class_weights)) if class_weights else None
        classes = getattr(model, "num_classes", None)
        if weights is not None and classes is not None and weights.size != classes:
            raise UsageError("class-weight table %s has %d classes, the model %d"
                             % (class_weights, weights.size, classes))
        cost = apgd_cost({"iterations": iterations, "labels": labels})
        grids = attack_labels(labels, label_grids)
        out = []
        for e in eps_list:
            r = apgd(model, x, e, loss=MEMBER_LOSSES[attack], iterations=iterations,
                     class_weights=weights, labels=grids, track=track,
                     clip_to_image=clip_to_image)
            out.append(_checked(r, cost) if e else r.x_adv)
        return out
    return run


def sea_record_options(options):
    opts = dict(apgd_record_options("apgd_mce_bal")(options), selection=options.sea_selection)
    if options.sea_selection == "miou":
        opts["seed"] = options.seed
    return opts


def sea_fn(model, x, eps_list, **kwargs):
    raise RuntimeError("sea is formed from its members' records (runner.strong.add_sea_records)")


def expand_attacks(attacks):
    """The attacks the pipeline runs: SEA's members instead of SEA, each once, in order."""
    out = []
    for a in attacks:
        for m in (MEMBERS if a == "sea" else (a,)):
            if m not in out:
                out.append(m)
    return out


def _ids_digest(ids):
    return {"n": len(ids), "sha1": hashlib.sha1("\n".join(ids).encode()).hexdigest()}


def sea_configs(member_configs, sea_options, eps_list, ids):
    """[("sea", eps, config)] for every eps whose three member configurations are given.

    member_configs: {(attack, eps): config}; sea_options: SEA's record
    options. With the mIoU selection the record depends on the whole image
    set, which its config names.
    """
    out = []
    for e in eps_list:
        members = [member_configs.get((m, e)) for m in MEMBERS]
        if e == 0 or any(c is None for c in members):
            continue
        base = {k: v for k, v in members[0].items() if k not in ("attack", "options", "passes")}
        config = dict(base, attack="sea", eps=e, options=dict(sea_options),
                      members=[config_key(c) for c in members],
                      passes={k: sum(c["passes"][k] for c in members)
                              for k in ("forward", "backward")})
        if sea_options["selection"] == "miou":
            config["image_set"] = _ids_digest(ids)
        out.append(("sea", e, config))
    return out


def add_sea_records(store, configs, ids):
    """Form and store SEA's records from its members' stored records; returns how many.

    configs: from :func:`sea_configs`. Images missing a member record are left
    out (their SEA record appears once the members are complete); with the
    mIoU selection SEA is formed only when every image of the set has all three.
    """
    added = 0
    for _, _, config in configs:
        key = config_key(config)
        rows = []
        for member_key in config["members"]:
            by_id = {r["id"]: r for r in store.records(member_key)}
            rows.append(by_id)
        complete = [i for i in ids if all(i in r for r in rows)]
        todo = [i for i in complete if not store.has(key, i)]
        if not todo:
            continue
        if config["options"]["selection"] == "miou":
            if len(complete) < len(ids):
                continue
            cms = np.stack([[np.asarray(r[i]["cm_adv"], np.int64) for i in ids] for r in rows])
            choice = dict(zip(ids, greedy_miou_selection(cms, seed=config["options"]["seed"])
                              .choice))
        else:
            cms = np.stack([[np.asarray(r[i]["cm_adv"], np.int64) for i in todo] for r in rows])
            choice = dict(zip(todo, worst_by_accuracy(cms)))
        for i in todo:
            r = rows[choice[i]][i]
            seconds = sum(float(m[i]["seconds"]) for m in rows)
            store.add_image([Record(config, i, np.asarray(r["cm_clean"], np.int64),
                                    np.asarray(r["cm_adv"], np.int64), float(r["conf_sum"]),
                                    float(r["ent_sum"]), int(r["npix"]), float(r["max_delta"]),
                                    seconds)])
            added += 1
    return added
