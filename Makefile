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
SWEEP ?= sweeps/default.yaml
# make report / make notebooks: a study name, or (the default) the study that SWEEP names
STUDY ?= $(SWEEP)
REPORTS ?= analysis/reports
NB_OUT ?= analysis/out
WORKERS ?= 2
TOP ?= 2
SEEDS ?= 3
STORAGE ?= studies/journal.log
ARGS ?=
# make bench BENCH_ARGS="--tiny --out /tmp/bench.json": the seconds-long smoke mode a test runs
BENCH_ARGS ?=
# make bench LIVE_ARGS="--tiny --out /tmp/live.json": benchmarks/live_view.py's smoke mode
LIVE_ARGS ?=
HOST ?= 127.0.0.1
UI_PORT ?= 5000
DASHBOARD_PORT ?= 8080
SERVE_PORT ?= 5002
MODEL ?= charlstm-default
# make mlflow-server: the shared tracking server of the 'more than one machine' set-up
MLFLOW_HOST ?= 127.0.0.1
MLFLOW_PORT ?= 5001
PG_ADMIN ?= postgresql://postgres@127.0.0.1:5432/postgres
MLFLOW_DB ?= mlflow
MLFLOW_BACKEND ?= postgresql://postgres@127.0.0.1:5432/$(MLFLOW_DB)
MLFLOW_ARTIFACTS ?= $(CURDIR)/mlartifacts-server

export MLFLOW_DISABLE_TELEMETRY := true

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@echo "installing $(TORCH) first (a bare 'torch' would pull a multi-GB CUDA build), then charlstm[dev]"
	$(PIP) install $(TORCH)
	$(PIP) install -e '.[dev]'
	@$(PY) -c "import torch, mlflow, optuna, charlstm" && touch $(STAMP)

.PHONY: help setup sweep confirm report status doctor notebooks train generate test lint bench ui serve dashboard mlflow-server clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

setup: $(STAMP) ## create .venv and install charlstm with its dev tools (idempotent)

sweep: $(STAMP) ## the main job: run (or resume) an Optuna study, then its report: make sweep SWEEP=sweeps/default.yaml WORKERS=2
	$(VENV)/bin/charlstm sweep $(SWEEP) --workers $(WORKERS) --storage $(STORAGE) $(ARGS)
	$(VENV)/bin/charlstm report $(SWEEP) --storage $(STORAGE) --out $(REPORTS)

confirm: $(STAMP) ## is the winner real? re-train the top trials + seed baseline over fresh seeds: make confirm STUDY=default TOP=2 SEEDS=3
	$(VENV)/bin/charlstm confirm $(STUDY) --top $(TOP) --seeds $(SEEDS) --workers $(WORKERS) --storage $(STORAGE)
	$(VENV)/bin/charlstm report $(STUDY) --storage $(STORAGE) --out $(REPORTS)

report: $(STAMP) ## write analysis/reports/<study>/report.{html,md}: make report STUDY=default
	$(VENV)/bin/charlstm report $(STUDY) --storage $(STORAGE) --out $(REPORTS)

status: $(STAMP) ## follow a study until it ends, wherever its workers run (read-only): make status STUDY=default
	$(VENV)/bin/charlstm status $(STUDY) --storage $(STORAGE) --watch $(ARGS)

doctor: $(STAMP) ## check Optuna, MLflow and checkpoints agree: make doctor STUDY=default ARGS=--fix
	$(VENV)/bin/charlstm doctor $(STUDY) --storage $(STORAGE) $(ARGS)

notebooks: $(STAMP) ## execute analysis/*.py notebooks for a study into analysis/out/<study>/: make notebooks STUDY=default
	$(VENV)/bin/charlstm notebooks $(STUDY) --storage $(STORAGE) --out $(NB_OUT) -q

train: $(STAMP) ## train one experiment: make train EXP=experiments/baseline.yaml ARGS="--set train.lr=3e-3"
	$(VENV)/bin/charlstm train $(EXP) $(ARGS)

generate: $(STAMP) ## sample from a model: make generate SOURCE=<checkpoint | run id> ARGS='--prime "ROMEO:"'
	@src="$(SOURCE)"; if [ -z "$$src" ]; then src=$$(ls -t checkpoints/*/*/best.pt 2>/dev/null | head -1); fi; \
	if [ -z "$$src" ]; then echo "no checkpoint yet: run 'make train' first, or pass SOURCE=" >&2; exit 2; fi; \
	echo "sampling from $$src"; $(VENV)/bin/charlstm generate "$$src" $(ARGS)

test: $(STAMP) ## run the test suite
	$(PY) -m pytest -q

bench: $(STAMP) ## speed against the machine's limits, quality per time, the live view's cost (~30 min): benchmarks/results/
	$(PY) benchmarks/bench.py $(BENCH_ARGS)
	$(PY) benchmarks/live_view.py $(LIVE_ARGS)

lint: $(STAMP) ## ruff check
	$(VENV)/bin/ruff check charlstm tests analysis benchmarks

ui: $(STAMP) ## serve the MLflow UI on 127.0.0.1 (UI_PORT=5000)
	@echo "MLflow UI: http://$(HOST):$(UI_PORT)  (a study is the parent run study-<name> under Training runs; Ctrl-C to stop)"
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db \
		--default-artifact-root $(CURDIR)/mlartifacts --host $(HOST) --port $(UI_PORT) --workers 1

serve: $(STAMP) ## serve a registered model with MLflow: make serve MODEL=charlstm-default (SERVE_PORT=5002)
	@echo "POST http://$(HOST):$(SERVE_PORT)/invocations  (docs/tracking.md: Serving; Ctrl-C to stop)"
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" MLFLOW_TRACKING_URI=$${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlflow.db} \
		$(VENV)/bin/mlflow models serve -m models:/$(MODEL)@best --env-manager local --host $(HOST) --port $(SERVE_PORT)

dashboard: $(STAMP) ## serve optuna-dashboard for the local studies on 127.0.0.1 (DASHBOARD_PORT=8080)
	@echo "Optuna dashboard: http://$(HOST):$(DASHBOARD_PORT)  (Ctrl-C to stop)"
	$(VENV)/bin/optuna-dashboard $(STORAGE) --host $(HOST) --port $(DASHBOARD_PORT)

mlflow-server: $(STAMP) ## shared MLflow tracking server on PostgreSQL; MLFLOW_HOST=0.0.0.0 needs a login (docs/scale-out.md)
	@psql "$(PG_ADMIN)" -tAc "SELECT 1 FROM pg_database WHERE datname='$(MLFLOW_DB)'" | grep -q 1 \
		|| psql "$(PG_ADMIN)" -c "CREATE DATABASE $(MLFLOW_DB)"
	$(VENV)/bin/charlstm tracking-server --backend-store-uri $(MLFLOW_BACKEND) \
		--artifacts-destination $(MLFLOW_ARTIFACTS) --host $(MLFLOW_HOST) --port $(MLFLOW_PORT) --workers 2

clean: ## remove caches and build files (keeps mlflow.db, mlartifacts/, checkpoints/, data/)
	rm -rf .pytest_cache .ruff_cache build *.egg-info
	find . -name __pycache__ -type d -not -path './$(VENV)/*' -prune -exec rm -rf {} +
