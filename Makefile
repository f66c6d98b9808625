# Everything a new machine needs, from Python 3.11+ alone: `make serve`, `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: serve test lint bench clean

$(STAMP): pyproject.toml reducer/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ./reducer
	$(BIN)/python -m pip install --quiet -e '.[dev,all]'
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/turnlog serve

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python bench/reducer.py
	$(BIN)/python bench/store.py

clean:
	rm -rf $(VENV)
