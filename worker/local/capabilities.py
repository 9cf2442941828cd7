"""What the private brokers have in common: a bootstrap, a name, and what they can do.

A test suite run against every broker asks ``capabilities`` before a case that needs a feature, and
skips that case for a broker that lacks it, naming the feature.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Protocol


@dataclass(frozen=True)
class BrokerCapabilities:
    """Broker features a test may depend on."""

    supports_transactions: bool
    supports_idempotence: bool
    supports_compaction: bool
    # records (and committed offsets) survive a restart of the broker
    supports_persistence: bool
    # librdkafka clients (kcat, confluent-kafka) can produce to it and consume from it
    librdkafka_compatible: bool

    def missing(self) -> list[str]:
        """Names of the features this broker lacks, e.g. ``["supports_transactions"]``."""
        return [f.name for f in fields(self) if not getattr(self, f.name)]


class BrokerService(Protocol):
    """A running private broker as a test sees it."""

    @property
    def name(self) -> str: ...

    @property
    def bootstrap(self) -> str: ...

    @property
    def capabilities(self) -> BrokerCapabilities: ...

    def alive(self) -> bool: ...

    def close(self) -> None:
        """Stop the broker and remove everything it wrote."""


TANSU_CAPABILITIES = BrokerCapabilities(
    supports_transactions=False,
    supports_idempotence=False,
    supports_compaction=False,
    supports_persistence=False,
    librdkafka_compatible=False,
)

KAFKA_CAPABILITIES = BrokerCapabilities(
    supports_transactions=True,
    supports_idempotence=True,
    supports_compaction=True,
    supports_persistence=True,
    librdkafka_compatible=True,
)
