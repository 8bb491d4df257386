# Two commands for a newcomer: `make serve` and `make test`. Everything else is a step of theirs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.graft-installed

.PHONY: setup serve test lint format bench clean

setup: $(STAMP)

# torch is pinned and installed first, on its own, so nothing can resolve a CUDA build.
$(STAMP): pyproject.toml requirements-fixtures.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]' torch==2.13.0
	$(BIN)/python -m pip install -q --no-deps -r requirements-fixtures.txt
	touch $(STAMP)

serve: setup
	$(BIN)/graft serve

lint: setup
	$(BIN)/ruff format --check app tests bench
	$(BIN)/ruff check app tests bench
	$(BIN)/mypy

format: setup
	$(BIN)/ruff format app tests bench
	$(BIN)/ruff check --fix app tests bench

test: lint
	$(BIN)/python -m pytest -q

# Whole-process conversion figures against cp (generates ~2.2 GB of checkpoints under data/bench
# once). More: bench/inspect_header.py, bench/api_service.py, bench/load.py.
bench: setup
	$(BIN)/python bench/convert.py

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
