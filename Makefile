# The two commands a new user needs (see README):
#   make demo   set up, then score real videos with the real Kinetics-400 I3D model
#   make test   set up, then lint and run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test

setup: $(VENV)/.installed

# torch is pinned to the CPU build's version first: an unpinned torch pulls GBs of CUDA packages.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

demo: setup
	$(BIN)/r21d demo $(DEMO_ARGS)

test: setup
	$(BIN)/ruff check .
	$(BIN)/pytest -q -m "not ray" --ignore=tests/train $(PYTEST_ARGS)
	$(BIN)/pytest -q -m "not ray" tests/train $(PYTEST_ARGS)
	$(BIN)/pytest -q -m ray $(PYTEST_ARGS)
