# fpgen: `make install` then `make test` (the whole suite) or `make test-fast` (all but the tests marked slow).
#
# TORCH is the torch requirement installed before the package. torch==2.13.0 is a CUDA build from
# PyPI on a Linux GPU box and the CPU build on machines that provide one locally; to choose a CUDA
# variant, e.g.: make install TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
#
# The tests run in WORKERS pytest-xdist processes (one test module per worker at a time), each with its
# share of the cores: many tests wait on child processes and ffmpeg, which the other worker fills.

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PYTEST_ARGS ?=
WORKERS ?= 2
BIN = $(VENV)/bin

DEMO_DATA ?= .demo/data
CLIPS ?= 2000
SEED ?= 0
DEMO_WORKERS ?= 2

.PHONY: install test test-fast clean demo-data

install:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[test]"
	$(BIN)/fpgen --version

test:
	$(BIN)/python -m pytest -q -n $(WORKERS) --dist loadscope $(PYTEST_ARGS)

test-fast:
	$(BIN)/python -m pytest -q -n $(WORKERS) --dist loadscope -m "not slow" $(PYTEST_ARGS)

# The demo model's training clips and held-out clips (demo/data.py; stills fetched with pip): see demo/README.md.
demo-data:
	$(BIN)/python demo/data.py $(DEMO_DATA) --clips $(CLIPS) --seed $(SEED) --workers $(DEMO_WORKERS)

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
