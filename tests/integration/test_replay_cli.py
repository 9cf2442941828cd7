"""`routes apply --dry-run --replay` on a real broker with the real model (issue 18).

A route file change splits one route into two; traffic produced by the test is replayed against the
current and the planned table: the report names the expected moves, counts the malformed records,
never prints metadata (nor texts without --show-examples), and --fail-if-changed exits non-zero.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import orjson
import pytest
import yaml
from pipeline_harness import produce

from worker.cli.replay_cmd import EXIT_CHANGED
from worker.config import load_settings
from worker.local.broker import LocalBroker
from worker.replication import read_routes

pytestmark = pytest.mark.integration

WEATHER = ["will it rain tomorrow", "what is the weather like today", "is it going to be sunny", "forecast"]
BILLING = ["pay my bill", "my invoice is wrong", "how much do I owe this month", "update my billing address"]
REFUNDS = ["I want a refund", "give me my money back", "refund my last order", "when will my refund arrive"]
SECRET = "metadata-never-printed-7f3a"


class Cli:
    """`routeworker` in a child process, on topics private to one test."""

    def __init__(self, bootstrap: str) -> None:
        tag = uuid.uuid4().hex[:8]
        self.queries = f"queries-{tag}"
        self.mutations = f"mutations-{tag}"
        self.bootstrap = bootstrap
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("ROUTEWORKER_")},
            "ROUTEWORKER_TOPIC_QUERIES": self.queries,
            "ROUTEWORKER_TOPIC_INTENTS": f"intents-{tag}",
            "ROUTEWORKER_TOPIC_DLQ": f"dlq-{tag}",
            "ROUTEWORKER_TOPIC_MUTATIONS": self.mutations,
            "ROUTEWORKER_KAFKA_BOOTSTRAP": bootstrap,
            "COLUMNS": "250",
            "HF_HUB_OFFLINE": "1",
        }

    def run(self, *args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "worker.cli.main", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == expect, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
        return done


def _route_file(path: Path, routes: dict[str, list[str]]) -> Path:
    path.write_text(yaml.safe_dump([{"name": n, "utterances": u} for n, u in routes.items()]))
    return path


def _query(i: int, text: str) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    value = {"id": f"q{i}", "text": text, "metadata": {"customer": SECRET}}
    return None, orjson.dumps(value), []


@pytest.fixture
def cli(broker: LocalBroker) -> Cli:
    return Cli(broker.bootstrap)


async def test_a_split_route_reports_its_moves_and_fails_the_gate(cli: Cli, tmp_path: Path) -> None:
    cli.run("topics", "create", "--partitions", "2")
    current = _route_file(tmp_path / "current.yaml", {"weather": WEATHER, "payments": BILLING + REFUNDS})
    cli.run("routes", "apply", str(current))
    split = _route_file(tmp_path / "split.yaml", {"weather": WEATHER, "billing": BILLING, "refunds": REFUNDS})
    # traffic: each route's own utterances (answered without doubt by either table), and two
    # records no replica can route
    texts = WEATHER + BILLING + REFUNDS
    records = [_query(i, text) for i, text in enumerate(texts)]
    records += [(None, b"{not json", []), (None, orjson.dumps({"id": "no-text"}), [])]
    await produce(cli.bootstrap, cli.queries, records)

    done = cli.run(
        "routes", "apply", str(split), "--prune", "--dry-run", "--replay", "100", "--output", "json"
    )
    report = json.loads(done.stdout)
    assert report["plan"]["summary"].startswith("2 to add, 0 to change, 1 to remove, 1 unchanged")
    replay = report["replay"]
    assert replay["records"] == len(texts) + 2
    assert replay["malformed"] == {"schema": 1, "invalid_json": 1}
    assert replay["replayed"] == len(texts)
    moves = {(m["from"], m["to"]): m["count"] for m in replay["moves"]}
    assert moves == {("payments", "billing"): len(BILLING), ("payments", "refunds"): len(REFUNDS)}
    assert replay["changed"] == len(BILLING) + len(REFUNDS)
    assert replay["changed_share"] == pytest.approx(8 / 12, abs=1e-6)
    assert len(replay["examples"]) == 8
    assert all("text" not in example for example in replay["examples"])
    assert replay["embedded_texts"] == len(texts)
    assert replay["seconds"]["embed"] > 0
    assert "self-fit" in replay["planned_calibration"]
    assert replay["current_calibration"].startswith("calibration ")
    assert report["published"] is False
    assert SECRET not in done.stdout + done.stderr
    assert not any(text in done.stdout + done.stderr for text in REFUNDS)

    gated = cli.run(
        "routes", "apply", str(split), "--prune", "--replay", "1h", "--fail-if-changed", "50",
        "--show-examples", expect=EXIT_CHANGED,
    )  # fmt: skip
    output = gated.stdout + gated.stderr
    assert "8 of 12 queries change route (66.7%)" in output
    assert "more than --fail-if-changed 50%" in output
    assert "nothing published" in output
    assert "give me my money back" in output  # --show-examples
    assert SECRET not in output
    settings = load_settings(kafka_bootstrap=cli.bootstrap, topic_mutations=cli.mutations)
    assert sorted((await read_routes(settings)).routes) == ["payments", "weather"]

    passed = cli.run("routes", "apply", str(split), "--prune", "--dry-run", "--replay", "1h",
                     "--fail-if-changed", "70")  # fmt: skip
    assert "within --fail-if-changed 70%" in passed.stdout


def test_no_queries_topic_or_an_empty_sample_is_one_line_and_the_plan(cli: Cli, tmp_path: Path) -> None:
    routes = _route_file(tmp_path / "routes.yaml", {"weather": WEATHER, "billing": BILLING})
    cli.run("topics", "create", "--partitions", "2")
    cli.env["ROUTEWORKER_TOPIC_QUERIES"] = f"absent-{uuid.uuid4().hex[:8]}"
    missing = cli.run("routes", "apply", str(routes), "--dry-run", "--no-calibrate", "--replay", "1h")
    assert "2 to add" in missing.stdout
    (line,) = [line for line in missing.stdout.splitlines() if line.startswith("replay:")]
    assert "does not exist" in line
    assert "structural only" in line
    gated = cli.run(
        "routes", "apply", str(routes), "--dry-run", "--no-calibrate", "--replay", "1h",
        "--fail-if-changed", "5", expect=1,
    )  # fmt: skip
    assert "no sample to judge the change by" in gated.stdout

    cli.env["ROUTEWORKER_TOPIC_QUERIES"] = cli.queries
    empty = cli.run("routes", "apply", str(routes), "--dry-run", "--no-calibrate", "--replay", "500",
                    "--fail-if-changed", "5")  # fmt: skip
    (line,) = [line for line in empty.stdout.splitlines() if line.startswith("replay:")]
    assert "holds no records" in line
    assert "2 to add" in empty.stdout
