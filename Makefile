# Set-up and checks. `make demo` and `make test` work on a fresh machine with Python 3.11 and pip.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of PyTorch, installed before anything that depends on torch (a bare `torch`
# requirement would otherwise pull a multi-GB CUDA build).
TORCH  ?= torch==2.13.0

.PHONY: install dev demo lint test test-fast methods clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.dev-installed: $(VENV)/.installed
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed
dev: $(VENV)/.dev-installed

demo: install
	$(BIN)/alignkit demo

lint: dev
	$(BIN)/ruff check src tests benchmarks --select F,E9

test: lint
	$(BIN)/pytest -q

test-fast: dev
	$(BIN)/pytest -q -m "not slow"

methods: install
	$(BIN)/alignkit methods

clean:
	rm -rf $(VENV) alignkit-demo .pytest_cache
