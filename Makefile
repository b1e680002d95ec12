# Each target sets itself up: a virtual environment in .venv with everything installed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# torch/torchvision: a matched pair that pip takes from this machine's disk (see README).
TORCH_PAIR ?= torch==2.14.1 torchvision==0.29.1

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PAIR)
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

.PHONY: setup demo test lint bench
setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m jobs.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python bench/bench_patchcore_vs_anomalib.py
