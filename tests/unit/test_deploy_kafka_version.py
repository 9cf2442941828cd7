"""docker-compose.yml and the Kubernetes manifests name the Apache Kafka version the tests run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from worker.local.kafka_dist import kafka_version

ROOT = Path(__file__).resolve().parents[2]


def test_compose_runs_the_tested_kafka() -> None:
    compose: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert compose["services"]["kafka"]["image"] == f"apache/kafka:{kafka_version()}"


def test_the_autoscaler_speaks_to_the_tested_kafka() -> None:
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "k8s" / "keda.yaml").read_text()))
    (scaled,) = [doc for doc in docs if doc["kind"] == "ScaledObject"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["metadata"]["version"] == kafka_version()
    assert f"Apache Kafka {kafka_version()}" in (ROOT / "deploy" / "k8s" / "configmap.yaml").read_text()
