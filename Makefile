# caffe_attacks — every user-facing command is a target here.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := build-essential patchelf libboost-system-dev libboost-thread-dev \
	libboost-filesystem-dev libboost-python-dev libboost-regex-dev \
	libprotobuf-dev protobuf-compiler libgoogle-glog-dev libgflags-dev \
	libhdf5-dev libopenblas-dev
APT_OPTIONAL := chromium
PYTEST_ARGS ?=
TORCH_WHEELS ?= /opt/wheels

.PHONY: setup apt venv caffe lock test test-all clean-caffe clean

## setup: Debian packages, .venv with the locked versions, and a cached pycaffe build (idempotent)
setup: $(VENV)/.setup-done

$(VENV)/.setup-done: requirements.txt requirements.lock pyproject.toml setup.py scripts/build_caffe.sh
	@$(MAKE) --no-print-directory apt venv caffe
	@touch $@

apt:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "[setup] installing Debian packages: $$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "[setup] need root for apt-get (or install: $$missing)"; exit 1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@# optional: a headless browser for the report's browser test (it skips without one)
	@for p in $(APT_OPTIONAL); do dpkg -s $$p >/dev/null 2>&1 && continue; \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "[setup] installing optional Debian package: $$p"; \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$p; } \
	      >/dev/null 2>&1 || \
	      echo "[setup] could not install $$p: the report's browser test will skip"; \
	  else echo "[setup] optional $$p not installed: the report's browser test will skip"; fi; \
	done

# Every pip install below takes requirements.lock as constraints: the exact
# versions the suite passed with (`make lock` rewrites it from this venv).
venv:
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --upgrade pip setuptools wheel -c requirements.lock
	@$(PY) -m pip install --quiet -r requirements.txt -c requirements.lock
	@# The official Cityscapes label table, for a test; its declared dependencies
	@# (a Python-2 typing backport among them) are not needed for labels.py.
	@$(PY) -m pip install --quiet --no-deps cityscapesscripts==2.3.0
	@# SegPGD/CosPGD reference weights for a test; it declares torch (see below).
	@$(PY) -m pip install --quiet --no-deps cospgd==0.1.3
	@$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@# The optional torch engine: only a CPU wheel that lies on local disk,
	@# never a multi-GB CUDA download; without one its tests skip.
	@$(PY) -c "import torch" 2>/dev/null || { \
	  wheel=$$(ls $(TORCH_WHEELS)/torch-2.13.0+cpu-cp311-*.whl 2>/dev/null | head -n 1); \
	  if [ -n "$$wheel" ]; then $(PY) -m pip install --quiet "$$wheel" -c requirements.lock; \
	  else echo "[setup] no local torch CPU wheel in $(TORCH_WHEELS): the torch-engine tests will skip"; fi; }

caffe:
	@scripts/build_caffe.sh $(PY)

## lock: rewrite requirements.lock from .venv (after the suite passes with it)
lock:
	@scripts/lock_requirements.sh $(PY) requirements.lock

## test: set up when needed, then the suite (slow tests excluded; see test-all)
test: setup
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS) tests

## test-all: the whole suite, slow tests included
test-all: setup
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

## clean-caffe: drop the cached Caffe build (the next setup rebuilds it)
clean-caffe:
	rm -rf $${CAFFE_CACHE:-$${XDG_CACHE_HOME:-$$HOME/.cache}/caffe_attacks}
	rm -f $(VENV)/.setup-done

clean:
	rm -rf $(VENV) build *.egg-info

# --- Commands backed by the package's CLIs (each module owns its logic) ---
WEIGHTS_DIR ?= weights
NAMES ?=
.PHONY: prototxt verify-weights fetch-weights zoo
## prototxt: regenerate prototxt/*.prototxt from the zoo generators
prototxt: setup
	$(PY) -m caffe_attacks.zoo write prototxt

## zoo: list the model zoo
zoo: setup
	$(PY) -m caffe_attacks.zoo list

## verify-weights: md5 of every caffemodel in WEIGHTS_DIR against the manifest
verify-weights: setup
	$(PY) -m caffe_attacks.weights verify --dir $(WEIGHTS_DIR)

## fetch-weights: download public caffemodels (NAMES="a b" for a subset)
fetch-weights: setup
	$(PY) -m caffe_attacks.weights fetch --dir $(WEIGHTS_DIR) $(NAMES)

# --- Experiments: the supplementary's tables and figures, and the demo ---
# LIMIT=N: first N images only (the outputs say partial); VOC_DIR / CITYSCAPES_DIR:
# the datasets; WEIGHTS_DIR: the caffemodels; RESULTS: where the store and outputs go;
# NO_RUN=1: render from the store only.
LIMIT ?=
VOC_DIR ?=
CITYSCAPES_DIR ?=
RESULTS ?= results
DEMO_LIMIT ?= 12
NO_RUN ?=
# WORKERS=N: N worker processes (or Ray actors); EXECUTOR=ray [RAY_ADDRESS=HOST:PORT]:
# Ray actors on a cluster (a local Ray instance without an address); GPU=0: run on
# the GPU (with EXECUTOR=ray: one GPU per worker).
WORKERS ?=
GPU ?=
EXECUTOR ?=
RAY_ADDRESS ?=
SCALE_ARGS = $(if $(WORKERS),--workers $(WORKERS)) $(if $(EXECUTOR),--executor $(EXECUTOR)) \
	$(if $(RAY_ADDRESS),--ray-address $(RAY_ADDRESS)) $(if $(GPU),--gpu $(GPU))
EXPERIMENT_ARGS = --results $(RESULTS) --weights-dir $(WEIGHTS_DIR) \
	$(if $(LIMIT),--limit $(LIMIT)) $(if $(VOC_DIR),--voc-dir $(VOC_DIR)) \
	$(if $(CITYSCAPES_DIR),--cityscapes-dir $(CITYSCAPES_DIR)) $(if $(NO_RUN),--no-run) \
	$(if $(SYNTHETIC_DIR),--synthetic-dir $(SYNTHETIC_DIR)) $(SCALE_ARGS)
.PHONY: demo demo-strong train-tiny tables figures experiments-list

## demo: attack the embedded tiny_synthetic model (no downloads); results/demo/
demo: setup
	$(PY) -m caffe_attacks.demo --limit $(DEMO_LIMIT)

## demo-strong: the stronger attacks (PGD, SegPGD, CosPGD, SEA) on the embedded model; results/demo_strong/
DEMO_STRONG_LIMIT ?= 4
DEMO_STRONG_ITERATIONS ?= 50
demo-strong: setup
	@[ -d data/synthetic_voc ] || $(PY) -m caffe_attacks.datasets.synthetic --format voc \
		--out data/synthetic_voc --n 400 --seed 0
	$(PY) -m caffe_attacks.run --model tiny_synthetic --dataset synthetic \
		--data-dir data/synthetic_voc --attack ifgsm pgd segpgd cospgd sea --eps 0.5 2 8 \
		--iterations $(DEMO_STRONG_ITERATIONS) --limit $(DEMO_STRONG_LIMIT) \
		--out results/demo_strong/results.h5

## train-tiny: retrain the embedded default model (caffe_attacks/data/tiny_synthetic.caffemodel)
train-tiny: setup
	$(PY) -m caffe_attacks.train_tiny

## table-A5 (A1..A18): run what the store lacks, then write results/tables/table_A5.{md,csv,tex}
table-A%: setup
	$(PY) -m caffe_attacks.experiments table A$* $(EXPERIMENT_ARGS)

## figure-A4 (A1..A14): run what the store lacks, then write results/figures/fig_A4.{png,pdf}
figure-A%: setup
	$(PY) -m caffe_attacks.experiments figure A$* $(EXPERIMENT_ARGS)

## table-B1 / table-B2: the stronger attacks (PGD, SegPGD, CosPGD, SEA) beside the paper's Iterative FGSM
table-B%: setup
	$(PY) -m caffe_attacks.experiments table B$* $(EXPERIMENT_ARGS)

## figure-B1 / figure-B2: IoU Ratio against eps, the paper's Iterative FGSM and SEA per model
figure-B%: setup
	$(PY) -m caffe_attacks.experiments figure B$* $(EXPERIMENT_ARGS)

## tables / figures: every table / figure (continues past missing inputs, lists them)
tables: setup
	$(PY) -m caffe_attacks.experiments table all $(EXPERIMENT_ARGS)

figures: setup
	$(PY) -m caffe_attacks.experiments figure all $(EXPERIMENT_ARGS)

experiments-list: setup
	$(PY) -m caffe_attacks.experiments list

## plan-A5 (A1..A18): what table A5 costs (units, images, passes); MEASURE=1 times each net
plan-A%: setup
	$(PY) -m caffe_attacks.experiments plan table A$* $(EXPERIMENT_ARGS) $(if $(MEASURE),--measure)

## plan-B1 / plan-B2: the same for the stronger attacks' tables (SEA counted as its three APGD runs)
plan-B%: setup
	$(PY) -m caffe_attacks.experiments plan table B$* $(EXPERIMENT_ARGS) $(if $(MEASURE),--measure)

.PHONY: report
## report: results/report/index.html, every table beside the paper, the figures and the
## provenance, from RESULTS/store.h5 and the demo's RESULTS/demo/store.h5 (runs nothing)
report: setup
	$(PY) -m caffe_attacks.experiments report --results $(RESULTS) --weights-dir $(WEIGHTS_DIR) \
		$(if $(VOC_DIR),--voc-dir $(VOC_DIR)) $(if $(CITYSCAPES_DIR),--cityscapes-dir $(CITYSCAPES_DIR)) \
		$(if $(SYNTHETIC_DIR),--synthetic-dir $(SYNTHETIC_DIR))
