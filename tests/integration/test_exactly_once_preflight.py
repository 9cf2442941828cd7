"""exactly_once is refused at start, in one line, by a broker without transactions (Tansu), and
accepted by Apache Kafka."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pipeline_harness import ROOT

from worker.config import load_settings
from worker.errors import ConfigError
from worker.local.broker import LocalBroker
from worker.local.kafka import LocalKafka
from worker.pipeline.preflight import require_transactions

pytestmark = pytest.mark.integration


async def test_apache_kafka_starts_a_transactional_producer(kafka_broker: LocalKafka) -> None:
    settings = load_settings(kafka_bootstrap=kafka_broker.bootstrap, processing_guarantee="exactly_once")
    await require_transactions(settings)


async def test_a_broker_without_transactions_is_refused_in_one_line(broker: LocalBroker) -> None:
    assert not broker.capabilities.supports_transactions
    settings = load_settings(kafka_bootstrap=broker.bootstrap, processing_guarantee="exactly_once")
    with pytest.raises(ConfigError, match="needs a broker with transactions") as refused:
        await require_transactions(settings)
    assert "\n" not in str(refused.value)
    at_least_once = settings.model_copy(update={"processing_guarantee": "at_least_once"})
    await require_transactions(at_least_once)  # nothing asked of the broker


def test_routeworker_run_refuses_exactly_once_on_tansu_at_start(broker: LocalBroker, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTEWORKER_")}
    env.update(
        ROUTEWORKER_KAFKA_BOOTSTRAP=broker.bootstrap,
        ROUTEWORKER_PROCESSING_GUARANTEE="exactly_once",
        ROUTEWORKER_STORE_PATH=str(tmp_path) + "/store.sqlite3",
        HF_HUB_OFFLINE="1",
    )
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli.main", "run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("routeworker:")]
    assert len(errors) == 1, done.stderr[-3000:]
    assert "ROUTEWORKER_PROCESSING_GUARANTEE=exactly_once needs a broker with transactions" in errors[0]
    assert "Traceback" not in done.stderr
