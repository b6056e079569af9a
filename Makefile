# The README's two commands. Each bootstraps .venv with the pinned dependencies first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)

.PHONY: repro test test-fast lint plots

repro: $(VENV)/.installed
	dvc repro

# Two pytest-xdist workers, one per core, each taking whole test files (module fixtures are built once) in the order
# tests/conftest.py gives them (longest first; xdist's default reorders files by test count), each
# single-threaded unless a test sets its threads: the suite is mostly single-threaded work (TVM and LLVM,
# torch.export, DVC; in one process it kept one core busy), and 2-thread workers would oversubscribe the cores.
# OMP_WAIT_POLICY=PASSIVE: on cores other processes are busy with (the e2e tests' dvc subprocesses, a shared
# machine), PyTorch's spinning OpenMP threads slow a 2-thread evaluation many times over.
PYTEST := OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-PASSIVE} pytest -n 2 --dist loadfile --no-loadscope-reorder

test: $(VENV)/.installed
	ruff check .
	$(PYTEST)

# The edit loop's tier, under 3 minutes here: the tests not marked slow (tests/conftest.py) or e2e (dvc repro).
# `make test`, which CI runs, is the whole suite.
test-fast: $(VENV)/.installed
	ruff check .
	$(PYTEST) -m "not slow and not e2e"

# `dvc plots show` as a page that works offline (docs/plots.md): vega, vega-lite and vega-embed from npm, installed once
# in VEGA_DIR and copied beside the page, in place of the CDN dvc's own page loads them from. Open dvc_plots/index.html.
VEGA_DIR ?= /tmp/lprnet-vega
VEGA_BUILDS := vega/build/vega.min.js vega-lite/build/vega-lite.min.js vega-embed/build/vega-embed.min.js
plots: $(VENV)/.installed
	test -d $(VEGA_DIR)/node_modules/vega-embed || npm install --silent --prefix $(VEGA_DIR) vega@5.33.1 vega-lite@5.23.0 vega-embed@6.29.0
	dvc plots show --html-template .dvc/plots/page.html -o dvc_plots
	mkdir -p dvc_plots/vega
	cp $(addprefix $(VEGA_DIR)/node_modules/,$(VEGA_BUILDS)) dvc_plots/vega/

lint: $(VENV)/.installed
	ruff check .

# pip compiles the bytecode of what it installs one file at a time, most of the install's time here; compileall does
# it on every core (85 s in all against 139 s), leaving out the dependencies' own test suites (-x: a fifth of their
# files, never imported here; 51 -> 39 s). Like pip, it skips a file that does not compile (torch ships Python
# 3.12-only test helpers), hence -qq and `|| true`.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --no-compile -c constraints.txt -e '.[dev]'
	$(BIN)/python -m compileall -qq -j 0 -x '/tests/' $(VENV)/lib || true
	touch $@
