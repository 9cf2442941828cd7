"""The contract suite: every test body here runs against Apache Kafka (the reference) and Tansu.

A test takes ``any_broker`` and gets each broker in turn (ids ``[kafka]`` and ``[tansu]``). A test
that needs a broker feature says so with ``@pytest.mark.needs("supports_compaction", ...)``
(names from :class:`worker.local.capabilities.BrokerCapabilities`): a broker that lacks one is
skipped for that test alone, with the missing features named. Apache Kafka has them all, so
nothing is ever skipped for it (``test_the_reference_broker_lacks_nothing`` checks it).
"""

from __future__ import annotations

from dataclasses import fields

import pytest

from worker.local.capabilities import BrokerCapabilities, BrokerService

BROKER_FIXTURES = {"kafka": "kafka_broker", "tansu": "broker"}
FEATURES = {f.name for f in fields(BrokerCapabilities)}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for marker in item.iter_markers("needs"):
            unknown = set(marker.args) - FEATURES
            if unknown:
                raise pytest.UsageError(f"{item.nodeid}: unknown broker features {sorted(unknown)}")


@pytest.fixture(params=list(BROKER_FIXTURES))
def any_broker(request: pytest.FixtureRequest) -> BrokerService:
    """Each private broker in turn (session-wide instances); skips a broker lacking a needed feature."""
    service: BrokerService = request.getfixturevalue(BROKER_FIXTURES[request.param])
    needed = [name for marker in request.node.iter_markers("needs") for name in marker.args]
    missing = [name for name in needed if name in service.capabilities.missing()]
    if missing:
        pytest.skip(f"{service.name} lacks {', '.join(missing)}")
    return service
