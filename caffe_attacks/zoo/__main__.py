"""``python -m caffe_attacks.zoo list | write DIR``.

``list`` prints the zoo: name, dataset, classes, input canvas, parameter MiB
(ours, computed from the generated definition, beside Table A4) and the
original custom layer types. ``write DIR`` writes ``DIR/<name>.prototxt`` for
every model (``make prototxt`` writes the committed ``prototxt/``).
"""
import argparse
import logging
import sys
from pathlib import Path

from caffe_attacks import zoo
from caffe_attacks.cli import run_cli
from caffe_attacks.zoo.shapes import param_count

MIB = 4.0 / 2 ** 20


def _list(args):
    rows = [("name", "dataset", "classes", "input HxW", "MiB ours", "Table A4", "custom layers")]
    for name in zoo.names():
        spec = zoo.get(name)
        path = zoo.prototxt_path(name)
        text = path.read_text() if path.exists() and not args.regenerate else zoo.build(name)
        table = "-" if spec.table_a4_mib is None else "%.1f" % spec.table_a4_mib
        rows.append((name, spec.dataset, str(spec.num_classes),
                     "%dx%d" % tuple(spec.reference_input),
                     "%.2f" % (param_count(text) * MIB), table,
                     ", ".join(spec.custom_layers) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(wd) for cell, wd in zip(row, widths)).rstrip())
    return 0


def _write(args):
    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    selected = args.names or zoo.names()
    for name in selected:
        path = out / ("%s.prototxt" % name)
        path.write_text(zoo.build(name))
        print(path)
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m caffe_attacks.zoo",
                                     description="List the model zoo or write its prototxt files.")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    p_list = sub.add_parser("list", help="print the zoo table")
    p_list.add_argument("--regenerate", action="store_true",
                        help="count parameters of a fresh generation (needs pycaffe) "
                             "instead of the committed prototxt")
    p_list.set_defaults(func=_list)
    p_write = sub.add_parser("write", help="write DIR/<name>.prototxt (needs pycaffe)")
    p_write.add_argument("dir")
    p_write.add_argument("names", nargs="*", help="a subset of models (default: all)")
    p_write.set_defaults(func=_write)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
    return run_cli(lambda: args.func(args), resume_hint="run the same command again")


if __name__ == "__main__":
    sys.exit(main())
