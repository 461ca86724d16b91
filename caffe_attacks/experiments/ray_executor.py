"""The Ray executor (``--executor ray [--ray-address ADDR]``): one Ray actor per worker.

Each actor is a stateless worker process with its own resources (``num_cpus``
threads; ``num_gpus=1`` for a GPU run, so Ray places one worker per GPU and
shows it that GPU alone, as GPU 0). It loads the nets of a WorkSpec once and
returns the records of the units it is sent; the driver writes the store.
Ray restarts a killed actor and runs its unfinished units again
(``max_restarts``/``max_task_retries``); a unit's records reach the driver once.

Without an address a local Ray instance starts on 127.0.0.1 with this
machine's cores; with one, the driver joins that cluster (``ray start
--head`` there first). Only this module imports Ray.
"""
import logging
import os
import socket
from collections import deque

from caffe_attacks.errors import UsageError
from caffe_attacks.experiments.workers import (MAX_RETRIES, check_workers, limit_threads,
                                                 machine_cores, worker_run_unit)

log = logging.getLogger(__name__)

# units queued per actor: one running, one waiting, so an actor never idles
# while the driver hands out the next unit
UNITS_IN_FLIGHT = 2
CONNECT_TIMEOUT_S = 5.0


class UnitWorker:
    """A Ray actor's body: the thread limit first, then units (nets cached per spec)."""

    def __init__(self, threads):
        self.threads = threads
        limit_threads(threads)

    def run(self, spec, unit):
        return worker_run_unit(spec, unit, self.threads)

    def pid(self):
        return os.getpid()


def check_reachable(address, timeout=CONNECT_TIMEOUT_S):
    """UsageError unless a TCP connection to ``host:port`` (or ``ray://host:port``) opens."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError("--ray-address must be HOST:PORT (or ray://HOST:PORT, auto), got %r"
                         % address)
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise UsageError("cannot reach the Ray cluster at %s: %s" % (address, e)) from None


def is_gpu_run(spec):
    options = spec.options
    return options.gpu is not None or (options.device or "").startswith("cuda")


class RayExecutor:
    """Units on Ray actors: ``workers`` of them (default: one per GPU, or per CPU core).

    address: a running cluster (``HOST:PORT``, ``ray://...``, ``auto``); None
    starts a local instance on 127.0.0.1. gpu: the runs use GPUs (one per actor).
    """

    def __init__(self, workers=None, address=None, gpu=None):
        check_workers(workers)
        if address:
            check_reachable(address)
        else:
            # a local instance: every Ray server on the loopback address, not on
            # the machine's network interface (Ray reads this when imported)
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        import ray
        self.ray = ray
        if not ray.is_initialized():
            try:
                if address:
                    ray.init(address=address, log_to_driver=False)
                else:
                    ray.init(address="local", num_cpus=machine_cores(), include_dashboard=False,
                             _node_ip_address="127.0.0.1", log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise UsageError("cannot start or join Ray (%s): %s"
                                 % (address or "local", e)) from None
        resources = ray.cluster_resources()
        self.cpus = float(resources.get("CPU", 1))
        self.gpus = int(resources.get("GPU", 0))
        self.gpu = gpu is not None
        if self.gpu and self.gpus == 0:
            raise UsageError("the Ray cluster has no GPU for a --gpu run")
        self.workers = workers or (self.gpus if self.gpu else max(1, int(self.cpus)))
        if self.gpu and self.workers > self.gpus:
            raise UsageError("%d workers need %d GPUs; the Ray cluster has %d"
                             % (self.workers, self.workers, self.gpus))
        # whole cores per worker where the cluster has them; never more than it has
        self.num_cpus = max(1, int(self.cpus // self.workers)) if self.workers <= self.cpus \
            else self.cpus / self.workers
        self.actors = []

    def start_actors(self):
        actor_class = self.ray.remote(UnitWorker)
        threads = max(1, int(self.num_cpus))
        return [actor_class.options(num_cpus=self.num_cpus, num_gpus=1 if self.gpu else 0,
                                    max_restarts=MAX_RETRIES, max_task_retries=MAX_RETRIES)
                .remote(threads) for _ in range(self.workers)]

    def worker_pids(self):
        """Process ids of the live actors (for monitoring)."""
        return self.ray.get([a.pid.remote() for a in self.actors])

    def run(self, spec, units):
        """Yield (unit, UnitResult) as units finish on the actors."""
        ray = self.ray
        if is_gpu_run(spec):
            # Ray shows each actor its one GPU as device 0
            spec = spec.on_device(gpu=0 if spec.options.gpu is not None else None,
                                  device="cuda:0" if spec.options.device else None)
        queue = deque(units)
        self.actors = self.start_actors()
        running = {}        # object ref -> (unit, actor)
        load = {id(a): 0 for a in self.actors}
        try:
            while queue or running:
                for actor in self.actors:
                    while queue and load[id(actor)] < UNITS_IN_FLIGHT:
                        unit = queue.popleft()
                        running[actor.run.remote(spec, unit)] = (unit, actor)
                        load[id(actor)] += 1
                ready, _ = ray.wait(list(running), num_returns=1)
                unit, actor = running.pop(ready[0])
                load[id(actor)] -= 1
                try:
                    result = ray.get(ready[0])
                except ray.exceptions.RayActorError as e:
                    raise RuntimeError("a Ray worker died more than %d times (unit %d): %s"
                                       % (MAX_RETRIES, unit.number, e)) from None
                except ray.exceptions.RayTaskError as e:
                    # the worker's own exception (a UsageError for missing weights...)
                    raise e.as_instanceof_cause() from None
                yield result
        finally:
            for actor in self.actors:
                ray.kill(actor)
            self.actors = []
