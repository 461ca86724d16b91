"""The single error boundary of every command-line entry point (CLI layer only).

``run_cli(body)`` runs a CLI's body and turns what a user can cause into one
line on stderr: anticipated errors print ``error: <message>`` and exit 2, an
interrupt exits 130 with a hint on how to resume. Anything else is a bug and
keeps its traceback.
"""
import logging
import os
import sys

from caffe_attacks.errors import UsageError

DEFAULT_RESUME_HINT = "finished images are saved — run the same command to resume"


def _anticipated():
    """Exception types that mean bad input (or a busy store), not a bug.

    Imported only when something failed: the weights and zoo CLIs need
    neither h5py (the store) nor the dataset readers.
    """
    from caffe_attacks.datasets import DatasetError
    from caffe_attacks.environment import CaffeUnavailable
    from caffe_attacks.store import StoreError
    # ValueError covers the engines' and the store's checks on what the user gave
    # (DefinitionError, UnfilledParamsError, NonFiniteError, GpuUnavailable,
    # CaffemodelFormatError, InvalidRecord); StoreError a locked, unusable or
    # full --out; CaffeUnavailable a command that needs the pycaffe build;
    # OSError a path the user named that cannot be written or read (its message
    # names the file)
    return (UsageError, CaffeUnavailable, DatasetError, StoreError, ValueError, OSError)


def run_cli(body, resume_hint=DEFAULT_RESUME_HINT):
    """Run ``body()`` (returns an exit status) behind the error boundary.

    Returns body's status, 2 for an anticipated error (one ``error: ...``
    line), 130 on KeyboardInterrupt (with ``resume_hint``).
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return body()
    except KeyboardInterrupt:
        print("\ninterrupted; %s" % resume_hint, file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`... | head`): no traceback, and none at exit
        # when Python flushes stdout again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyError as e:       # unknown names; the message is the first argument
        print("error: %s" % (e.args[0] if e.args else e), file=sys.stderr)
        return 2
    except _anticipated() as e:
        print("error: %s" % e, file=sys.stderr)
        return 2


def add_executor_arguments(parser):
    """--workers, --executor, --ray-address, --unit-images: where a sweep's units run."""
    g = parser.add_argument_group("scale-out")
    # a string: a bad value is one "error:" line from run_cli, not argparse's usage
    g.add_argument("--workers", default=None, metavar="N",
                   help="worker processes (local: N processes with cores/N BLAS threads "
                        "each; ray: N actors, default one per GPU or CPU core)")
    g.add_argument("--executor", default="local", choices=("local", "ray"),
                   help="local worker processes (default) or Ray actors")
    g.add_argument("--ray-address", default=None, metavar="HOST:PORT",
                   help="a running Ray cluster (default with --executor ray: a local one)")
    g.add_argument("--unit-images", default="4", metavar="N",
                   help="images per work unit (default 4)")


def positive_integer(flag, text):
    """int(text) when it is a positive integer, else UsageError naming the flag."""
    try:
        value = int(text)
    except (TypeError, ValueError):
        value = 0
    if value < 1:
        raise UsageError("%s must be a positive integer, got %r" % (flag, text))
    return value


def scale_numbers(args):
    """(workers or None, images per unit) from add_executor_arguments' flags, checked."""
    workers = None if args.workers is None else positive_integer("--workers", args.workers)
    return workers, positive_integer("--unit-images", args.unit_images)


def executor_from_args(args, gpu=None):
    """(executor or None for this process, images per unit) from add_executor_arguments' flags."""
    from caffe_attacks.experiments.executors import make_executor
    workers, unit_images = scale_numbers(args)
    return make_executor(workers, args.executor, args.ray_address, gpu=gpu), unit_images
