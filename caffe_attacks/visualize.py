"""Images for people: label maps in a dataset palette, perturbations as in Fig. A1."""
import numpy as np


def colorize(label, palette):
    """(H, W) class indices -> (H, W, 3) uint8 RGB through a (256, 3) palette."""
    return np.asarray(palette, np.uint8)[np.asarray(label, np.uint8)]


def perturbation_image(delta_bgr, mean_bgr, eps=None, gain=None):
    """A perturbation made visible, as in Fig. A1: delta (times a gain) plus the mean colour.

    delta_bgr: (H, W, 3) float, the perturbation on the image grid
    mean_bgr: the dataset mean colour (grey background); None -> 127.5
    gain: multiplier; default 127.5 / eps so the full budget spans the range
    Returns (H, W, 3) uint8 RGB.
    """
    mean = np.full(3, 127.5) if mean_bgr is None else np.asarray(mean_bgr, np.float64)
    if gain is None:
        gain = 127.5 / eps if eps else 1.0
    vis = np.clip(mean + gain * np.asarray(delta_bgr, np.float64), 0, 255)
    return vis.astype(np.uint8)[..., ::-1]


def bgr_to_rgb_uint8(image_bgr):
    return np.clip(np.asarray(image_bgr), 0, 255).astype(np.uint8)[..., ::-1]


def save_panel(path, panels, titles):
    """Save RGB images side by side with titles (PNG or PDF by extension)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.2))
    for ax, img, title in zip(np.atleast_1d(axes), panels, titles):
        ax.imshow(img)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
