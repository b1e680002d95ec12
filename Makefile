# Each target sets itself up: a virtual environment in .venv with everything installed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# torch/torchvision: a matched pair that pip takes from this machine's disk (see docs/development.md).
TORCH_PAIR ?= torch==2.14.1 torchvision==0.29.1

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PAIR)
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

.PHONY: setup demo test lint bench mutation
setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m jobs.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

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
