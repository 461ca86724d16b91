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
    from caffe_attacks.store import StoreLocked
    return (UsageError, DatasetError, StoreLocked, FileNotFoundError, ValueError)


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
