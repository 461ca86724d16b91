"""The torch engine against pycaffe: speed on the CPU, throughput on a GPU, fidelity.

    .venv/bin/python benchmarks/engines.py cpu [--models tiny_synthetic fcn8s_vgg_voc ...]
    .venv/bin/python benchmarks/engines.py write-prototxt [--out benchmarks/prototxt]
    python benchmarks/engines.py gpu [--batch 4] [--prototxt-dir benchmarks/prototxt]
    .venv/bin/python benchmarks/engines.py fidelity [--full-width]

cpu
    One attack iteration (forward, summed cross-entropy gradient, backward to
    the input: what I-FGSM does T times) on the same net, weights and input
    with both engines; interleaved, best of --repeats after a warm-up.
    Prints each engine's seconds per iteration and torch / pycaffe (the goal
    is <= 1).
gpu
    Iterative FGSM II at eps 8 (T = 10 iterations, ``attacks.ifgsm_ll``
    unchanged, so every iteration crosses to numpy and back) on FCN-8s VGG at
    the VOC canvas 513x513 and PSPNet-101 at Cityscapes 1024x512, a batch of
    --batch images at a time.  Prints images/s, the device-only time of one
    forward+backward, the convolution FLOP count (forward + input gradient
    = 2 x forward, from shape inference), and the fraction of the device's
    peak FLOP rate for the chosen numerics.  With --compare-numerics it also
    attacks once per numerics option (fp32, tf32, channels_last, bf16) and
    reports how far each one's adversarial predictions are from fp32's
    (pixel agreement, and mIoU taking the fp32 predictions as the labels).
    Without CUDA it says that nothing was measured and exits 0.  The
    definitions at those canvases come from ``write-prototxt`` (needs
    pycaffe; run it where Caffe is built, the files travel with the tree) or,
    where pycaffe is importable, are generated on the fly.
fidelity
    The "Torch engine" table of docs/FIDELITY.md: engine_check.compare_zoo_model
    for every zoo model (needs pycaffe).
"""
import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from caffe_attacks import attacks, engine_check, zoo
from caffe_attacks.caffe_geometry import layer_type, net_inputs, parse_prototxt
from caffe_attacks.zoo import shapes

CPU_MODELS = {   # name -> (H, W) input; full width
    "tiny_synthetic": (96, 128), "fcn8s_vgg_voc": (128, 128),
    "deeplabv2_resnet101_voc": (129, 129), "enet_cityscapes": (256, 512),
    "crfrnn_voc": (96, 96),
}
GPU_MODELS = {"fcn8s_vgg_voc": (513, 513), "pspnet101_cityscapes": (512, 1024)}
GPU_EPS = 8.0

# Dense peak TFLOP/s by (device-name fragment, numerics); vendor datasheets.
PEAK_TFLOPS = {
    ("H200", "fp32"): 67.0, ("H200", "tf32"): 494.7, ("H200", "bf16"): 989.4,
    ("H100 PCIe", "fp32"): 51.2, ("H100 PCIe", "tf32"): 378.0, ("H100 PCIe", "bf16"): 756.0,
    ("H100", "fp32"): 67.0, ("H100", "tf32"): 494.7, ("H100", "bf16"): 989.4,
    ("A100", "fp32"): 19.5, ("A100", "tf32"): 156.0, ("A100", "bf16"): 312.0,
}


def conv_flops(text, input_hw, batch=1):
    """Multiply-adds x 2 of every Convolution/Deconvolution forward at input_hw."""
    net = parse_prototxt(text)
    inputs = net_inputs(net)
    input_layers = [l for l in net.get("layer", []) if layer_type(l) == "Input"]
    name = next(iter(inputs)) if inputs else input_layers[0]["top"][0]
    layers = shapes.infer(net, {name: (batch, 3) + tuple(input_hw)})
    blobs = {}
    for layer in layers:
        blobs.update(zip(layer.tops, layer.top_shapes))
    total = 0
    for layer in layers:
        if layer.type == "Convolution":
            total += 2 * math.prod(layer.top_shapes[0]) * math.prod(layer.param_shapes[0][1:])
        elif layer.type == "Deconvolution":
            total += 2 * math.prod(blobs[layer.bottoms[0]]) * math.prod(layer.param_shapes[0][1:])
    return total


def _definition(name, input_hw, prototxt_dir=None, **options):
    """Prototxt text of a zoo model at input_hw: from prototxt_dir, else generated."""
    if prototxt_dir:
        path = Path(prototxt_dir) / ("%s_%dx%d.prototxt" % ((name,) + tuple(input_hw)))
        if path.exists():
            return path.read_text()
    return zoo.build(name, input_hw=input_hw, **options)


def _pair(name, input_hw, seed=0):
    """CaffeNet and TorchNet of one definition with the same random weights."""
    from caffe_attacks.caffe_net import CaffeNet
    from caffe_attacks.torch_net import TorchNet
    spec = zoo.get(name)
    options = {"num_iterations": 10} if spec.family == "crfrnn" else {}
    text = _definition(name, input_hw, **options)
    ours = TorchNet(text, input_blob=spec.input_blob, score_blob=spec.score_blob)
    params = engine_check.random_params(engine_check.graph_param_shapes(ours),
                                        np.random.default_rng(seed))
    ours.set_params(params)
    ref = CaffeNet(text, input_blob=spec.input_blob, score_blob=spec.score_blob)
    for layer, arrays in params.items():
        for blob, value in zip(ref.net.params[layer], arrays):
            blob.data[...] = value.reshape(blob.data.shape)
    return ref, ours


def _iteration(model, x):
    scores = model.forward(x)
    return attacks.loss_gradient(model, x, attacks.least_likely_labels(scores), scores)


def bench_cpu(args):
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    print("torch %s, %d threads; load average %.1f; times are best of %d, interleaved"
          % (torch.__version__, torch.get_num_threads(), os.getloadavg()[0], args.repeats))
    print("%-26s %-10s %10s %10s %8s" % ("model", "input", "pycaffe s", "torch s", "ratio"))
    for name in args.models:
        hw = CPU_MODELS.get(name) or engine_check.SMALL_INPUTS[name]
        ref, ours = _pair(name, hw)
        x = np.random.default_rng(1).normal(0, 40, (1, 3) + hw).astype(np.float32)
        times = {"caffe": [], "torch": []}
        for model in (ref, ours):   # warm-up: allocation, oneDNN primitive creation
            _iteration(model, x)
        for _ in range(args.repeats):
            for key, model in (("caffe", ref), ("torch", ours)):
                start = time.perf_counter()
                _iteration(model, x)
                times[key].append(time.perf_counter() - start)
        c, t = min(times["caffe"]), min(times["torch"])
        print("%-26s %-10s %10.3f %10.3f %8.2f" % (name, "%dx%d" % hw, c, t, t / c), flush=True)


def write_prototxt(args):
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, hw in GPU_MODELS.items():
        path = out / ("%s_%dx%d.prototxt" % ((name,) + hw))
        path.write_text(zoo.build(name, input_hw=hw))
        print("wrote", path)


def _peak(device_name, numerics, override):
    if override:
        return override
    for (fragment, kind), tflops in PEAK_TFLOPS.items():
        if fragment in device_name and kind == numerics:
            return tflops
    return None


def _gpu_model(name, text, device, numerics, weights):
    from caffe_attacks.torch_net import TorchNet
    spec = zoo.get(name)
    options = {"fp32": {}, "tf32": dict(tf32=True), "channels_last": dict(channels_last=True),
               "bf16": dict(precision="bfloat16")}[numerics]
    model = TorchNet(text, weights, device=device, input_blob=spec.input_blob,
                     score_blob=spec.score_blob, **options)
    if weights is None:
        model.set_params(engine_check.random_params(engine_check.graph_param_shapes(model),
                                                    np.random.default_rng(0)))
    return model


def bench_gpu(args):
    try:
        import torch
    except ImportError:
        print("GPU benchmark NOT MEASURED: torch is not installed.")
        return 0
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("GPU benchmark NOT MEASURED: torch %s sees no CUDA device." % torch.__version__)
        return 0
    torch.backends.cudnn.benchmark = True
    on_gpu = device.type == "cuda"
    device_name = torch.cuda.get_device_name(device) if on_gpu else "cpu"

    def sync():
        if on_gpu:
            torch.cuda.synchronize(device)
    print("device: %s; torch %s; batch %d; I-FGSM II eps %g (T = %d)"
          % (device_name, torch.__version__, args.batch, GPU_EPS, attacks.num_iterations(GPU_EPS)))
    for item in args.models:
        name, hw = item.split("@")
        hw = tuple(int(v) for v in hw.split("x"))
        try:
            text = _definition(name, hw, args.prototxt_dir)
        except ImportError as err:
            print("%s: no definition at %dx%d (run write-prototxt where pycaffe is built): %s"
                  % (name, hw[0], hw[1], err))
            continue
        weights = None
        if args.weights_dir:
            candidate = Path(args.weights_dir) / ("%s.caffemodel" % name)
            weights = str(candidate) if candidate.exists() else None
        rng = np.random.default_rng(1)
        x = rng.normal(0, 40, (args.batch, 3) + hw).astype(np.float32)
        flops_fwd = conv_flops(text, hw)
        iterations = attacks.num_iterations(GPU_EPS)
        baseline = None
        for numerics in (["fp32", "tf32", "channels_last", "bf16"] if args.compare_numerics
                         else [args.numerics]):
            model = _gpu_model(name, text, args.device, numerics, weights)
            attacks.ifgsm_ll(model, x, GPU_EPS, iterations=1)   # warm-up, cudnn autotune
            sync()
            start = time.perf_counter()
            x_adv = attacks.ifgsm_ll(model, x, GPU_EPS)
            sync()
            elapsed = time.perf_counter() - start
            pred = model.forward(x_adv).argmax(1)
            # device-only forward + backward (no numpy round trip)
            xt = torch.from_numpy(x).to(device).requires_grad_(True)
            with model._numerics():
                sync()
                t0 = time.perf_counter()
                for _ in range(3):
                    s = model.graph({model.input_blob: xt}, [model.score_blob])[model.score_blob]
                    torch.autograd.grad(s, xt, torch.ones_like(s))
                sync()
                device_iter = (time.perf_counter() - t0) / 3
            flops = 2 * flops_fwd * iterations * args.batch
            kind = "bf16" if numerics == "bf16" else ("tf32" if numerics == "tf32" else "fp32")
            peak = _peak(device_name, kind, args.peak_tflops)
            achieved = flops / elapsed / 1e12
            line = ("%-22s %-10s %-13s %7.2f img/s  attack %.2fs  device fwd+bwd %.3fs/batch  "
                    "%.3g TFLOP/s" % (name, "%dx%d" % hw, numerics, args.batch / elapsed, elapsed,
                                      device_iter, achieved))
            if peak:
                line += "  %.1f%% of %s peak %.0f (device-only %.1f%%)" % (
                    100 * achieved / peak, kind, peak,
                    100 * 2 * flops_fwd * args.batch / device_iter / 1e12 / peak)
            if baseline is None:
                baseline = pred
            else:
                from caffe_attacks import metrics
                cm = metrics.confusion_matrix(baseline.ravel(), pred.ravel(), model.num_classes)
                line += "  vs fp32: agreement %.5f, mIoU %.4f" % (
                    float(np.mean(pred == baseline)), metrics.mean_iou(cm))
            print(line, flush=True)
            del model
            if on_gpu:
                torch.cuda.empty_cache()
    return 0


def fidelity(args):
    print("| model | input | width | scores | input gradient | gradient, pycaffe's choices "
          "| pycaffe vs float64 | ReLU signs flipped | pool argmaxes flipped |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.names or zoo.names():
        r = engine_check.compare_zoo_model(name, reduced=not args.full_width)
        width = r["options"].get("width_mult", 1.0)
        print("| %s | %dx%d | %s | %.1e | %.1e | %.1e | %.1e | %d | %d |" % (
            name, r["input_hw"][0], r["input_hw"][1],
            "1/%d" % round(1 / width) if width < 1 else "full", r["scores"], r["gradient"],
            r["gradient_caffe_choices"], r["caffe_float32_error"], r["flips"]["relu"],
            r["flips"]["pool"]), flush=True)


def main(argv=None):
    os.environ.setdefault("GLOG_minloglevel", "2")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("cpu")
    p.add_argument("--models", nargs="+", default=list(CPU_MODELS))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's; 1 is far better on a "
                        "loaded machine, where OpenMP threads wait for each other)")
    p = sub.add_parser("write-prototxt")
    p.add_argument("--out", default=str(Path(__file__).parent / "prototxt"))
    p = sub.add_parser("gpu")
    p.add_argument("--device", default="cuda",
                   help="cuda, cuda:N (cpu: a smoke run of this script)")
    p.add_argument("--models", nargs="+", default=["%s@%dx%d" % ((n,) + hw)
                                                   for n, hw in GPU_MODELS.items()],
                   help="NAME@HxW entries")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--numerics", default="fp32", choices=("fp32", "tf32", "channels_last", "bf16"))
    p.add_argument("--compare-numerics", action="store_true")
    p.add_argument("--prototxt-dir", default=str(Path(__file__).parent / "prototxt"))
    p.add_argument("--weights-dir", default=None, help="<model>.caffemodel files (else random)")
    p.add_argument("--peak-tflops", type=float, default=None)
    p = sub.add_parser("fidelity")
    p.add_argument("--names", nargs="*")
    p.add_argument("--full-width", action="store_true")
    args = parser.parse_args(argv)
    return {"cpu": bench_cpu, "write-prototxt": write_prototxt, "gpu": bench_gpu,
            "fidelity": fidelity}[args.command](args) or 0


if __name__ == "__main__":
    sys.exit(main())
