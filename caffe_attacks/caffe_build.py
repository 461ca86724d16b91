"""What the installed Caffe build can do, asked without risking this process.

pycaffe has no "was I built with CUDA" call, and ``caffe.set_device`` on a
CPU-only build (or with a device id the machine lacks) ends in a glog FATAL
that aborts the interpreter. So the GPU request is tried once in a child
interpreter; its abort message becomes a Python exception here.
"""
import functools
import logging
import os
import subprocess
import sys

log = logging.getLogger(__name__)

_PROBE = ("import sys, caffe; caffe.set_device(int(sys.argv[1])); caffe.set_mode_gpu(); "
          "print('ok')")


class GpuUnavailable(ValueError):
    """The requested GPU cannot be used by this Caffe build or machine."""


@functools.lru_cache(maxsize=None)
def gpu_problem(device_id):
    """None if Caffe can use GPU `device_id`, else the reason (its fatal log line)."""
    env = dict(os.environ, GLOG_minloglevel="0", GLOG_logtostderr="1")
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE, str(device_id)],
                              capture_output=True, text=True, timeout=300, env=env)
    except (OSError, subprocess.TimeoutExpired) as e:
        return "the GPU probe did not finish (%s)" % e
    if proc.returncode == 0 and proc.stdout.strip().endswith("ok"):
        return None
    fatal = [line for line in proc.stderr.splitlines() if line.startswith(("F", "E"))]
    reason = fatal[-1].split("] ", 1)[-1] if fatal else (proc.stderr.strip().splitlines()
                                                           or ["exit %d" % proc.returncode])[-1]
    log.info("GPU probe for device %d: exit %d, %s", device_id, proc.returncode, reason)
    return reason


def require_gpu(device_id):
    """Raise GpuUnavailable unless Caffe can run on GPU `device_id`."""
    try:
        device_id = int(device_id)
    except (TypeError, ValueError):
        raise GpuUnavailable("--gpu must be a device number, got %r" % (device_id,)) from None
    if device_id < 0:
        raise GpuUnavailable("--gpu must be a device number >= 0, got %d" % device_id)
    problem = gpu_problem(device_id)
    if problem:
        raise GpuUnavailable("cannot use GPU %d with this Caffe build: %s (run without --gpu, "
                             "or build Caffe with CAFFE_GPU=1)" % (device_id, problem))
