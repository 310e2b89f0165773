# medcl — two commands do all set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.medcl-installed
export HF_HUB_OFFLINE := 1
export MLFLOW_ENABLE_ASYNC_LOGGING := false
PYTEST_ARGS ?=

.PHONY: demo test test-all lint bench install clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip setuptools wheel

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/medcl demo

test: $(STAMP)
	bash scripts/ensure-chromium.sh
	$(BIN)/ruff check medcl tests benchmarks
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: $(STAMP)
	bash scripts/ensure-chromium.sh
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check medcl tests benchmarks
	$(BIN)/hadolint Dockerfile

bench: $(STAMP)
	$(BIN)/medcl bench

clean:
	rm -rf $(VENV) .pytest_cache mlruns mlflow.db medcl-runs
