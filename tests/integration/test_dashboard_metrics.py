"""Every metric the Grafana dashboard queries is exported by a real worker (its /metrics, scraped)."""

from __future__ import annotations

import asyncio
import http.client

import pytest
from dashboard_queries import queried_metrics
from pipeline_harness import RunningWorker, produce, publish_routes
from prometheus_client.parser import text_string_to_metric_families

from worker.client import QueryRejected, RouteClient
from worker.contracts import RouteDefinition

pytestmark = pytest.mark.integration


def scrape(port: int) -> str:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        assert response.status == 200
        return response.read().decode()
    finally:
        connection.close()


def exported(text: str) -> set[str]:
    """Every sample name in the exposition (counters' _total, histograms' _bucket/_sum/_count)."""
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


async def test_the_dashboard_queries_only_metrics_a_worker_exports(asked_worker: RunningWorker) -> None:
    settings = asked_worker.settings()
    async with RouteClient(settings, timeout_s=60) as client:
        # routed queries (throughput, latency, lag, cache lookups), one dead letter (DLQ by code)
        await client.route_many(["will it rain tomorrow morning", "book a flight to paris please"])
        with pytest.raises(QueryRejected):
            await client.route("z" * (settings.max_text_chars + 1))
        await produce(asked_worker.bootstrap, settings.topic_queries, [(None, b"{not json", [])])
        # a live route mutation (mutation-apply lag)
        parcel = RouteDefinition(name="parcel", utterances=["where is my parcel", "track my package"])
        await publish_routes(asked_worker.bootstrap, settings.topic_mutations, [parcel])
        async with asyncio.timeout(60):
            while (await client.route("where is my parcel")).route != "parcel":  # noqa: ASYNC110
                await asyncio.sleep(0.1)  # the mutation is live once a replica answers with it
    names = exported(await asyncio.to_thread(scrape, asked_worker.health_port))
    missing = queried_metrics() - names
    assert not missing, f"the dashboard queries metrics no worker exports: {sorted(missing)}"
