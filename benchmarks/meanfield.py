"""Time MultiStageMeanfield against pydensecrf2 (Kraehenbuehl's C++) on one input.

    .venv/bin/python benchmarks/meanfield.py [--size 500] [--classes 21] [--iterations 10]

Both run the same mean-field: the same unary, image, kernel parameters
(the public CRF-RNN's theta_alpha 160, theta_beta 3, theta_gamma 3, weights
5 and 3, Potts) and normalisation (pydensecrf NORMALIZE_AFTER = crfasrnn's
1 / (K 1 + 1e-20)).  Timed:

- pydensecrf2: lattice construction (addPairwiseEnergy) + inference(T)
- ours, forward: a fresh layer state (both lattices built) + T iterations
- ours, forward in an attack loop: the spatial lattice is cached, the
  bilateral one rebuilt because the image changed
- ours, forward + backward
with the lattice in numba and in numpy/scipy (softmax and the pairwise
update use numba in both when it is installed).  All timings are taken
interleaved, best of --repeats, so that machine load hits them alike.
Also prints the largest difference of the marginals, as a sanity check.
"""
import argparse
import time

import numpy as np

from caffe_attacks import lattice
from caffe_attacks.layers.meanfield import (MeanfieldInference, bilateral_features,
                                           initial_blobs, parse_meanfield_params,
                                           softmax_rows, spatial_features)


def make_input(size, classes, seed=0):
    """A natural image (skimage's astronaut, BGR, mean-subtracted) and blocky logits."""
    rng = np.random.default_rng(seed)
    try:
        import skimage.data
        rgb = skimage.data.astronaut()
        rgb = np.resize(rgb, (max(size, rgb.shape[0]), max(size, rgb.shape[1]), 3))[:size, :size]
    except ImportError:
        rgb = rng.integers(0, 256, (size, size, 3))
    bgr = rgb[:, :, ::-1].astype(np.float32) - np.array([104.0, 117.0, 123.0], np.float32)
    image = np.ascontiguousarray(bgr.transpose(2, 0, 1))[None]
    coarse = rng.normal(scale=3.0, size=(classes, size // 16 + 1, size // 16 + 1))
    unary = np.repeat(np.repeat(coarse, 16, axis=1), 16, axis=2)[:, :size, :size]
    unary = (unary + rng.normal(scale=0.5, size=unary.shape)).astype(np.float32)[None]
    return image, unary


def run_pydensecrf(image, unary, params):
    import pydensecrf.densecrf as dcrf
    _, channels, height, width = unary.shape
    crf = dcrf.DenseCRF(height * width, channels)
    crf.setUnaryEnergy(np.ascontiguousarray(-unary[0].reshape(channels, -1)))
    crf.addPairwiseEnergy(np.ascontiguousarray(spatial_features(height, width, params["theta_gamma"]).T),
                          compat=params["spatial_filter_weight"], kernel=dcrf.DIAG_KERNEL,
                          normalization=dcrf.NORMALIZE_AFTER)
    crf.addPairwiseEnergy(np.ascontiguousarray(bilateral_features(
        image[0], params["theta_alpha"], params["theta_beta"]).T),
        compat=params["bilateral_filter_weight"], kernel=dcrf.DIAG_KERNEL,
        normalization=dcrf.NORMALIZE_AFTER)
    return np.array(crf.inference(params["num_iterations"]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=500)
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    params = parse_meanfield_params('{"num_iterations": %d}' % args.iterations)
    image, unary = make_input(args.size, args.classes)
    blobs = initial_blobs(args.classes, params)
    grad = np.random.default_rng(1).normal(size=unary.shape).astype(np.float32)
    print("input %dx%dx%d, %d iterations, best of %d"
          % (args.size, args.size, args.classes, args.iterations, args.repeats))

    timers = {}   # name -> callable; all timed interleaved so that load hits them alike
    try:
        q_ref = run_pydensecrf(image, unary, params)
        timers["pydensecrf2 (lattices + inference)"] = lambda: run_pydensecrf(image, unary, params)
    except ImportError:
        q_ref = None
        print("pydensecrf2 not installed: no reference time")

    outputs = {}
    variants = [True, False] if lattice.numba is not None else [False]
    for use_numba in variants:
        label = "lattice in numba" if use_numba else "lattice in numpy/scipy"
        outputs[label] = MeanfieldInference(params, use_numba).forward(unary, unary, image, blobs)
        looped = MeanfieldInference(params, use_numba)
        cached = MeanfieldInference(params, use_numba)
        looped.forward(unary, unary, image, blobs)
        cached.forward(unary, unary, image, blobs)
        cached.backward(grad)
        shift = [0.0]

        def cold(use_numba=use_numba):
            return MeanfieldInference(params, use_numba).forward(unary, unary, image, blobs)

        def attack_step(looped=looped, shift=shift):
            shift[0] += 1.0   # a new image each call, as in an iterative attack
            return looped.forward(unary, unary, image + shift[0], blobs)

        def forward_backward(cached=cached):
            cached.forward(unary, unary, image, blobs)
            return cached.backward(grad)

        timers["forward, fresh (%s)" % label] = cold
        timers["forward, attack loop (%s)" % label] = attack_step
        timers["forward + backward, cached (%s)" % label] = forward_backward

    best = dict.fromkeys(timers, np.inf)
    for _ in range(args.repeats):
        for name, fn in timers.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    t_ref = best.get("pydensecrf2 (lattices + inference)")
    for name, t in best.items():
        ratio = "" if t_ref is None else "  ratio to pydensecrf2 %.2fx" % (t / t_ref)
        print("%-58s %7.3f s%s" % (name, t, ratio))
    if q_ref is not None:
        for label, out in outputs.items():
            ours = softmax_rows(out[0].reshape(args.classes, -1).T).T
            print("max |marginal difference| vs pydensecrf2 (%s): %.2e"
                  % (label, np.abs(ours - q_ref).max()))


if __name__ == "__main__":
    main()
