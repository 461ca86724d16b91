"""Cost of the strong attacks: forward/backward passes and seconds per image.

    .venv/bin/python benchmarks/strong_attacks.py [--models tiny_synthetic enet_cityscapes]
        [--iterations 300] [--pgd-steps 100] [--eps 4] [--enet-hw 256 512]
        [--enet-weights ../shared/real/cityscapes_weights.caffemodel]

One image per model, every attack once (PGD, SegPGD, CosPGD with --pgd-steps
steps; APGD with each SEA loss and SEA itself with --iterations); prints the
passes each attack reports, the seconds it took and the seconds per pass.
tiny_synthetic runs at its 96x128 canvas with the embedded weights on an
unseen synthetic scene. ENet runs at --enet-hw with the real Cityscapes
weights when --enet-weights exists (on the Cityscapes test image beside
them, resized), else with random weights (the output says which); its
MCE-Bal uses uniform class weights (no Cityscapes training labels here: the
cost does not depend on the weights' values).
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from caffe_attacks import zoo  # noqa: E402
from caffe_attacks.attacks import ImageBox  # noqa: E402
from caffe_attacks.strong_attacks import apgd, cospgd, pgd, sea, segpgd  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ENET_WEIGHTS = os.path.join(HERE, "..", "..", "shared", "real",
                                    "cityscapes_weights.caffemodel")
SYNTHETIC_WEIGHTS = os.path.join(HERE, "..", "caffe_attacks", "data",
                                 "class_weights_synthetic_voc.json")


def _tiny(args):
    from caffe_attacks import weights as W
    from caffe_attacks.caffe_net import CaffeNet
    from caffe_attacks.datasets import open_dataset, synthetic
    from caffe_attacks.datasets.class_weights import load_class_weights
    from caffe_attacks.preprocess import Protocol
    root = tempfile.mkdtemp()
    synthetic.write_voc(root, 4, seed=1)    # seed 1: scenes the model was not trained on
    sample = next(iter(open_dataset("synthetic", root, "val")))
    protocol = Protocol.from_dict(W.input_protocol("tiny_synthetic"))
    weights = W.weights_file(W.model_entry("tiny_synthetic"), "weights")
    model = CaffeNet(str(zoo.prototxt_path("tiny_synthetic")), str(weights))
    x, _ = protocol.prepare(sample.image)
    return ("tiny_synthetic 96x128, embedded weights", model, x,
            ImageBox.from_mean(protocol.mean_bgr), load_class_weights(SYNTHETIC_WEIGHTS))


def _enet(args):
    import cv2
    from caffe_attacks.caffe_net import CaffeNet
    spec = zoo.get("enet_cityscapes")
    h, w = args.enet_hw
    with tempfile.NamedTemporaryFile("w", suffix=".prototxt", delete=False) as f:
        f.write(zoo.build("enet_cityscapes", (h, w)))
    real = os.path.exists(args.enet_weights)
    model = CaffeNet(f.name, args.enet_weights if real else None,
                     input_blob=spec.input_blob, score_blob=spec.score_blob)
    os.unlink(f.name)
    image = os.path.join(os.path.dirname(args.enet_weights), "munich_000000_000019_leftImg8bit.png")
    if real and os.path.exists(image):
        # ENet's own script feeds BGR 0..255 without a mean (manifest: mean_bgr null)
        x = cv2.resize(cv2.imread(image), (w, h), interpolation=cv2.INTER_LINEAR)
        x = x.astype(np.float32).transpose(2, 0, 1)[None]
        what = "real weights, Cityscapes test image"
    else:
        rng = np.random.default_rng(0)
        for name in model.net.params:
            for blob in model.net.params[name]:
                blob.data[...] = rng.normal(0, 0.1, blob.data.shape)
        x = rng.uniform(0, 255, (1, 3, h, w)).astype(np.float32)
        what = "RANDOM weights (no --enet-weights), random input"
    return ("enet_cityscapes %dx%d, %s" % (h, w, what), model, x, ImageBox.from_mean(None),
            np.full(spec.num_classes, 1.0 / spec.num_classes))


def _attacks(args, class_weights, box):
    common = dict(clip_to_image=box)
    steps = dict(steps=args.pgd_steps, seed=0, **common)
    apgd_kw = dict(iterations=args.iterations, class_weights=class_weights, **common)
    return [
        ("pgd", lambda m, x: pgd(m, x, args.eps, **steps)),
        ("segpgd", lambda m, x: segpgd(m, x, args.eps, **steps)),
        ("cospgd", lambda m, x: cospgd(m, x, args.eps, **steps)),
        ("apgd_mce", lambda m, x: apgd(m, x, args.eps, loss="mce", **apgd_kw)),
        ("apgd_mce_bal", lambda m, x: apgd(m, x, args.eps, loss="mce_bal", **apgd_kw)),
        ("apgd_js", lambda m, x: apgd(m, x, args.eps, loss="js", **apgd_kw)),
        ("sea", lambda m, x: sea(m, x, args.eps, **apgd_kw)[0]),
    ]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["tiny_synthetic", "enet_cityscapes"],
                   choices=["tiny_synthetic", "enet_cityscapes"])
    p.add_argument("--iterations", type=int, default=300, help="APGD / SEA iterations")
    p.add_argument("--pgd-steps", type=int, default=100)
    p.add_argument("--eps", type=float, default=4.0)
    p.add_argument("--enet-hw", type=int, nargs=2, default=(256, 512))
    p.add_argument("--enet-weights", default=DEFAULT_ENET_WEIGHTS)
    args = p.parse_args(argv)
    print("eps %g, PGD family %d steps, APGD/SEA %d iterations; load average %.1f"
          % (args.eps, args.pgd_steps, args.iterations, os.getloadavg()[0]))
    for name in args.models:
        label, model, x, box, class_weights = (_tiny if name == "tiny_synthetic" else _enet)(args)
        print("\n%s" % label)
        print("%-13s %8s %9s %10s %10s %9s" % ("attack", "forward", "backward", "s/image",
                                              "s/pass", "accuracy"))
        for attack, run in _attacks(args, class_weights, box):
            t0 = time.perf_counter()
            result = run(model, x)
            seconds = time.perf_counter() - t0
            passes = result.n_forward + result.n_backward
            acc = "-" if result.accuracy is None else "%.3f" % float(result.accuracy[0])
            print("%-13s %8d %9d %10.2f %10.4f %9s" % (attack, result.n_forward,
                                                      result.n_backward, seconds / x.shape[0],
                                                      seconds / passes, acc))


if __name__ == "__main__":
    main()
