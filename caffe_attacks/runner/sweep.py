"""A run over a dataset: resume, progress bar, batches of one canvas size, executors; summaries."""
import csv
import json

from caffe_attacks.errors import UsageError
from caffe_attacks.runner.units import DEFAULT_UNIT_IMAGES, attack_ids, make_units, todo_ids
from caffe_attacks.store import config_key
from caffe_attacks.strong_attacks import ATTACK_NAMES


def sweep(dataset, ids, source, targets, store, options, examples=None, progress=True,
          desc=None, executor=None, spec=None, unit_images=DEFAULT_UNIT_IMAGES):
    """Run :func:`~caffe_attacks.runner.pipeline.attack_batch` over every image id still lacking.

    An id is done when the store holds every target configuration for it (and
    its examples exist, for the first ``examples.count`` ids). Images are
    attacked ``options.batch_images`` at a time, a batch holding one canvas
    size; an image that shows examples is attacked alone. Bad samples are
    skipped when the dataset was opened with skip_bad.

    executor: None attacks in this process. Otherwise an object with
    ``run(spec, units)`` yielding ``(unit, UnitResult)`` as units
    finish, in any order (:mod:`caffe_attacks.experiments.executors`); the
    units are the lacking ids in chunks of ``unit_images``, ``spec`` the
    :class:`~caffe_attacks.runner.units.WorkSpec` its workers rebuild the
    nets from. Either way this process alone writes the store, one image at
    a time, so a killed driver resumes from it like a single-process run.
    """
    from tqdm import tqdm
    todo = todo_ids(ids, targets, store)
    example_ids = set(ids[:examples.count]) if examples is not None else set()
    if example_ids:
        todo = sorted(set(todo) | {i for i in example_ids if not examples.exists(i)},
                      key=ids.index)
    bar = tqdm(total=len(ids), initial=len(ids) - len(todo), unit="img",
               desc=(desc or source.name)[:24], disable=not progress, dynamic_ncols=True)
    if executor is None:
        attack_ids(dataset, todo, source, targets, store, options, examples, example_ids,
                   on_image=bar.update)
    else:
        if example_ids:
            raise UsageError("--save-examples runs in one process; drop --workers/--executor")
        if spec is None:
            raise ValueError("an executor needs the WorkSpec its workers load")
        units = make_units(todo, targets, store, unit_images)
        for done, (unit, result) in enumerate(executor.run(spec, units), 1):
            for records in result.images:
                store.add_image(records)
            # the workers' bad samples, as if this process had skipped them
            dataset.skipped.extend(result.skipped)
            bar.update(len(unit.ids))
            bar.set_postfix_str("units %d/%d" % (done, len(units)), refresh=False)
    bar.close()


def summarize(store, configs, ids, with_source=False):
    """Summary rows (attack, eps, the store's summary over ``ids``) of stored configurations.

    with_source: add the crafting net's name ("source", None for clean rows).
    """
    rows = []
    for attack, e, config in configs:
        s = store.summary(config_key(config), ids=ids)
        if s is None:
            continue
        row = {"attack": attack, "eps": e}
        if with_source:
            row["source"] = (config.get("source") or {}).get("model")
        row.update((k, v) for k, v in s.items() if k != "ids")
        rows.append(row)
    return rows


def format_table(rows):
    """Attack x eps table of mIoU (%), IoU Ratio, confidence and entropy."""
    head = "%-18s %6s %7s %9s %6s %7s %7s" % ("attack", "eps", "mIoU%", "IoU ratio",
                                              "conf", "entropy", "images")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append("%-18s %6g %7.1f %9.3f %6.3f %7.3f %7d" % (
            ATTACK_NAMES.get(r["attack"], r["attack"]), r["eps"], 100 * r["miou"],
            r["iou_ratio"], r["confidence"], r["entropy"], r["n_images"]))
    return "\n".join(lines)


SUMMARY_FIELDS = ["attack", "eps", "miou", "miou_clean", "iou_ratio", "pixel_accuracy",
                  "confidence", "entropy", "max_delta", "n_images", "seconds"]


def write_summaries(rows, prefix, meta):
    """<prefix>.json (meta and rows) and <prefix>.csv (rows)."""
    with open(prefix + ".json", "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=2, default=float)
    with open(prefix + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=SUMMARY_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
