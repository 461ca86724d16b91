"""Images/s of a sweep: 1 worker vs 2 workers, and Ray vs local workers, side by side.

For each net (tiny_synthetic; ENet at a reduced canvas) one synthetic set is
swept, into a fresh store each time, by

- ``local x1``: one local worker process (all cores' BLAS threads),
- ``local x2``: two local worker processes (cores/2 threads each),
- ``ray x2``: two Ray actors on a local Ray instance (127.0.0.1),

interleaved over rounds (this machine is shared: medians, and the load
average is printed with the numbers). Wall time covers the whole sweep:
starting the workers, loading the nets, attacking, writing the store.
Goals: local x2 / local x1 >= 1.7 on a 2-core machine; ray x2 within 10 % of
local x2.

usage: .venv/bin/python benchmarks/scaling.py [--nets tiny_synthetic enet_cityscapes]
       [--images 16] [--rounds 2] [--enet-weights /path/cityscapes_weights.caffemodel]
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from caffe_attacks.datasets import synthetic  # noqa: E402
from caffe_attacks.experiments.executors import LocalExecutor  # noqa: E402
from caffe_attacks.experiments.ray_executor import RayExecutor  # noqa: E402
from caffe_attacks.runner import RunOptions  # noqa: E402
from caffe_attacks.runner.whitebox import run_white_box  # noqa: E402

ENET_WEIGHTS = "/work/shared/real/cityscapes_weights.caffemodel"
# net -> (dataset format, width, height, classes, attacks, eps)
NETS = {
    "tiny_synthetic": ("voc", 128, 96, 5, ("fgsm", "ifgsm"), (2.0, 8.0)),
    "enet_cityscapes": ("cityscapes", 256, 128, 19, ("fgsm", "ifgsm"), (2.0,)),
}


def make_data(root, net, images):
    fmt, width, height, classes, _, _ = NETS[net]
    out = os.path.join(root, net)
    # val is a quarter of the scenes
    synthetic.main(["--format", fmt, "--out", out, "--n", str(4 * images), "--seed", "1",
                    "--width", str(width), "--height", str(height),
                    "--num-classes", str(classes)])
    return out


class Stopwatch:
    """An executor seen from outside: when each unit came back and with how many images."""

    def __init__(self, executor):
        self.executor = executor
        self.returns = []

    def run(self, spec, units):
        for unit, result in self.executor.run(spec, units):
            self.returns.append((time.perf_counter(), len(unit.ids)))
            yield unit, result

    def steady_rate(self):
        """Images/s from the first unit back to the last (workers started, nets loaded)."""
        (t0, _), rest = self.returns[0], self.returns[1:]
        return sum(n for _, n in rest) / (rest[-1][0] - t0) if rest else float("nan")


def sweep_rates(net, data, store, executor, weights=None):
    """(images/s of the whole sweep, images/s once the first unit is back)."""
    _, _, _, _, attacks, eps = NETS[net]
    options = RunOptions(model=net, weights=weights, allow_unverified=weights is not None,
                         dataset="synthetic", data_dir=data, attacks=attacks, eps=eps,
                         out=store, quiet=True)
    watch = Stopwatch(executor)
    t0 = time.perf_counter()
    result = run_white_box(options, store, executor=watch, unit_images=2)
    return len(result.ids) / (time.perf_counter() - t0), watch.steady_rate()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    p.add_argument("--images", type=int, default=16, help="validation images per net")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--enet-weights", default=ENET_WEIGHTS)
    args = p.parse_args(argv)

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray
    with tempfile.TemporaryDirectory() as root:
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
                 log_to_driver=False, _node_ip_address="127.0.0.1",
                 _temp_dir=os.path.join(root, "ray"))
        candidates = {"local x1": lambda: LocalExecutor(1), "local x2": lambda: LocalExecutor(2),
                      "ray x2": lambda: RayExecutor(2)}
        print("cores %d; load average before: %s" % (os.cpu_count(),
                                                     " ".join("%.2f" % v for v in os.getloadavg())))
        for net in args.nets:
            data = make_data(root, net, args.images)
            weights = args.enet_weights if net == "enet_cityscapes" else None
            rates = {name: [] for name in candidates}
            steady = {name: [] for name in candidates}
            for r in range(args.rounds):
                order = list(candidates) if r % 2 == 0 else list(reversed(list(candidates)))
                for name in order:
                    store = os.path.join(root, "%s-%s-%d.h5" % (net, name.replace(" ", ""), r))
                    rate, steady_rate = sweep_rates(net, data, store, candidates[name](),
                                                    weights)
                    rates[name].append(rate)
                    steady[name].append(steady_rate)
            for label, table in (("whole sweep", rates), ("after the first unit", steady)):
                report(net, args, label, table)
        print("load average after: %s" % " ".join("%.2f" % v for v in os.getloadavg()))
        ray.shutdown()


def report(net, args, label, rates):
    med = {name: statistics.median(v) for name, v in rates.items()}
    _, w, h, _, attacks, eps = NETS[net]
    print("%s at %dx%d, %s at eps %s, %d images, %d round(s), %s:"
          % (net, w, h, "+".join(attacks), " ".join("%g" % e for e in eps),
             args.images, args.rounds, label))
    for name in rates:
        print("  %-9s %7.3f images/s  (rounds: %s)"
              % (name, med[name], ", ".join("%.3f" % v for v in rates[name])))
    print("  local x2 / local x1 = %.2f (goal >= 1.7); ray x2 / local x2 = %.2f "
          "(goal 0.90..1.10)" % (med["local x2"] / med["local x1"],
                                 med["ray x2"] / med["local x2"]))


if __name__ == "__main__":
    main()
