"""``python -m caffe_attacks --version``."""
import argparse
import sys

from caffe_attacks import __version__


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="caffe_attacks",
        description="Caffe-faithful adversarial attacks on segmentation models. "
                    "Commands: python -m caffe_attacks.run, python -m caffe_attacks.transfer, "
                    "python -m caffe_attacks.experiments, python -m caffe_attacks.demo, "
                    "python -m caffe_attacks.zoo, python -m caffe_attacks.weights, "
                    "python -m caffe_attacks.datasets.synthetic.")
    parser.add_argument("--version", action="version",
                        version="caffe_attacks %s" % __version__)
    parser.parse_args(argv)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
