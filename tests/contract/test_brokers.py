"""The two brokers of the contract suite: Apache Kafka lacks nothing, so no contract case skips it."""

from __future__ import annotations

from worker.local.broker import LocalBroker
from worker.local.kafka import LocalKafka


def test_the_reference_broker_lacks_nothing_and_tansu_names_what_it_lacks() -> None:
    # the classes' declared capabilities: asking them starts no broker
    assert LocalKafka.capabilities.missing() == []
    assert set(LocalBroker.capabilities.missing()) == {
        "supports_transactions",
        "supports_idempotence",
        "supports_compaction",
        "supports_persistence",
        "librdkafka_compatible",
    }
