"""`routeworker topics create` and `routeworker routes apply|list|delete` against the real broker."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from aiokafka.admin import AIOKafkaAdminClient

from worker.config import load_settings
from worker.embedding.model import ModelSpec
from worker.local.broker import LocalBroker
from worker.local.kafka import LocalKafka
from worker.replication import read_routes
from worker.replication.topic_config import topic_configs

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "routes.yaml"


class Cli:
    """Runs `routeworker` in a child process with topics private to one test."""

    def __init__(self, bootstrap: str) -> None:
        tag = uuid.uuid4().hex[:8]
        self.topics = {
            "ROUTEWORKER_TOPIC_QUERIES": f"queries-{tag}",
            "ROUTEWORKER_TOPIC_INTENTS": f"intents-{tag}",
            "ROUTEWORKER_TOPIC_DLQ": f"dlq-{tag}",
            "ROUTEWORKER_TOPIC_MUTATIONS": f"mutations-{tag}",
        }
        self.env = {
            **os.environ,
            **self.topics,
            "ROUTEWORKER_KAFKA_BOOTSTRAP": bootstrap,
            "COLUMNS": "200",
            "HF_HUB_OFFLINE": "1",
        }
        self.bootstrap = bootstrap

    def __call__(self, *args: str, expect: int = 0) -> str:
        """Run a command; returns its stdout and stderr together."""
        done = self.run(*args, expect=expect)
        return done.stdout + done.stderr

    def run(self, *args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "worker.cli.main", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == expect, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
        return done

    async def log_routes(self) -> dict[str, list[str]]:
        settings = load_settings(
            kafka_bootstrap=self.bootstrap, topic_mutations=self.topics["ROUTEWORKER_TOPIC_MUTATIONS"]
        )
        state = await read_routes(settings)
        return {name: d.utterances for name, d in state.routes.items()}


@pytest.fixture
def cli(broker: LocalBroker) -> Cli:
    return Cli(broker.bootstrap)


def test_topics_create_is_idempotent(cli: Cli) -> None:
    first = cli("topics", "create", "--partitions", "2", "--mutation-partitions", "3")
    assert first.count("created") >= 4
    again = cli("topics", "create", "--partitions", "2", "--mutation-partitions", "3")
    assert "created" not in again.replace("created topic", "")
    assert again.count("exists") == 4
    assert cli.topics["ROUTEWORKER_TOPIC_MUTATIONS"] in again


async def test_apply_plans_publishes_differences_prunes_and_deletes(cli: Cli, tmp_path: Path) -> None:
    cli("topics", "create", "--partitions", "1")
    dry = cli("routes", "apply", str(EXAMPLE), "--dry-run")
    assert "24 to add, 0 to change, 0 to remove, 0 unchanged" in dry
    assert "dry run: nothing published" in dry
    assert await cli.log_routes() == {}

    applied = cli("routes", "apply", str(EXAMPLE))
    assert "published 24 mutations and a calibration" in applied
    assert "cross-validated on" in applied  # what the self-fit chose, and its estimate
    again = cli("routes", "apply", str(EXAMPLE))
    assert "0 to add, 0 to change, 0 to remove, 24 unchanged" in again
    assert "the calibration in the log is current" in again

    routes = yaml.safe_load(EXAMPLE.read_text())
    edited = [r for r in routes if r["name"] not in ("complaint", "gift_card")]
    edited[0]["threshold"] = 0.7
    edited.append({"name": "loyalty_points", "utterances": ["how many points do I have"]})
    changed_file = tmp_path / "routes.yaml"
    changed_file.write_text(yaml.safe_dump(edited))
    kept = cli("routes", "apply", str(changed_file))
    assert "1 to add, 1 to change, 0 to remove, 21 unchanged, 2 not in the file and kept" in kept
    pruned = cli("routes", "apply", str(changed_file), "--prune", "--no-calibrate")
    assert "0 to add, 0 to change, 2 to remove, 23 unchanged" in pruned
    assert "published 2 mutations;" in pruned
    recalibrated = cli("routes", "calibrate")
    assert "published the calibration" in recalibrated

    assert "not in the log: no_such_route" in cli("routes", "delete", "no_such_route", expect=1)
    cli("routes", "delete", "loyalty_points")
    names = await cli.log_routes()
    assert len(names) == 22
    assert "complaint" not in names
    assert "loyalty_points" not in names

    listing = cli("routes", "list")
    assert "22 routes" in listing
    assert "order_status" in listing
    as_yaml = cli.run("routes", "list", "--yaml").stdout
    assert len(yaml.safe_load(as_yaml)) == 22


async def test_an_invalid_file_publishes_nothing_and_names_route_and_field(cli: Cli, tmp_path: Path) -> None:
    cli("topics", "create", "--partitions", "1")
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "- name: fine\n  utterances: [hello]\n"
        "- name: broken\n  utterances: [ok, '  ']\n  threshold: 4\n"
        "- name: typo\n  utterances: [x]\n  treshold: 0.5\n"
    )
    out = cli("routes", "apply", str(bad), expect=1)
    assert "nothing was published" in out
    assert "route 'broken' (#2): utterances" in out
    assert "route 'broken' (#2): threshold" in out
    assert "route 'typo' (#3): treshold: unknown field" in out
    assert await cli.log_routes() == {}


async def test_apply_with_embeddings_ships_vectors_of_the_real_model(
    cli: Cli, tmp_path: Path, model_spec: ModelSpec
) -> None:
    cli("topics", "create", "--partitions", "1")
    small = tmp_path / "small.yaml"
    small.write_text(yaml.safe_dump(yaml.safe_load(EXAMPLE.read_text())[:3]))
    out = cli("routes", "apply", str(small), "--with-embeddings")
    assert "published 3 mutations" in out
    listing = cli("routes", "list")
    assert listing.count(model_spec.name) == 3
    # once shipped, applying again with embeddings publishes nothing
    assert "0 to add, 0 to change, 0 to remove, 3 unchanged" in cli(
        "routes", "apply", str(small), "--with-embeddings"
    )
    # a calibration published by `fit` covers the same routes: `routes apply` leaves it in place
    assert "published calibration" in cli("fit", "--routes", str(small), "--publish")
    assert "the calibration in the log is current" in cli("routes", "apply", str(small))


def test_commands_fail_cleanly_without_a_broker(tmp_path: Path) -> None:
    cli = Cli("127.0.0.1:1")
    out = cli("routes", "list", expect=1)
    assert "routeworker:" in out
    assert "Traceback" not in out


async def test_topics_create_sets_the_mutation_log_retention_on_apache_kafka(
    kafka_broker: LocalKafka,
) -> None:
    cli = Cli(kafka_broker.bootstrap)
    created = cli("topics", "create", "--partitions", "2", "--tombstone-retention-hours", "1")
    assert created.count("created") >= 4
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
    await admin.start()
    try:
        configs = await topic_configs(admin, cli.topics["ROUTEWORKER_TOPIC_MUTATIONS"])
        described = await admin.describe_topics([cli.topics["ROUTEWORKER_TOPIC_QUERIES"]])
    finally:
        await admin.close()
    assert {k: configs[k] for k in ("cleanup.policy", "delete.retention.ms", "retention.ms")} == {
        "cleanup.policy": "compact",
        "delete.retention.ms": "3600000",
        "retention.ms": "-1",
    }
    assert [len(p["replicas"]) for p in described[0]["partitions"]] == [1, 1]  # one broker: one copy
    # more copies than brokers: one line, nothing half-made
    failed = Cli(kafka_broker.bootstrap).run("topics", "create", "--replication-factor", "3", expect=1)
    assert "routeworker:" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1
