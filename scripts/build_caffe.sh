#!/usr/bin/env bash
# Build CPU-only (or CUDA) pycaffe from the pinned BVLC source distribution and
# install it into a virtualenv.  Idempotent: the compiled result is cached
# outside the work tree, keyed by the source hash and the build flags, so a
# second run (or a fresh clone on the same machine) only copies files.
#
# usage: scripts/build_caffe.sh VENV_PYTHON
# env:   CAFFE_GPU=1          build with CUDA (CPU_ONLY off); untested here
#        CUDA_DIR=/usr/local/cuda
#        CAFFE_CACHE=~/.cache/caffe_attacks
#        CAFFE_JOBS=N         parallel make jobs (default: nproc)
set -euo pipefail

PY=${1:?usage: build_caffe.sh VENV_PYTHON}
SDIST_NAME=brocolli-caffe
SDIST_VERSION=9.0.2
SDIST_SHA256=c6410cc60bdd6db685d441b66be7df05410f8850ac88d6b75d48ef9b2315c08a
CACHE=${CAFFE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/caffe_attacks}
GPU=${CAFFE_GPU:-0}
CUDA_DIR=${CUDA_DIR:-/usr/local/cuda}
JOBS=${CAFFE_JOBS:-$(nproc)}

log() { echo "[caffe] $*" >&2; }

site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if "$PY" -c 'import caffe, caffe._caffe' >/dev/null 2>&1 \
   && [ -f "$site/caffe/.built-by-caffe_attacks" ]; then
  exit 0
fi

py_inc=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
py_libdir=$("$PY" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')
py_ver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
np_inc=$("$PY" -c 'import numpy; print(numpy.get_include())')
boost_py="boost_python${py_ver/./}"

# The cache key covers everything that changes the binary.
flags="gpu=$GPU cuda=$CUDA_DIR py=$py_ver boost=$boost_py np=$("$PY" -c 'import numpy; print(numpy.__version__.split(".")[0])')"
key=$(printf '%s %s' "$SDIST_SHA256" "$flags" | sha256sum | cut -c1-16)
prefix="$CACHE/caffe-$SDIST_VERSION-$key"

if [ ! -f "$prefix/caffe/.built-by-caffe_attacks" ]; then
  mkdir -p "$CACHE"
  sdist="$CACHE/$SDIST_NAME-$SDIST_VERSION.tar.gz"
  if [ ! -f "$sdist" ] || ! echo "$SDIST_SHA256  $sdist" | sha256sum -c --quiet 2>/dev/null; then
    log "downloading $SDIST_NAME==$SDIST_VERSION (source distribution)"
    tmpd=$(mktemp -d)
    "$PY" -m pip download --quiet --no-deps --no-binary :all: --no-build-isolation \
        "$SDIST_NAME==$SDIST_VERSION" -d "$tmpd" >/dev/null 2>&1 \
      || "$PY" -m pip download --quiet --no-deps --no-binary :all: \
        "$SDIST_NAME==$SDIST_VERSION" -d "$tmpd"
    mv "$tmpd"/$SDIST_NAME-$SDIST_VERSION.tar.gz "$sdist"
    rm -rf "$tmpd"
  fi
  if ! echo "$SDIST_SHA256  $sdist" | sha256sum -c --quiet; then
    log "sha256 mismatch for $sdist: expected $SDIST_SHA256; refusing to build"
    rm -f "$sdist"; exit 1
  fi

  src="$CACHE/build-$key"
  rm -rf "$src"; mkdir -p "$src"
  tar xzf "$sdist" -C "$src" --strip-components=1
  {
    if [ "$GPU" = 1 ]; then
      echo "CUDA_DIR := $CUDA_DIR"
      echo "CUDA_ARCH := -gencode arch=compute_60,code=sm_60 -gencode arch=compute_70,code=sm_70 -gencode arch=compute_80,code=sm_80 -gencode arch=compute_80,code=compute_80"
    else
      echo "CPU_ONLY := 1"
    fi
    cat <<CFG
USE_OPENCV := 0
USE_LEVELDB := 0
USE_LMDB := 0
BLAS := open
WITH_PYTHON_LAYER := 1
PYTHON_INCLUDE := $py_inc $np_inc
PYTHON_LIB := $py_libdir
PYTHON_LIBRARIES := $boost_py python$py_ver
INCLUDE_DIRS := \$(PYTHON_INCLUDE) /usr/local/include /usr/include/hdf5/serial
LIBRARY_DIRS := \$(PYTHON_LIB) /usr/local/lib /usr/lib /usr/lib/x86_64-linux-gnu/hdf5/serial
BUILD_DIR := build
DISTRIBUTE_DIR := distribute
Q ?= @
CFG
  } > "$src/Makefile.config"

  log "building pycaffe ($flags) with $JOBS jobs; log: $src/build.log"
  if ! (cd "$src" && make -j"$JOBS" pycaffe) > "$src/build.log" 2>&1; then
    log "BUILD FAILED; last lines of $src/build.log:"
    tail -n 30 "$src/build.log" >&2
    # Name the Debian package behind the first missing header or library.
    miss=$(grep -oE "fatal error: [^:]+: No such file|cannot find -l[A-Za-z0-9_.]+" "$src/build.log" | head -1 || true)
    case "$miss" in
      *boost*|*-lboost*) hint="libboost-{system,thread,filesystem,python,regex}-dev" ;;
      *glog*)            hint="libgoogle-glog-dev" ;;
      *gflags*)          hint="libgflags-dev" ;;
      *hdf5*)            hint="libhdf5-dev" ;;
      *cblas*|*openblas*) hint="libopenblas-dev" ;;
      *protobuf*|*google/protobuf*) hint="libprotobuf-dev protobuf-compiler" ;;
      *Python.h*|*-lpython*) hint="the Python development headers (python3-dev)" ;;
      *numpy*)           hint="numpy in the virtualenv" ;;
      *)                 hint="" ;;
    esac
    [ -n "$miss" ] && log "first missing piece: $miss"
    [ -n "$hint" ] && log "likely missing package: $hint (run 'make setup' as root)"
    exit 1
  fi

  # Stage a self-contained package: libcaffe beside _caffe.so, RUNPATH $ORIGIN.
  stage="$prefix.tmp"; rm -rf "$stage"; mkdir -p "$stage"
  cp -r "$src/python/caffe" "$stage/caffe"
  # This fork's Makefile puts libcaffe under .temp_release/lib, BVLC's under build/lib.
  lib=$(find "$src" -name 'libcaffe.so.*' -type f -path '*/lib/*' | head -n 1)
  [ -n "$lib" ] || { log "build finished but no libcaffe.so.* was found under $src"; exit 1; }
  cp "$lib" "$stage/caffe/$(basename "$lib")"
  soname=$(objdump -p "$lib" | awk '/SONAME/ {print $2}')
  if [ -n "$soname" ] && [ "$soname" != "$(basename "$lib")" ]; then
    ln -sf "$(basename "$lib")" "$stage/caffe/$soname"
  fi
  patchelf --set-rpath '$ORIGIN' "$stage/caffe/_caffe.so"
  patchelf --set-rpath '$ORIGIN' "$stage/caffe/$(basename "$lib")"
  # The sdist ships a caffe_pb2.py from an old protoc that today's protobuf
  # runtime rejects ("duplicate file name"); regenerate it with this protoc.
  protoc --proto_path="$src/src" --python_out="$stage" "$src/src/caffe/proto/caffe.proto"
  find "$stage/caffe" -name '*.pyc' -delete; rm -rf "$stage/caffe/test"
  echo "$SDIST_NAME==$SDIST_VERSION $flags" > "$stage/caffe/.built-by-caffe_attacks"
  rm -rf "$prefix"; mv "$stage" "$prefix"
  rm -rf "$src"
  log "cached in $prefix"
fi

rm -rf "$site/caffe"
cp -a "$prefix/caffe" "$site/caffe"
"$PY" -c 'import caffe' || { log "installed, but 'import caffe' fails"; exit 1; }
log "pycaffe installed into $site/caffe"
