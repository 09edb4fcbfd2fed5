# flywheel: `make demo` runs the loop locally, `make test` runs the tests.
# Both create the virtual environment on their own (make setup).

SHELL        := /bin/bash
.SHELLFLAGS  := -eu -o pipefail -c
PYTHON       ?= python3.11
VENV         ?= .venv
BIN          := $(VENV)/bin
LOCK         := requirements/constraints.txt
STAMP        := $(VENV)/.installed
PYTEST_ARGS  ?=
PIP_VERSION  := 26.3

# Telemetry off for every library, in every target and its children.
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK             := 1
export DVC_NO_ANALYTICS         := 1
export BENTOML_DO_NOT_TRACK     := true

.DEFAULT_GOAL := help
.PHONY: help setup demo test test-fast lint format bench clean distclean lock

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

setup: $(STAMP) ## Create .venv and install the pinned environment (fast when done)

$(STAMP): pyproject.toml $(LOCK)
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip==$(PIP_VERSION)"
	$(BIN)/python -m pip install --quiet -c $(LOCK) -e '.[dev]'
	@touch $@

demo: setup ## Run the loop locally: data (pull or regenerate) -> validate
	$(BIN)/flywheel data ensure
	$(BIN)/flywheel validate

test: setup ## Run every test, slow ones included (what CI runs)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: setup ## Run the tests not marked slow
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: setup ## ruff (lint + format check) and mypy; fails at the end if any failed
	@status=0; \
	$(BIN)/ruff check . || status=1; \
	$(BIN)/ruff format --check . || status=1; \
	$(BIN)/mypy || status=1; \
	exit $$status

format: setup ## Apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: setup ## Run the benchmarks (ratios against baselines measured in the same run)
	for b in benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b; done

lock: ## Re-resolve the pinned environment (on purpose, then review the diff)
	rm -rf .lockenv && $(PYTHON) -m venv .lockenv
	.lockenv/bin/pip install --quiet -e '.[dev]'
	.lockenv/bin/pip freeze --exclude-editable > $(LOCK)
	rm -rf .lockenv

clean: ## Remove local state and caches (.flywheel/, dist/, caches); keeps data/ and .venv
	rm -rf .flywheel dist .kfp .pytest_cache .ruff_cache .mypy_cache
	find . -name __pycache__ -type d -not -path './$(VENV)/*' -prune -exec rm -rf {} +

distclean: clean ## clean, and remove .venv too
	rm -rf $(VENV)
