# charlstm: `make help` lists the targets. Every target creates .venv on first use.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# The CPU wheel on this machine; on a GPU box: make setup TORCH="torch==2.13.0 --index-url ..."
TORCH ?= torch==2.13.0
PIP := $(PY) -m pip -q --disable-pip-version-check

EXP ?= experiments/baseline.yaml
ARGS ?=
HOST ?= 127.0.0.1
UI_PORT ?= 5000

export MLFLOW_DISABLE_TELEMETRY := true

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@echo "installing $(TORCH) first (a bare 'torch' would pull a multi-GB CUDA build), then charlstm[dev]"
	$(PIP) install $(TORCH)
	$(PIP) install -e '.[dev]'
	@$(PY) -c "import torch, mlflow, optuna, charlstm" && touch $(STAMP)

.PHONY: help setup train generate test lint ui clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

setup: $(STAMP) ## create .venv and install charlstm with its dev tools (idempotent)

train: $(STAMP) ## train one experiment: make train EXP=experiments/baseline.yaml ARGS="--set train.lr=3e-3"
	$(VENV)/bin/charlstm train $(EXP) $(ARGS)

generate: $(STAMP) ## sample from a model: make generate SOURCE=<checkpoint | run id> ARGS='--prime "ROMEO:"'
	@src="$(SOURCE)"; if [ -z "$$src" ]; then src=$$(ls -t checkpoints/*/*/best.pt 2>/dev/null | head -1); fi; \
	if [ -z "$$src" ]; then echo "no checkpoint yet: run 'make train' first, or pass SOURCE=" >&2; exit 2; fi; \
	echo "sampling from $$src"; $(VENV)/bin/charlstm generate "$$src" $(ARGS)

test: $(STAMP) ## run the test suite
	$(PY) -m pytest -q

lint: $(STAMP) ## ruff check
	$(VENV)/bin/ruff check charlstm tests

ui: $(STAMP) ## serve the MLflow UI on 127.0.0.1 (UI_PORT=5000)
	@echo "MLflow UI: http://$(HOST):$(UI_PORT)  (Ctrl-C to stop)"
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db \
		--default-artifact-root $(CURDIR)/mlartifacts --host $(HOST) --port $(UI_PORT) --workers 1

clean: ## remove caches and build files (keeps mlflow.db, mlartifacts/, checkpoints/, data/)
	rm -rf .pytest_cache .ruff_cache build *.egg-info
	find . -name __pycache__ -type d -not -path './$(VENV)/*' -prune -exec rm -rf {} +
