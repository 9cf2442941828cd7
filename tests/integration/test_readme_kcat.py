"""The README's kcat lines, exactly as written, against the broker they are shown with (Apache Kafka).

The lines read the broker's address from ``$BOOTSTRAP``; the test sets it to the private broker's
and runs each line with bash. They name the default topics, so the test creates those and routes
them with a query pipeline of the real model.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from pipeline_harness import TopicReader, build_table, produce

from worker.config import load_settings
from worker.contracts import DeadLetter, RoutedIntent
from worker.embedding import EncoderPool
from worker.embedding.model import ModelSpec
from worker.errors import ErrorCode
from worker.local.kafka import LocalKafka
from worker.pipeline import QueryPipeline
from worker.routing import Router
from worker.telemetry import Telemetry

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_kcat_lines() -> list[str]:
    """The commands of the README's first shell block after "With kcat"."""
    text = README.read_text()
    block = re.search(r"With kcat\b.*?```bash\n(.*?)```", text, re.S)
    assert block is not None, "README: no kcat block after 'With kcat'"
    return [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


@pytest.fixture(scope="module")
def encoder(model_spec: ModelSpec) -> Iterator[EncoderPool]:
    with EncoderPool(model_spec, pool_size=1, max_pending=8) as pool:
        yield pool


def run_line(line: str, bootstrap: str) -> str:
    done = subprocess.run(
        ["bash", "-c", line],
        env={**os.environ, "BOOTSTRAP": bootstrap},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"{line}\n{done.stderr}"
    return done.stdout


async def test_the_readme_kcat_lines_produce_a_query_and_read_its_intent_and_the_dlq(
    kafka_broker: LocalKafka, encoder: EncoderPool
) -> None:
    if shutil.which("kcat") is None:
        pytest.fail("kcat is not installed: `make system` installs it (Debian package kcat)")
    produce_line, intents_line, dlq_line = readme_kcat_lines()
    assert "kcat -P" in produce_line
    assert "routed-intents" in intents_line
    assert "queries.dlq" in dlq_line
    bootstrap = kafka_broker.bootstrap
    settings = load_settings(
        kafka_bootstrap=bootstrap,
        group_id=f"readme-{uuid.uuid4().hex[:8]}",
        kafka_session_timeout_ms=3000,
        kafka_heartbeat_interval_ms=200,
        kafka_fetch_max_wait_ms=20,
        commit_interval_ms=200,
    )
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = [settings.topic_queries, settings.topic_intents, settings.topic_dlq]
        await admin.create_topics([NewTopic(name, 2, 1) for name in names])
    finally:
        await admin.close()

    telemetry = Telemetry(replica_id="readme")
    pipeline = QueryPipeline(
        settings, encoder=encoder, router=Router(build_table(encoder)), telemetry=telemetry
    )
    running = asyncio.create_task(pipeline.run())
    try:
        async with TopicReader(bootstrap, [settings.topic_intents, settings.topic_dlq]) as reader:
            await asyncio.to_thread(run_line, produce_line, bootstrap)
            await produce(bootstrap, settings.topic_queries, [(b"conversation-7", b"{not json", [])])
            await reader.wait_for(lambda rs: len(rs) >= 2, within=60)
    finally:
        pipeline.stop()
        await asyncio.wait_for(running, 30)
        telemetry.shutdown()

    (intent_line,) = (await asyncio.to_thread(run_line, intents_line, bootstrap)).splitlines()
    key, value = intent_line.split(" ", 1)
    assert key == "conversation-42"
    intent = RoutedIntent.model_validate_json(value)
    assert intent.query_id == "q-2"
    (letter_line,) = (await asyncio.to_thread(run_line, dlq_line, bootstrap)).splitlines()
    letter = DeadLetter.model_validate_json(letter_line)
    assert letter.error_code is ErrorCode.INVALID_JSON
