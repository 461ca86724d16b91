"""Overhead of the attack machinery over bare Caffe passes, measured side by side.

Prints two ratios on one net and input (these machines are noisy, so the
candidates are interleaved and each figure is a median over rounds):

1. time per Iterative-FGSM iteration / time per bare ``net.forward();
   net.backward()`` (goal <= 1.10);
2. time of eight separate FGSM attacks (one per paper eps) / time of one
   shared-gradient FGSM sweep over the same eight eps (goal >= 4); and the
   same with the evaluation forward of every adversarial input included.

usage: .venv/bin/python benchmarks/attack_overhead.py [--model tiny_synthetic]
       [--height 256 --width 320] [--rounds 5] [--iterations 10] [--blas-threads N]
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from caffe_attacks import zoo  # noqa: E402
from caffe_attacks.attacks import PAPER_EPS, fgsm, ifgsm  # noqa: E402


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny_synthetic")
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--blas-threads", type=int, default=None,
                   help="OpenBLAS threads (set before Caffe loads); default: OpenBLAS's")
    args = p.parse_args(argv)
    if args.blas_threads:
        os.environ["OPENBLAS_NUM_THREADS"] = str(args.blas_threads)
    from caffe_attacks.caffe_net import CaffeNet

    import tempfile
    spec = zoo.get(args.model)
    with tempfile.NamedTemporaryFile("w", suffix=".prototxt", delete=False) as f:
        f.write(zoo.build(args.model, (args.height, args.width)))
    model = CaffeNet(f.name, input_blob=spec.input_blob, score_blob=spec.score_blob)
    os.unlink(f.name)
    rng = np.random.default_rng(0)
    for name in model.net.params:
        for blob in model.net.params[name]:
            blob.data[...] = rng.normal(0, 0.1, blob.data.shape)
    x = rng.normal(0, 50, (1, 3, args.height, args.width)).astype(np.float32)
    net = model.net
    model.forward(x)
    dscores = rng.normal(size=net.blobs[spec.score_blob].data.shape).astype(np.float32)

    def bare():
        for _ in range(args.iterations):
            net.blobs[spec.input_blob].data[...] = x
            net.forward()
            net.blobs[spec.score_blob].diff[...] = dscores
            net.backward()

    def attack():
        # ifgsm's clean forward is one extra pass; subtract it below
        ifgsm(model, x, 1000.0, iterations=args.iterations)

    def clean_forward():
        model.forward(x)

    def separate():
        for e in PAPER_EPS:
            fgsm(model, x, e)

    def shared():
        fgsm(model, x, list(PAPER_EPS))

    # The same, each adversarial input also evaluated (one forward), as a run does.
    def separate_eval():
        for e in PAPER_EPS:
            model.forward(fgsm(model, x, e))

    def shared_eval():
        for x_adv in fgsm(model, x, list(PAPER_EPS)):
            model.forward(x_adv)

    bare(), attack(), separate(), shared()   # warm up
    t = {k: [] for k in ("bare", "attack", "fwd", "separate", "shared", "separate_eval",
                         "shared_eval")}
    for _ in range(args.rounds):
        t["bare"].append(timed(bare))
        t["attack"].append(timed(attack))
        t["fwd"].append(timed(clean_forward))
        t["separate"].append(timed(separate))
        t["shared"].append(timed(shared))
        t["separate_eval"].append(timed(separate_eval))
        t["shared_eval"].append(timed(shared_eval))
    med = {k: statistics.median(v) for k, v in t.items()}
    per_iter_bare = med["bare"] / args.iterations
    per_iter_attack = (med["attack"] - med["fwd"]) / args.iterations
    print("net %s at %dx%d, %d rounds (medians)" % (args.model, args.height, args.width, args.rounds))
    print("bare forward+backward        %8.2f ms" % (1e3 * per_iter_bare))
    print("I-FGSM iteration             %8.2f ms" % (1e3 * per_iter_attack))
    print("ratio attack / bare          %8.3f   (goal <= 1.10)" % (per_iter_attack / per_iter_bare))
    print("8 separate FGSM              %8.2f ms" % (1e3 * med["separate"]))
    print("shared-gradient FGSM sweep   %8.2f ms" % (1e3 * med["shared"]))
    print("speed-up of the shared sweep %8.2fx  (goal >= 4)" % (med["separate"] / med["shared"]))
    print("  with evaluation forwards   %8.2fx  (8 x (2F+B) / (9F+B): bounded by the forwards)"
          % (med["separate_eval"] / med["shared_eval"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
