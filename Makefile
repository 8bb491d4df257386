# Two commands for a newcomer: `make serve` and `make test`. Everything else is a step of theirs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.graft-installed
# What serving needs: torch and Graft's runtime dependencies only (no dev toolchain).
RUNTIME_STAMP := $(VENV)/.graft-runtime
# CI=true (as CI services set it, and .ci/run does): a real part that cannot be installed fails.
CI_STRICT := $(if $(filter true TRUE True 1 yes,$(CI)),yes,no)

.PHONY: setup setup-runtime serve test lint format bench clean mlflow-venv model-signing-venv chromium
.PHONY: deepspeed-venv megatron-venv mlflow-torch-venv

setup: $(STAMP)

setup-runtime: $(RUNTIME_STAMP)

# The runtime: torch is pinned and installed first, on its own, so nothing can resolve a CUDA
# build; then Graft with its main dependencies. A full (dev) set-up already holds all of it.
$(RUNTIME_STAMP): pyproject.toml
	@if [ -f $(STAMP) ] && [ $(STAMP) -nt pyproject.toml ]; then touch -r $(STAMP) $@; else \
		set -e; \
		$(PYTHON) -m venv $(VENV); \
		$(BIN)/python -m pip install -q torch==2.13.0; \
		$(BIN)/python -m pip install -q -e . torch==2.13.0; \
		touch $@; \
	fi

# Everything `make test` needs on top: the dev extras and the published test fixtures.
$(STAMP): $(RUNTIME_STAMP) pyproject.toml requirements-fixtures.txt
	$(BIN)/python -m pip install -q -e '.[dev]' torch==2.13.0
	$(BIN)/python -m pip install -q --no-deps -r requirements-fixtures.txt
	touch $(STAMP)

# `make serve PORT=8080` (or GRAFT_PORT=8080 make serve) picks the port; default 8000.
# It installs only the runtime (`make test` adds the dev toolchain).
serve: setup-runtime
	$(BIN)/graft serve $(if $(PORT),--port $(PORT))

lint: setup
	$(BIN)/ruff format --check app tests bench
	$(BIN)/ruff check app tests bench
	$(BIN)/mypy

format: setup
	$(BIN)/ruff format app tests bench
	$(BIN)/ruff check --fix app tests bench

# Two pytest processes: the unit tests spread over TEST_WORKERS cores (pytest-xdist, each
# module on one worker so module-scoped fixtures stay shared), then the modules that run real
# servers (uvicorn, workers, MLflow, Celery, Chromium) on their own, one at a time, so their
# timings are not fought over. Both always run; either failing fails the target.
# A missing real part skips its tests with a reason; under CI=true it fails them (and the
# mlflow-venv, model-signing-venv and chromium steps fail when they cannot install).
TEST_WORKERS ?= 2
SERVER_TESTS := tests/e2e tests/web tests/executors/test_celery_e2e.py \
	tests/registry/test_mlflow_server.py tests/test_readme_walkthrough.py

test: lint mlflow-venv mlflow-torch-venv model-signing-venv chromium deepspeed-venv megatron-venv
	@export GRAFT_TEST_MLFLOW_VENV=$(MLFLOW_VENV) GRAFT_TEST_MODEL_SIGNING_VENV=$(MODEL_SIGNING_VENV); \
	export GRAFT_TEST_DEEPSPEED_VENV=$(DEEPSPEED_VENV) GRAFT_TEST_MEGATRON_VENV=$(MEGATRON_VENV); \
	export GRAFT_TEST_MLFLOW_TORCH_VENV=$(MLFLOW_TORCH_VENV); \
	rc=0; \
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile \
		$(foreach t,$(SERVER_TESTS),--ignore=$(t)) || rc=1; \
	$(BIN)/python -m pytest -q $(SERVER_TESTS) || rc=1; \
	exit $$rc

# The web app's browser tests drive Debian's Chromium (Playwright cannot download browsers
# here). Installed once per machine when apt-get can; otherwise those tests skip, saying why
# (under CI=true this step fails instead, and so would the tests).
chromium:
	@if [ ! -x /usr/bin/chromium ]; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
		|| { echo "chromium: could not install Debian's chromium; the browser tests will skip"; \
		     if [ "$(CI_STRICT)" = yes ]; then echo "chromium: CI=true, so this fails the run"; exit 1; fi; }; \
	fi

# A real `mlflow server` for tests/registry, in its own cached venv outside .venv: Graft never
# depends on mlflow, and mlflow's dependencies never touch Graft's. Full mlflow (the server
# needs Flask, SQLAlchemy, alembic…) brings no torch; the check below keeps it that way.
# ~2.5 min once, then cached across clones. If the install fails the tests skip, saying why
# (under CI=true the install failure fails the run).
MLFLOW_VERSION := 3.17.2
MLFLOW_VENV ?= $(HOME)/.cache/graft/mlflow-$(MLFLOW_VERSION)

mlflow-venv: $(MLFLOW_VENV)/.graft-installed

$(MLFLOW_VENV)/.graft-installed:
	@rm -rf $(MLFLOW_VENV)
	@$(PYTHON) -m venv $(MLFLOW_VENV)
	@if $(MLFLOW_VENV)/bin/python -m pip install -q mlflow==$(MLFLOW_VERSION); then \
		if $(MLFLOW_VENV)/bin/python -m pip show -q torch 2>/dev/null; then \
			echo "mlflow-venv: mlflow pulled torch; refusing it"; exit 1; fi; \
		touch $@; \
	else echo "mlflow-venv: could not install mlflow==$(MLFLOW_VERSION); MLflow tests will skip"; \
		if [ "$(CI_STRICT)" = yes ]; then echo "mlflow-venv: CI=true, so this fails the run"; exit 1; fi; \
	fi

# A consumer of what Graft registers: MLflow beside the pinned CPU torch and Graft itself
# (editable), so tests load a registered version with mlflow.pyfunc.load_model. torch goes in
# first, alone, so nothing resolves a CUDA build; a CUDA package found afterwards fails it.
MLFLOW_TORCH_VENV ?= $(HOME)/.cache/graft/mlflow-torch-$(MLFLOW_VERSION)

mlflow-torch-venv: $(MLFLOW_TORCH_VENV)/.graft-installed

$(MLFLOW_TORCH_VENV)/.graft-installed:
	@rm -rf $(MLFLOW_TORCH_VENV)
	@$(PYTHON) -m venv $(MLFLOW_TORCH_VENV)
	@if $(MLFLOW_TORCH_VENV)/bin/python -m pip install -q torch==2.13.0 && \
		$(MLFLOW_TORCH_VENV)/bin/python -m pip install -q mlflow==$(MLFLOW_VERSION) torch==2.13.0 -e .; then \
		if $(MLFLOW_TORCH_VENV)/bin/python -m pip list 2>/dev/null | grep -qiE '^(nvidia-|triton )'; then \
			echo "mlflow-torch-venv: a CUDA package came in; refusing it"; exit 1; fi; \
		touch $@; \
	else echo "mlflow-torch-venv: could not install mlflow + torch; pyfunc tests will skip"; \
		if [ "$(CI_STRICT)" = yes ]; then echo "mlflow-torch-venv: CI=true, so this fails the run"; exit 1; fi; \
	fi

# Whole-process conversion figures against cp (generates ~2.2 GB of checkpoints under data/bench
# once, and a 2 GB DCP checkpoint saved by 4 ranks under data/bench-dcp). More:
# bench/inspect_header.py, bench/api_service.py, bench/load.py.
bench: setup
	$(BIN)/python bench/convert.py
	$(BIN)/python bench/dcp.py
	$(BIN)/python bench/shards.py  # a 10-shard 6 GB HF set under data/bench-shards
	$(BIN)/python bench/s3_stream.py  # a 2 GB S3 job against rclone copyto, under data/bench-s3

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache

# The OpenSSF model_signing CLI, in its own venv (its sigstore stack stays out of Graft's):
# the tests check that it verifies what Graft signs. pyOpenSSL: its CLI imports it.
MODEL_SIGNING_VERSION := 1.1.1
MODEL_SIGNING_VENV ?= $(HOME)/.cache/graft/model-signing-$(MODEL_SIGNING_VERSION)

model-signing-venv: $(MODEL_SIGNING_VENV)/.graft-installed

$(MODEL_SIGNING_VENV)/.graft-installed:
	@rm -rf $(MODEL_SIGNING_VENV)
	@$(PYTHON) -m venv $(MODEL_SIGNING_VENV)
	@if $(MODEL_SIGNING_VENV)/bin/python -m pip install -q model-signing==$(MODEL_SIGNING_VERSION) pyopenssl; then \
		touch $@; \
	else echo "model-signing-venv: could not install model-signing; its tests will skip"; fi

# DeepSpeed, in its own venv, writes the ZeRO checkpoints tests/engine/readers/test_zero*.py
# read (tests/zero_fixtures.py: 2 ranks on gloo, CPU). Graft never depends on DeepSpeed. Its
# sdist builds no ops with DS_BUILD_OPS=0; torch is pinned to the CPU wheel first, and the check
# below refuses a CUDA build. ~1 min once, then cached across clones. If the install fails the
# tests skip, saying why (under CI=true the install failure fails the run).
DEEPSPEED_VERSION := 0.19.8
DEEPSPEED_VENV ?= $(HOME)/.cache/graft/deepspeed-$(DEEPSPEED_VERSION)

deepspeed-venv: $(DEEPSPEED_VENV)/.graft-installed

$(DEEPSPEED_VENV)/.graft-installed:
	@rm -rf $(DEEPSPEED_VENV)
	@$(PYTHON) -m venv $(DEEPSPEED_VENV)
	@if $(DEEPSPEED_VENV)/bin/python -m pip install -q torch==2.13.0 \
		&& DS_BUILD_OPS=0 $(DEEPSPEED_VENV)/bin/python -m pip install -q torch==2.13.0 deepspeed==$(DEEPSPEED_VERSION); then \
		if $(DEEPSPEED_VENV)/bin/python -m pip list 2>/dev/null | grep -qi '^nvidia-' \
			|| ! $(DEEPSPEED_VENV)/bin/python -c 'import torch, sys; sys.exit(torch.version.cuda is not None)' 2>/dev/null; then \
			echo "deepspeed-venv: deepspeed pulled a CUDA torch; refusing it"; exit 1; fi; \
		touch $@; \
	else echo "deepspeed-venv: could not install deepspeed==$(DEEPSPEED_VERSION); ZeRO tests will skip"; \
		if [ "$(CI_STRICT)" = yes ]; then echo "deepspeed-venv: CI=true, so this fails the run"; exit 1; fi; \
	fi

# Megatron-Core, to write real Megatron-LM checkpoints for tests/engine/readers/test_megatron.py
# (Graft reads them without Megatron). It needs Python >= 3.12 (pyenv's here) and torch for
# 3.12: PyPI has only the CUDA build of torch 2.13.0 for it (~4.8 GB with its nvidia-* wheels,
# ~80 s here), used on the CPU. psutil: Megatron's dist_checkpointing imports it undeclared.
# Cached across clones; if it cannot install, the tests skip (under CI=true this fails the run).
MEGATRON_VERSION := 0.19.2
MEGATRON_VENV ?= $(HOME)/.cache/graft/megatron-core-$(MEGATRON_VERSION)
PYTHON312 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12 /usr/local/bin/python3.12 /usr/bin/python3.12))

megatron-venv: $(MEGATRON_VENV)/.graft-installed

$(MEGATRON_VENV)/.graft-installed:
	@rm -rf $(MEGATRON_VENV)
	@if [ -n "$(PYTHON312)" ] && $(PYTHON312) -m venv $(MEGATRON_VENV) && \
		$(MEGATRON_VENV)/bin/python -m pip install -q torch==2.13.0 \
			megatron-core==$(MEGATRON_VERSION) psutil; then \
		touch $@; \
	else echo "megatron-venv: could not install megatron-core==$(MEGATRON_VERSION) on Python 3.12; Megatron tests will skip"; \
		if [ "$(CI_STRICT)" = yes ]; then echo "megatron-venv: CI=true, so this fails the run"; exit 1; fi; \
	fi
