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
# Test processes (pytest-xdist; a file's tests stay in one process, its fixtures with it).
# Three on two cores: much of a test's time is spent waiting on a server or a subprocess
# (the whole suite: 1,382 s with 3, 1,594 s with 2, on an idle 2-core machine).
PYTEST_WORKERS ?= 3
PIP_VERSION  := 26.3
# The environments are installed by uv (the lock's version): the same pins as pip in a
# third of the time, bytecode compiled as pip does (else every test's first import of a
# module compiles it). uv reads no pip.conf: pip's find-links (PIP_FIND_LINKS, where a
# CPU build of torch may lie on disk) are passed on.
UV_VERSION   := $(shell sed -n 's/^uv==//p' $(LOCK))
UV           := $(BIN)/uv
UV_LINKS     := $(foreach d,$(PIP_FIND_LINKS),--find-links $(d))

# Telemetry off for every library, in every target and its children.
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK             := 1
export DVC_NO_ANALYTICS         := 1
export BENTOML_DO_NOT_TRACK     := true
# PyTorch's OpenMP threads sleep instead of spinning: training stays fast on a busy machine.
export OMP_WAIT_POLICY          := PASSIVE

.DEFAULT_GOAL := help
.PHONY: ultralytics .venv-ultralytics
.PHONY: help setup system-deps chromium label-studio label-studio-for-tests demo demo-pages pages test test-fast lint format bench fuzz soak clean distclean lock images render deploy tune train-distributed ui screenshot screenshot-label-studio screenshot-label-studio-pages

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

setup: $(STAMP) ## Create .venv and install the pinned environment (fast when done)

$(STAMP): pyproject.toml $(LOCK)
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip==$(PIP_VERSION)" "uv==$(UV_VERSION)"
	$(UV) pip install --python $(BIN)/python --quiet --compile-bytecode $(UV_LINKS) -c $(LOCK) -e '.[dev]' editables
	$(BIN)/python -m pip check
	@touch $@

DEMO_LABELER := flywheel.demo.oracle:LabelStudioOracle

demo: setup label-studio ## Run the loop locally: data -> training pipeline -> serve, drift, curate, label in a real Label Studio, retrain
	$(BIN)/flywheel demo --set label.labeler=$(DEMO_LABELER)

demo-pages: setup label-studio ## The page service's loop: its pages, the pair trained and served, drifted pages, a real Label Studio (the page oracle annotating), the drifted stage(s) fine-tuned, swapped, recovered
	$(BIN)/flywheel demo --plan pages

pages: setup ## The formula-page service: its pages (data-pages.dvc), then the training pipeline trains, evaluates and promotes the detector and the recogniser
	$(BIN)/flywheel data ensure --params plans/pages.yaml
	$(BIN)/flywheel pipeline run training --params plans/pages.yaml

ui: setup ## Dashboards until Ctrl-C: Evidently UI (drift over time) + MLflow UI, on 127.0.0.1
	$(BIN)/flywheel ui

# Root installs directly; anyone else through sudo.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

screenshot: setup chromium ## PNG of the Evidently dashboard in headless Chromium (installs Debian's chromium if missing)
	$(BIN)/python benchmarks/screenshot_dashboard.py

screenshot-label-studio: setup label-studio chromium ## PNG of a Label Studio task page (image + pre-annotation) in headless Chromium → /tmp
	$(BIN)/python benchmarks/screenshot_label_studio.py --out /tmp/label-studio-task.png

screenshot-label-studio-pages: setup label-studio chromium ## PNG of a formula-page task (page + pre-annotated regions and LaTeX) → docs/
	$(BIN)/python benchmarks/screenshot_label_studio_pages.py --out docs/label-studio-page-task.png

# Without it the browser tests skip (and say so in the summary), so a failed install
# is a loud warning, not a failed make test.
chromium: ## Debian's chromium, if missing: pages are checked in headless Chromium (tests, screenshots)
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || { \
	  echo "installing Debian's chromium (pages are looked at in headless Chromium)"; \
	  { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium; } || \
	  echo "WARNING: Debian's chromium could not be installed: the browser tests will skip"; }

system-deps: chromium ## Debian packages the tests run for real: PostgreSQL (MLflow's backend store as deployed), Chromium
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  echo "installing Debian's postgresql (the tests start their own server on 127.0.0.1)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends postgresql; }

# Label Studio conflicts with the lock (pandas 3, Django 5.2): its own venv, exact pins.
# The template is an empty, migrated database: a new server copies it instead of
# running ~1-5 minutes of migrations (the tests and the demo's first start).
LS_DIR     := .label-studio
LS_LOCK    := requirements/label-studio.txt
LS_STAMP   := $(LS_DIR)/venv/.installed
LS_OFFLINE := LATEST_VERSION_CHECK=false COLLECT_ANALYTICS=false SENTRY_DSN= FRONTEND_SENTRY_DSN=

label-studio: $(LS_STAMP) ## Install the Label Studio server (label-studio==1.23.2, own venv in .label-studio/)

# make test runs the tests against a real Label Studio; an install that fails is a loud
# warning (those tests then skip, saying so), not a failed test run.
label-studio-for-tests:
	@$(MAKE) --no-print-directory label-studio || { \
	  echo "WARNING: make label-studio failed: the tests against a real Label Studio will SKIP (and fail where FLYWHEEL_NO_SKIPS=1, as in CI)"; }

$(LS_STAMP): $(LS_LOCK) | $(STAMP)
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	test -x $(LS_DIR)/venv/bin/python || $(PYTHON) -m venv $(LS_DIR)/venv
	$(UV) pip install --python $(LS_DIR)/venv/bin/python --quiet --compile-bytecode --no-deps -r $(LS_LOCK)
	$(LS_DIR)/venv/bin/python -m pip check
	rm -rf $(LS_DIR)/template && mkdir -p $(LS_DIR)/template
	$(LS_OFFLINE) DJANGO_DB=sqlite LABEL_STUDIO_BASE_DATA_DIR=$(LS_DIR)/template \
	  $(LS_DIR)/venv/bin/label-studio version >/dev/null
	@touch $@

# Ultralytics (benchmarks/page_models.py's detector anchor) needs torchvision, which cannot
# load beside the lock's CPU torch: its own venv, exact pins (PyPI's torch, ~6 GB, runs on CPU).
ULTRA_VENV  := .venv-ultralytics
ULTRA_LOCK  := requirements/ultralytics.txt
ULTRA_STAMP := $(ULTRA_VENV)/.installed

ultralytics: $(ULTRA_STAMP) ## Install Ultralytics for benchmarks/page_models.py (own venv .venv-ultralytics/, ~6 GB)
.venv-ultralytics: $(ULTRA_STAMP)

$(ULTRA_STAMP): $(ULTRA_LOCK)
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	test -x $(ULTRA_VENV)/bin/python || $(PYTHON) -m venv $(ULTRA_VENV)
	$(ULTRA_VENV)/bin/python -m pip install --quiet --upgrade "pip==$(PIP_VERSION)"
	$(ULTRA_VENV)/bin/python -m pip install --quiet --no-deps -r $(ULTRA_LOCK)
	$(ULTRA_VENV)/bin/python -m pip check
	@touch $@

test: setup system-deps label-studio-for-tests ## Run every test, slow ones included (what CI runs)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile --durations=30 $(PYTEST_ARGS)

test-fast: setup ## Run the tests not marked slow
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: setup ## ruff (lint + format check), mypy and the import contracts; fails at the end if any failed
	@status=0; \
	$(BIN)/ruff check . || status=1; \
	$(BIN)/ruff format --check . || status=1; \
	$(BIN)/mypy || status=1; \
	$(BIN)/lint-imports --no-cache || status=1; \
	exit $$status

format: setup ## Apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: setup ## Run the benchmarks (ratios against baselines measured in the same run)
	for b in benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b; done

fuzz: setup ## Fuzz the service (schemathesis, 1,000+ requests; valid arrays; multipart edge cases): fails on any 5xx or a wrong answer
	$(BIN)/python -m tests.load.fuzz

soak: setup ## Hold the service under steady load for 3 min: fails on any error or memory growth >= 10 %
	$(BIN)/python -m tests.load.soak

lock: ## Re-resolve the pinned environment (on purpose, then review the diff)
	rm -rf .lockenv && $(PYTHON) -m venv .lockenv
	.lockenv/bin/pip install --quiet -e '.[dev]'
	.lockenv/bin/pip freeze --exclude-editable > $(LOCK)
	rm -rf .lockenv

clean: ## Remove local state and caches (.flywheel/, dist/, caches); keeps data/ and .venv
	rm -rf .flywheel dist .kfp .pytest_cache .ruff_cache .mypy_cache
	find . -name __pycache__ -type d -not -path './$(VENV)/*' -prune -exec rm -rf {} +

distclean: clean ## clean, and remove .venv and .label-studio too
	rm -rf $(VENV) $(LS_DIR)

# ---------------------------------------------------------------- cluster (infra/)
# The image constant: one name per image, tagged with the project version. The
# manifests name the same images (infra/k8s/images/kustomization.yaml); render,
# deploy, tune and train-distributed carry IMAGE_REPO into them
# (infra/k8s/render.sh), and `flywheel pipeline compile|submit` reads it as
# FLYWHEEL_IMAGE_REPO (exported below). STORAGE_CLASS names the volumes' storage
# class (empty: the cluster's default).
VERSION        := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE_REPO     ?= ghcr.io/flywheel-ml
IMAGE          ?= $(IMAGE_REPO)/flywheel:$(VERSION)
IMAGE_CUDA     ?= $(IMAGE)-cuda
TRACKING_IMAGE ?= $(IMAGE_REPO)/flywheel-tracking:$(VERSION)
SERVING_IMAGE  ?= $(IMAGE_REPO)/flywheel-serving:$(VERSION)
TORCH_CUDA     ?= cu128
GIT_COMMIT     := $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
DOCKER         ?= docker
KUBECTL        ?= kubectl
OVERLAY        ?= local
OVERLAYS       := $(notdir $(wildcard infra/k8s/overlays/*))
RENDER_DIR     ?= dist/k8s
STORAGE_CLASS  ?=
# The data version (DVC hash) tune and train-distributed train on; empty: the
# latest recorded next to the DVC remote (`flywheel data latest`).
DATA_VERSION   ?=
JOBS           := $(if $(filter gpu,$(OVERLAY)),gpu,cpu)
RENDER         := IMAGE_REPO=$(IMAGE_REPO) STORAGE_CLASS=$(STORAGE_CLASS) DATA_VERSION=$(DATA_VERSION) KUBECTL=$(KUBECTL) infra/k8s/render.sh
export FLYWHEEL_IMAGE_REPO := $(IMAGE_REPO)

images: ## Build the images: component (CPU + CUDA), MLflow server, BentoML serving (needs Docker)
	@command -v $(DOCKER) >/dev/null || { echo "make images: '$(DOCKER)' not found: building images needs a container engine (Docker, or DOCKER=podman)"; exit 1; }
	@$(DOCKER) info >/dev/null 2>&1 || { echo "make images: no container engine answers ('$(DOCKER) info' failed): start one or set DOCKER_HOST"; exit 1; }
	$(DOCKER) build -f infra/docker/Dockerfile --target component --build-arg TORCH_VARIANT=cpu \
	  --build-arg VERSION=$(VERSION) --build-arg GIT_COMMIT=$(GIT_COMMIT) -t $(IMAGE) .
	$(DOCKER) build -f infra/docker/Dockerfile --target component --build-arg TORCH_VARIANT=$(TORCH_CUDA) \
	  --build-arg VERSION=$(VERSION) --build-arg GIT_COMMIT=$(GIT_COMMIT) -t $(IMAGE_CUDA) .
	$(DOCKER) build -f infra/docker/Dockerfile --target tracking --build-arg VERSION=$(VERSION) \
	  -t $(TRACKING_IMAGE) .
	$(MAKE) setup
	$(BIN)/bentoml build -f serving/bentofile.yaml --version $(VERSION) .
	$(BIN)/bentoml containerize flywheel:$(VERSION) --image-tag $(SERVING_IMAGE)

render: ## Render every overlay and jobs variant into dist/k8s/ (IMAGE_REPO, STORAGE_CLASS; no cluster)
	@command -v $(KUBECTL) >/dev/null || { echo "make render: '$(KUBECTL)' not found (it renders with its built-in kustomize)"; exit 1; }
	mkdir -p $(RENDER_DIR)
	for overlay in $(OVERLAYS); do \
	  $(RENDER) overlays/$$overlay > $(RENDER_DIR)/$$overlay.yaml; \
	  echo "rendered $(RENDER_DIR)/$$overlay.yaml"; \
	done
	for jobs in cpu gpu; do \
	  $(RENDER) jobs/$$jobs > $(RENDER_DIR)/jobs-$$jobs.yaml; \
	  echo "rendered $(RENDER_DIR)/jobs-$$jobs.yaml"; \
	done

define need-cluster
	@test -d infra/k8s/overlays/$(OVERLAY) || { echo "make $@: no overlay '$(OVERLAY)' (overlays: $(OVERLAYS))"; exit 1; }
	@command -v $(KUBECTL) >/dev/null || { echo "make $@: '$(KUBECTL)' not found"; exit 1; }
	@$(KUBECTL) cluster-info --request-timeout=5s >/dev/null 2>&1 || { echo "make $@: no cluster answers on kubectl's current context ('$(KUBECTL) cluster-info' failed): create one (infra/README.md) or pick one with 'kubectl config use-context'"; exit 1; }
endef

deploy: ## Apply the services of an overlay: make deploy OVERLAY=local|gpu [IMAGE_REPO=...] [STORAGE_CLASS=...]
	$(need-cluster)
	mkdir -p $(RENDER_DIR)
	$(RENDER) overlays/$(OVERLAY) > $(RENDER_DIR)/$(OVERLAY).yaml
	$(KUBECTL) apply -f $(RENDER_DIR)/$(OVERLAY).yaml

tune: ## Start the Katib experiment flywheel-tune (OVERLAY=gpu: GPU nodes; DATA_VERSION=<hash>, else latest)
	$(need-cluster)
	mkdir -p $(RENDER_DIR)
	$(RENDER) jobs/$(JOBS) > $(RENDER_DIR)/jobs-$(JOBS).yaml
	$(KUBECTL) create -f $(RENDER_DIR)/jobs-$(JOBS).yaml -l app.kubernetes.io/name=tune

train-distributed: ## Start the PyTorchJob flywheel-train-ddp (OVERLAY=gpu: GPU nodes; DATA_VERSION=<hash>, else latest)
	$(need-cluster)
	mkdir -p $(RENDER_DIR)
	$(RENDER) jobs/$(JOBS) > $(RENDER_DIR)/jobs-$(JOBS).yaml
	$(KUBECTL) create -f $(RENDER_DIR)/jobs-$(JOBS).yaml -l app.kubernetes.io/name=train-ddp
