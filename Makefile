# Two commands do all the set-up: `make run` (start the server) and `make test` (the whole suite).
# Both create .venv when it is missing. TORCH_SPEC picks the torch build: the default pin resolves to the
# CPU wheel on our CI machines and to the default (CUDA-enabled on Linux) wheel elsewhere; override it, e.g.
# `make run TORCH_SPEC='torch --index-url <your CUDA wheel index>'`.
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: run test lint typecheck unit install lexicon clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# The built-in model's beam decoder needs its lexicon; built once into the user's cache (a few minutes the
# first time, with progress), then a no-op.
lexicon: $(VENV)/.installed
	$(PY) -m streamer.engine.hama_lexicon

run: lexicon
	$(PY) -m streamer $(ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check streamer client tests
	$(VENV)/bin/ruff format --check streamer client tests

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy

unit: lexicon
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

test: lint typecheck unit

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
