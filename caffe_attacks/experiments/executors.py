"""Executors: the units of a sweep run by worker processes here, or by Ray actors anywhere.

An executor has one method, ``run(spec, units)``, that yields ``(unit,
UnitResult)`` (the records of each image, the bad samples skipped) as units
finish, in any order. Workers are
stateless: each loads the nets of a :class:`~caffe_attacks.runner.units.WorkSpec`
once (cached per process), attacks the units it is sent and returns records;
the driver (:func:`caffe_attacks.runner.sweep.sweep`) alone writes the store.
A unit whose worker dies is sent again; nothing of it was written, so no
record is lost or written twice.

- :class:`LocalExecutor`: ``--workers N`` processes on this machine, each
  with cores/N BLAS and torch threads;
- :class:`caffe_attacks.experiments.ray_executor.RayExecutor`: ``--executor
  ray``, one Ray actor per worker (and per GPU with ``num_gpus=1``); Ray is
  imported only there.
"""
import logging
import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, wait
from concurrent.futures.process import BrokenProcessPool, ProcessPoolExecutor

from caffe_attacks.errors import UsageError
from caffe_attacks.experiments.ray_executor import RayExecutor
from caffe_attacks.experiments.workers import (MAX_RETRIES, check_workers, start_local_worker,
                                               threads_per_worker, worker_run_unit)

log = logging.getLogger(__name__)

EXECUTORS = ("local", "ray")


class LocalExecutor:
    """``workers`` worker processes on this machine (spawned: a fresh interpreter each).

    threads: BLAS/torch threads per worker (default cores/workers).
    """

    def __init__(self, workers, threads=None):
        check_workers(workers)
        self.workers = workers
        self.threads = threads or threads_per_worker(workers)

    def start_pool(self):
        # spawn, not fork: a forked worker would inherit a loaded Caffe and its
        # BLAS threads; the thread limits must come before Caffe loads
        return ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=start_local_worker,
                                   initargs=(self.threads, os.getpid()))

    def run(self, spec, units):
        """Yield (unit, UnitResult) as units finish; a unit of a dead worker goes out again."""
        pending = {u.number: u for u in units}
        tries = dict.fromkeys(pending, 0)
        while pending:
            pool = self.start_pool()
            try:
                futures = {pool.submit(worker_run_unit, spec, u, self.threads): u
                           for u in pending.values()}
                broken = False
                while futures:
                    done, _ = wait(futures, return_when=FIRST_COMPLETED)
                    for f in done:
                        unit = futures.pop(f)
                        if isinstance(f.exception(), BrokenProcessPool):
                            broken = True
                            continue
                        pending.pop(unit.number)
                        yield f.result()        # a worker's own error is raised here
                    if broken:
                        break
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
            if broken:
                for n in pending:
                    tries[n] += 1
                    if tries[n] > MAX_RETRIES:
                        raise RuntimeError("a worker died %d times on unit %d (ids %s)"
                                           % (tries[n], n, ", ".join(pending[n].ids)))
                log.warning("a worker process died; sending %d unfinished unit(s) again",
                            len(pending))


def make_executor(workers=None, executor="local", ray_address=None, gpu=None):
    """The executor the options name: None (this process) for local with at most one worker.

    gpu: the run uses a GPU (Ray then asks one per worker).
    """
    check_workers(workers)
    if executor not in EXECUTORS:
        raise UsageError("--executor must be one of %s, got %r" % (", ".join(EXECUTORS), executor))
    if executor == "ray":
        return RayExecutor(workers, address=ray_address, gpu=gpu)
    if ray_address:
        raise UsageError("--ray-address needs --executor ray")
    if not workers or workers == 1:
        return None
    return LocalExecutor(workers)
