# Each target sets itself up: a virtual environment in .venv with everything installed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Installs come from the lock files in requirements/ (the full resolved set, with hashes), never from
# pyproject's ranges: two setups a week apart get the same packages. dev.lock = cpu.lock + the test extra.
# torch/torchvision: the matched pair in requirements/torch.in; pip takes it from this machine's disk
# (see docs/development.md).
LOCK := requirements/dev.lock

$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r $(LOCK)
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

# Re-resolve the locks after a change to pyproject.toml or requirements/torch.in. Pins that still satisfy
# pyproject are kept (uv reads the old lock as preferences); `make lock LOCK_FLAGS=--upgrade` moves every
# package to its newest allowed release. The locks target the images' Python 3.11 on x86_64 Linux wherever
# this runs. cpu.lock: the CPU image; gpu.lock: the GPU image (faiss-gpu-cu12 in place of faiss-cpu);
# dev.lock: cpu.lock plus the test extra (make setup, CI). gpu and dev are constrained to cpu's pins.
UV_VERSION ?= 0.13.9
LOCK_FLAGS ?=
UV_COMPILE = $(BIN)/uv pip compile -q --generate-hashes --custom-compile-command "make lock" \
	--python-version 3.11 --python-platform x86_64-manylinux_2_28 $(LOCK_FLAGS) pyproject.toml requirements/torch.in

.PHONY: setup lock demo test test-slow lint bench mutation
setup: $(STAMP)

lock:
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q uv==$(UV_VERSION)
	$(UV_COMPILE) -o requirements/cpu.lock
	$(UV_COMPILE) --extra test -c requirements/cpu.lock -o requirements/dev.lock
	$(UV_COMPILE) --extra gpu --no-emit-package faiss-cpu -c requirements/cpu.lock -o requirements/gpu.lock

demo: $(STAMP)
	$(BIN)/python -m jobs.demo

# The multi-node cluster tests (ray.cluster_utils) and the slow memory case take minutes: .ci/run runs them as
# their own step (make test-slow).
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not multinode and not slow" tests

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -s -m "multinode or slow" tests

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python bench/bench_patchcore_vs_anomalib.py

# Mutation testing (slow, not in CI): mutmut mutates the modules in pyproject's [tool.mutmut] (score, fit,
# sources, video, memory_bank) and runs the fast tests that cover them; results in mutants/, `mutmut results`.
# OMP_NUM_THREADS=1: faiss's OpenMP pool does not survive the fork of each mutant run (it spins until the timeout).
mutation: $(STAMP)
	$(BIN)/pip install -q mutmut
	OMP_NUM_THREADS=1 $(BIN)/mutmut run --max-children 2
	OMP_NUM_THREADS=1 $(BIN)/mutmut results
