"""What every worker process runs, whatever sent it the unit: thread limits, cached nets.

Shared by the local executor (:mod:`.executors`) and the Ray executor
(:mod:`.ray_executor`).
"""
import logging
import os
import pickle
import sys
import threading
import time

from caffe_attacks.errors import UsageError
from caffe_attacks.runner.units import load_work, run_unit

log = logging.getLogger(__name__)

THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
# A unit is sent again at most this many times after its worker died.
MAX_RETRIES = 3

# per worker process: pickled WorkSpec -> its loaded Work (nets load once per worker)
WORKER_CACHE = {}


def machine_cores():
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:     # not on Linux
        return os.cpu_count() or 1


def threads_per_worker(workers, cores=None):
    """BLAS/torch threads of each of ``workers`` workers sharing ``cores`` cores (>= 1)."""
    return max(1, (cores or machine_cores()) // max(1, workers))


def limit_threads(threads):
    """Set this worker's BLAS and torch thread counts before Caffe's BLAS loads."""
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)
    if "caffe" in sys.modules:
        log.warning("Caffe is already loaded in this worker; its BLAS keeps its threads")


def exit_with_parent(parent_pid, poll_s=1.0):
    """End this worker process when the driver that started it is gone.

    A killed driver cannot stop its workers; without this they would wait on
    their task queue forever (and keep their nets in memory).
    """
    def watch():
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        os._exit(1)
    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def start_local_worker(threads, parent_pid):
    """The initializer of a local worker process: thread limits, then the parent watch."""
    limit_threads(threads)
    exit_with_parent(parent_pid)


def worker_run_unit(spec, unit, threads=None):
    """Run one unit in a worker process (its nets loaded on first use); returns (unit, UnitResult)."""
    key = pickle.dumps(spec)
    if key not in WORKER_CACHE:
        WORKER_CACHE.clear()        # one spec at a time: free the previous nets
        WORKER_CACHE[key] = load_work(spec)
        if threads and "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)
    return unit, run_unit(WORKER_CACHE[key], unit, spec.options)


def check_workers(workers):
    """UsageError unless ``workers`` is None or a positive integer."""
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or workers < 1):
        raise UsageError("--workers must be a positive integer, got %r" % (workers,))
