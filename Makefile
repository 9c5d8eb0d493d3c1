# Two commands do everything on a fresh machine:
#   make run   set up .venv (if needed) and run the whole pipeline on the embedded default data
#   make test  set up .venv (if needed) and run the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# The package's console scripts (lstmops, dvc) must be on PATH for dvc.yaml's commands.
export PATH := $(abspath $(BIN)):$(PATH)
# Telemetry off: these machines are offline and it only adds noise.
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export GX_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1
PIP := $(BIN)/pip install --quiet --disable-pip-version-check
QUIET_PIP := 2>&1 | { grep -v "^WARNING: Location" || true; }; exit $${PIPESTATUS[0]}

.PHONY: setup run test test-fast repro bench remote clean docs

# torch==2.13.0 goes first: a CPU wheel. Any other order lets pip pull GBs of CUDA wheels.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip $(QUIET_PIP)
	$(PIP) torch==2.13.0 $(QUIET_PIP)
	$(PIP) -e '.[dev]' $(QUIET_PIP)
	touch $@

# checkov pins boto3 exactly (clashes with the project's boto3): its own venv, for tests/test_infra.py.
TOOLS_VENV ?= .venv-tools
TOOLS_STAMP := $(TOOLS_VENV)/.installed-stamp
$(TOOLS_STAMP): infra/checkov-requirements.txt
	test -x $(TOOLS_VENV)/bin/python || $(PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/pip install --quiet --disable-pip-version-check -r infra/checkov-requirements.txt $(QUIET_PIP)
	touch $@

setup: $(STAMP) $(TOOLS_STAMP)

run: $(STAMP)   # the pipeline needs no test tools
	$(BIN)/lstmops run

test: setup
	$(BIN)/pytest

test-fast: setup
	$(BIN)/pytest -m "not slow"

repro: setup
	$(BIN)/dvc repro

# make remote URL=s3://bucket/prefix [ENDPOINT=http://host:port]; credentials from AWS_* variables
remote: setup
	$(BIN)/lstmops remote $(URL) $(if $(ENDPOINT),--endpoint $(ENDPOINT),)

bench: setup
	$(BIN)/python benchmarks/train_throughput.py --seconds 60
	$(BIN)/python benchmarks/ingest_memory.py

# the documentation site (mkdocs-material) into site/; --strict: a broken link or nav entry fails
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf data/raw data/prepared data/accepted_profile.json models reports mlruns mlflow.db dvc.lock .dvc/cache
