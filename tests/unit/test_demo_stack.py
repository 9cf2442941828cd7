"""`make demo` embeds Apache Kafka unless DEMO_BROKER=tansu; anything else is one configuration line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from worker.demo.stack import embedded_broker
from worker.errors import ConfigError
from worker.local.broker import LocalBroker
from worker.local.kafka import LocalKafka


def test_the_demo_broker_is_kafka_unless_tansu_is_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEMO_BROKER", raising=False)
    kafka = embedded_broker()
    assert isinstance(kafka, LocalKafka)
    assert kafka.capabilities.librdkafka_compatible, "the README's kcat lines need it"
    kafka.close()  # never started: removes its directory
    monkeypatch.setenv("DEMO_BROKER", "tansu")
    tansu = embedded_broker()
    assert isinstance(tansu, LocalBroker)
    tansu.close()
    monkeypatch.setenv("DEMO_BROKER", "redpanda")
    with pytest.raises(ConfigError, match=r"^DEMO_BROKER='redpanda': one of kafka, tansu$"):
        embedded_broker()


def test_a_demo_whose_broker_cannot_run_says_why_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    java = tmp_path / "bin" / "java"
    props = "    java.specification.version = 11\\n    java.version = 11.0.2\\n"
    java.write_text(f"#!/bin/sh\nprintf '{props}' >&2\n")
    java.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP", "DEMO_BROKER")}
    env["JAVA_HOME"] = str(tmp_path)
    argv = [sys.executable, "-m", "worker.cli.main", "demo", "--queries", "1"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"routeworker demo: Java 11.0.2 at {java} (from JAVA_HOME) is too old: Kafka 4.x needs Java 17 or "
        "newer; set JAVA_HOME to a newer JDK (e.g. /usr/lib/jvm/temurin-25-jdk-amd64)"
    ]
