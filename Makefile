# Two commands on a fresh machine: `make run` (Peek on http://127.0.0.1:8000) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint bench install install-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $(VENV)/.installed $@

install: $(VENV)/.installed
	scripts/system-deps.sh run

install-test: $(VENV)/.installed-test
	scripts/system-deps.sh test

run: install
	$(BIN)/peek up --host $${PEEK_HOST:-127.0.0.1} --port $${PEEK_PORT:-8000}

test: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy schemas ingest_api stream_workers sink infra
	$(BIN)/pytest -q

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy schemas ingest_api stream_workers sink infra

bench: install-test
	$(BIN)/python bench/analyzers.py --quick

clean:
	rm -rf $(VENV) peek-data
