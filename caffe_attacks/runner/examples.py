"""Qualitative panels of ``run --save-examples DIR K`` (Fig. A1 style PNGs)."""
import os

import numpy as np

from caffe_attacks.strong_attacks import ATTACK_NAMES
from caffe_attacks.visualize import bgr_to_rgb_uint8, colorize, perturbation_image, save_panel


class PanelExamples:
    """Writes, for the first ``count`` images, one PNG per (attack, eps).

    Panels: clean image, perturbation (+ mean), adversarial image, both
    predictions. ``palette``: the dataset's (256, 3) RGB palette.
    """

    def __init__(self, out_dir, count, palette):
        self.out_dir = out_dir
        self.count = count
        self.palette = palette

    def exists(self, image_id):
        """Whether panels of this image were written already (resume)."""
        if not os.path.isdir(self.out_dir):
            return False
        return any(f.startswith(image_id + "_") for f in os.listdir(self.out_dir))

    def save(self, sample, rm, x, ctx, pred_clean, shown):
        os.makedirs(self.out_dir, exist_ok=True)
        clean_rgb = bgr_to_rgb_uint8(sample.image)
        for attack, e, x_adv, pred in shown:
            delta = rm.protocol.input_to_image(x_adv - x, ctx)
            if rm.protocol.mean_bgr is not None:
                delta = delta - np.asarray(rm.protocol.mean_bgr, np.float32)
            adv_img = rm.protocol.input_to_image(x_adv, ctx)
            panels = [clean_rgb, perturbation_image(delta, rm.protocol.mean_bgr, eps=e),
                      bgr_to_rgb_uint8(adv_img), colorize(pred_clean, self.palette),
                      colorize(pred, self.palette)]
            titles = ["image %s" % sample.id, "perturbation x%.3g + mean" % (127.5 / e),
                      "adversarial, eps=%g" % e, "clean prediction",
                      "%s prediction" % ATTACK_NAMES.get(attack, attack)]
            save_panel(os.path.join(self.out_dir, "%s_%s_eps%g.png" % (sample.id, attack, e)),
                       panels, titles)
