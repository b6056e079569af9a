# The README's two commands. Each bootstraps .venv with the pinned dependencies first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)

.PHONY: repro test test-fast lint

repro: $(VENV)/.installed
	dvc repro

test: $(VENV)/.installed
	ruff check .
	OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-PASSIVE} pytest

# The edit loop's tier, under 3 minutes here: the tests not marked slow (tests/conftest.py) or e2e (dvc repro).
# `make test`, which CI runs, is the whole suite. OMP_WAIT_POLICY=PASSIVE (both targets): on cores other processes
# are busy with (the e2e tests' dvc subprocesses, a shared machine), PyTorch's spinning OpenMP threads slow a
# 2-thread evaluation many times over.
test-fast: $(VENV)/.installed
	ruff check .
	OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-PASSIVE} pytest -m "not slow and not e2e"

lint: $(VENV)/.installed
	ruff check .

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@
