# The README's two commands. Each bootstraps .venv with the pinned dependencies first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)

.PHONY: repro test lint

repro: $(VENV)/.installed
	dvc repro

test: $(VENV)/.installed
	ruff check .
	pytest

lint: $(VENV)/.installed
	ruff check .

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@
