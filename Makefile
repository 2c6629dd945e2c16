# Set-up and checks. `make demo` and `make test` work on a fresh machine with Python 3.11 and pip.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of PyTorch, installed before anything that depends on torch (a bare `torch`
# requirement would otherwise pull a multi-GB CUDA build).
TORCH  ?= torch==2.13.0

.PHONY: install dev demo lint test test-fast test-seeds methods clean browser

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e .
	touch $@

# DeepSpeed (alignkit[deepspeed], tests/engine/test_deepspeed.py) is built against the torch installed above: without
# --no-build-isolation pip would build it in an isolated environment with a CUDA torch. DS_BUILD_OPS=0: no C++/CUDA
# ops at install (DeepSpeed compiles what it uses on first use). The build needs setuptools (>=70.1, or wheel) and
# packaging in the venv: a fresh Python 3.11 venv has setuptools 65.5 and neither; torch 2.13 brings setuptools.
$(VENV)/.dev-installed: $(VENV)/.installed
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/pip install --quiet "setuptools>=68" wheel packaging
	DS_BUILD_OPS=0 $(BIN)/pip install --quiet --no-build-isolation "deepspeed==0.19.8"
	touch $@

install: $(VENV)/.installed
dev: $(VENV)/.dev-installed

demo: install
	$(BIN)/alignkit demo

lint: dev
	$(BIN)/ruff check src tests benchmarks examples --select F,E9
	$(BIN)/lint-imports  # the layer contract in pyproject.toml (../shared/DESIGN.md)

# Headless chromium for the HTML report's browser tests (tests/report/test_report_html.py). Installed with apt-get when
# missing and we are root; otherwise those tests are skipped.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	{ if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	    echo "could not install chromium: browser tests will be skipped"; \
	  else echo "chromium not found and apt-get unavailable (or not root): browser tests will be skipped"; fi; }

# Two xdist workers, one per core (each computes on one thread; see tests/conftest.py).
test: lint browser
	$(BIN)/pytest -q -n 2 --durations=25

test-fast: dev browser
	$(BIN)/pytest -q -n 2 -m "not slow"

# The behaviour tests (-m behaviour: claims measured on a sandbox draw) on several draws, with a pass table.
# `make test` runs one draw (seed 0); every claim must hold for these too. About 15-20 min a seed on 2 cores.
SEEDS ?= 0 1 2 3 4
test-seeds: dev
	$(BIN)/python tests/seed_table.py --seeds $(SEEDS) --out seed-runs -- -n 2 -p no:cacheprovider

methods: install
	$(BIN)/alignkit methods

clean:
	rm -rf $(VENV) alignkit-demo .pytest_cache
