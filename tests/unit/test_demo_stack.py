"""`make demo` embeds Apache Kafka unless DEMO_BROKER=tansu; anything else is one configuration line."""

from __future__ import annotations

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
