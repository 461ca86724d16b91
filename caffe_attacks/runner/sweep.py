"""A run over a dataset: resume, progress bar, batches of one canvas size; summaries."""
import csv
import json

from caffe_attacks.runner.pipeline import attack_batch
from caffe_attacks.store import config_key
from caffe_attacks.strong_attacks import ATTACK_NAMES


def sweep(dataset, ids, source, targets, store, options, examples=None, progress=True,
          desc=None):
    """Run :func:`~caffe_attacks.runner.pipeline.attack_batch` over every image id still lacking.

    An id is done when the store holds every target configuration for it (and
    its examples exist, for the first ``examples.count`` ids). Images are
    attacked ``options.batch_images`` at a time, a batch holding one canvas
    size; an image that shows examples is attacked alone. Bad samples are
    skipped when the dataset was opened with skip_bad.
    """
    from tqdm import tqdm
    keys = [config_key(c) for t in targets for _, _, c in t.configs]
    todo = [i for i in ids if not all(store.has(k, i) for k in keys)]
    example_ids = set(ids[:examples.count]) if examples is not None else set()
    if example_ids:
        todo = sorted(set(todo) | {i for i in example_ids if not examples.exists(i)},
                      key=ids.index)
    bar = tqdm(total=len(ids), initial=len(ids) - len(todo), unit="img",
               desc=(desc or source.name)[:24], disable=not progress, dynamic_ncols=True)
    pending = []    # samples waiting to fill a batch of one canvas size

    def canvas(sample):
        return source.protocol.placement(sample.image.shape[:2]).canvas_hw

    def flush():
        if pending:
            attack_batch(pending, source, targets, store, options)
            bar.update(len(pending))
            pending.clear()

    for image_id in todo:
        sample = dataset.try_load(image_id)
        if sample is None:
            bar.update(1)
        elif options.batch_images == 1 or image_id in example_ids:
            attack_batch([sample], source, targets, store, options,
                         examples if image_id in example_ids else None)
            bar.update(1)
        else:
            if pending and canvas(pending[0]) != canvas(sample):
                flush()
            pending.append(sample)
            if len(pending) == options.batch_images:
                flush()
    flush()
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
