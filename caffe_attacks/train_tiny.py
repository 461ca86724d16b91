"""``make train-tiny``: train the embedded default model on the synthetic set.

Writes the synthetic dataset (deterministic for its seed), trains the tiny FCN
of zoo/tiny.py with a pycaffe Adam solver and SoftmaxWithLoss (void ignored),
saves the caffemodel and prints its md5 and clean validation mIoU, which go
into weights_manifest.json.
"""
import argparse
import logging
import os
import sys
import tempfile
import time

import numpy as np

from caffe_attacks.environment import CaffeUnavailable, import_caffe
from caffe_attacks.metrics import confusion_matrix, mean_iou

log = logging.getLogger(__name__)

# The dataset the embedded default is trained and demonstrated on.
SYNTHETIC_ARGS = dict(fmt="voc", n=400, seed=0)
MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)   # VOC's, as FCN uses


def ensure_synthetic(root, fmt="voc", n=400, seed=0):
    """Write the synthetic set into `root` unless it is already there."""
    from caffe_attacks.datasets import synthetic
    if os.path.exists(os.path.join(root, "synthetic.json")):
        return root
    synthetic.main(["--format", fmt, "--out", root, "--n", str(n), "--seed", str(seed)])
    return root


def _train_net_param(input_hw, batch, num_classes):
    from caffe_attacks import zoo
    from caffe_attacks.environment import import_caffe_pb2
    caffe_pb2 = import_caffe_pb2()
    from google.protobuf import text_format   # pycaffe's dependency: after pycaffe
    net = caffe_pb2.NetParameter()
    text_format.Merge(zoo.build("tiny_synthetic", input_hw), net)
    net.layer[0].input_param.shape[0].dim[0] = batch
    for layer in net.layer:
        if layer.type == "Convolution":
            layer.convolution_param.weight_filler.type = "msra"
    label = net.layer.add()
    label.name, label.type = "label", "Input"
    label.top.append("label")
    label.input_param.shape.add().dim.extend([batch, 1, input_hw[0], input_hw[1]])
    loss = net.layer.add()
    loss.name, loss.type = "loss", "SoftmaxWithLoss"
    loss.bottom.extend(["score", "label"])
    loss.top.append("loss")
    loss.loss_param.ignore_label = 255
    loss.loss_param.normalization = caffe_pb2.LossParameter.VALID
    return net


def train(data_root, out_path, iterations=300, batch=8, lr=2e-3, seed=0, progress=True):
    """Train and save; returns (md5, val mIoU)."""
    from tqdm import tqdm

    from caffe_attacks.datasets import open_dataset
    from caffe_attacks.environment import import_caffe_pb2
    from caffe_attacks.weights import md5_file

    caffe, caffe_pb2 = import_caffe(), import_caffe_pb2()
    caffe.set_mode_cpu()
    caffe.set_random_seed(seed)
    train_set = open_dataset("synthetic", data_root, split="train")
    samples = [train_set.load(i) for i in train_set.ids]
    h, w = samples[0].image.shape[:2]
    images = np.stack([s.image for s in samples]).astype(np.float32) - np.array(MEAN_BGR, np.float32)
    images = images.transpose(0, 3, 1, 2)
    labels = np.stack([s.label for s in samples])[:, None].astype(np.float32)

    with tempfile.TemporaryDirectory() as tmp:
        net_path = os.path.join(tmp, "train.prototxt")
        with open(net_path, "w") as f:
            f.write(str(_train_net_param((h, w), batch, train_set.num_classes)))
        solver = caffe_pb2.SolverParameter()
        solver.net = net_path
        solver.type = "Adam"
        solver.base_lr = lr
        solver.momentum = 0.9
        solver.momentum2 = 0.999
        solver.lr_policy = "step"
        solver.gamma = 0.2
        solver.stepsize = int(iterations * 0.7)
        solver.max_iter = iterations
        solver.weight_decay = 1e-4
        solver.display = 0
        solver.snapshot_after_train = False
        solver.random_seed = seed
        solver_path = os.path.join(tmp, "solver.prototxt")
        with open(solver_path, "w") as f:
            f.write(str(solver))
        s = caffe.get_solver(solver_path)

    rng = np.random.default_rng(seed)
    bar = tqdm(range(iterations), desc="train tiny", disable=not progress)
    t0 = time.time()
    for it in bar:
        idx = rng.choice(len(images), batch, replace=False)
        x, y = images[idx], labels[idx]
        flip = rng.random(batch) < 0.5
        x[flip], y[flip] = x[flip, ..., ::-1], y[flip, ..., ::-1]
        s.net.blobs["data"].data[...] = x
        s.net.blobs["label"].data[...] = y
        s.step(1)
        if it % 50 == 0:
            bar.set_postfix(loss="%.3f" % float(s.net.blobs["loss"].data))
    log.info("trained %d iterations in %.0f s", iterations, time.time() - t0)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    s.net.save(out_path)
    return md5_file(out_path), evaluate(data_root, out_path)


def evaluate(data_root, weights, split="val"):
    """Clean mIoU of the saved model on the synthetic split."""
    from caffe_attacks import zoo
    from caffe_attacks.caffe_net import CaffeNet
    from caffe_attacks.datasets import open_dataset

    data = open_dataset("synthetic", data_root, split=split)
    model = CaffeNet(str(zoo.prototxt_path("tiny_synthetic")), weights)
    cm = 0
    for sample in data:
        x = (sample.image.astype(np.float32) - np.array(MEAN_BGR, np.float32)).transpose(2, 0, 1)
        pred = model.forward(x[None])[0].argmax(0)
        cm = cm + confusion_matrix(sample.label, pred, data.num_classes)
    return mean_iou(cm)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m caffe_attacks.train_tiny", description=__doc__)
    p.add_argument("--data-dir", default="data/synthetic_voc",
                   help="synthetic dataset (written here if missing)")
    p.add_argument("--out", default=None,
                   help="caffemodel to write (default: the embedded model the manifest names)")
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.out is None:
        from caffe_attacks import weights
        args.out = str(weights.weights_file(weights.model_entry("tiny_synthetic"), "."))
    try:
        import_caffe()   # before minutes of dataset writing
    except CaffeUnavailable as err:
        print("error: %s" % err, file=sys.stderr)
        return 2
    ensure_synthetic(args.data_dir, **SYNTHETIC_ARGS)
    md5, miou = train(args.data_dir, args.out, args.iterations, args.batch, seed=args.seed)
    print("wrote %s\nmd5 %s\nclean val mIoU %.1f%%" % (args.out, md5, 100 * miou))
    return 0


if __name__ == "__main__":
    sys.exit(main())
