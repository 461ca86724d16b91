"""Qualitative examples (Figures A1-A3): one attacked image per model, saved for the figures.

The arrays come out of the runner's pipeline (no record is written) into
``<examples_dir>/<definition id>/<model>.npz``; report/figures.py draws them.
"""
import os

import numpy as np

from caffe_attacks.experiments.jobs import Job, job_options
from caffe_attacks.runner import Target, attack_batch, make_configs, open_data, record_base
from caffe_attacks.runner import resolve_model
from caffe_attacks.visualize import bgr_to_rgb_uint8


def default_examples_dir(store_path):
    return os.path.join(os.path.dirname(os.path.abspath(str(store_path))), "examples")


def example_jobs(defn):
    """One Job per model of a perturbation or qualitative_grid definition."""
    models = defn.get("models") or [defn["model"]]
    attacks = defn.get("attacks") or [defn["attack"]]
    eps = [float(e) for e in defn["eps"] if e]
    return [Job(m, defn["dataset"], defn.get("split", "val"), list(attacks), eps) for m in models]


def example_path(examples_dir, exp_id, model):
    return os.path.join(examples_dir, exp_id, "%s.npz" % model)


class ExampleArrays:
    """Pipeline examples sink collecting what the figures show, as arrays.

    After :meth:`save`: ``arrays`` with image_rgb (H, W, 3) uint8, label (H, W),
    palette (256, 3), mean_bgr (3,), clean_pred (H, W), image_id, and per
    (attack, eps) tag ``<attack>_<eps>``: delta_<tag> (H, W, 3) float32 BGR
    perturbation on the image grid, adv_rgb_<tag> (H, W, 3) uint8, pred_<tag> (H, W) uint8.
    """
    count = 1

    def __init__(self, palette):
        self.palette = palette
        self.arrays = None

    def save(self, sample, rm, x, ctx, pred_clean, shown):
        mean = np.zeros(3, np.float32) if rm.protocol.mean_bgr is None else \
            np.asarray(rm.protocol.mean_bgr, np.float32)
        arrays = {"image_rgb": bgr_to_rgb_uint8(sample.image), "label": sample.label,
                  "palette": np.asarray(self.palette, np.uint8), "mean_bgr": mean,
                  "clean_pred": pred_clean.astype(np.uint8), "image_id": np.array(sample.id)}
        for attack, e, x_adv, pred in shown:
            tag = "%s_%g" % (attack, e)
            # input_to_image undoes the mean, so the delta comes back with it added
            delta = rm.protocol.input_to_image(x_adv - x, ctx) - mean
            arrays["delta_" + tag] = delta.astype(np.float32)
            arrays["adv_rgb_" + tag] = bgr_to_rgb_uint8(rm.protocol.input_to_image(x_adv, ctx))
            arrays["pred_" + tag] = pred.astype(np.uint8)
        self.arrays = arrays


def save_examples(defn, job, examples_dir, data_dirs, weights_dir, gpu=None, override=None):
    """Attack one image (defn 'image_index', default 0) and save what the figures show.

    Writes <examples_dir>/<id>/<model>.npz (see :class:`ExampleArrays`);
    skipped when the file exists (resumable). Returns its path.
    """
    path = example_path(examples_dir, defn["id"], job.model)
    if os.path.exists(path):
        return path
    options = job_options(job, data_dirs, weights_dir, gpu=gpu, override=override,
                          progress=False)
    dataset = open_data(options)
    rm = resolve_model(options)
    sample = dataset.load(dataset.ids[int(defn.get("image_index", 0))])
    sink = ExampleArrays(dataset.palette)
    configs = make_configs(record_base(rm, options), options)
    attack_batch([sample], rm, [Target(rm, configs)], None, options, examples=sink)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez_compressed(tmp, **sink.arrays)
    os.replace(tmp, path)
    return path
