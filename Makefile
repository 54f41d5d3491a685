# Two commands do all the set-up: `make run` (start the server) and `make test` (the whole suite).
# Both create .venv when it is missing. TORCH_SPEC picks the torch build: the default pin resolves to the
# CPU wheel on our CI machines and to the default (CUDA-enabled on Linux) wheel elsewhere; override it, e.g.
# `make run TORCH_SPEC='torch --index-url <your CUDA wheel index>'`.
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: run test lint typecheck unit install clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

run: $(VENV)/.installed
	$(PY) -m streamer $(ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check streamer client tests
	$(VENV)/bin/ruff format --check streamer client tests

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy

unit: $(VENV)/.installed
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

test: lint typecheck unit

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
