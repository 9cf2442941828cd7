"""Ask and wait over a real broker: RouteClient and `routeworker route` against a real worker and model."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from pipeline_harness import ROOT, RunningWorker, Topics, create_topics

from worker.client import QueryRejected, RouteClient, RouteTimeout
from worker.local.kafka import LocalKafka

pytestmark = pytest.mark.integration

EXPECTED = {
    "will it rain tomorrow morning": "weather",
    "what is my account balance today": "banking",
    "play some jazz music for me": "music",
    "book a flight to paris please": "travel",
    "hello there, good morning": "greeting",
}


async def test_answers_come_back_to_their_own_calls(asked_worker: RunningWorker) -> None:
    async with RouteClient(asked_worker.settings(), timeout_s=60) as client:
        texts = list(EXPECTED) * 3
        answers = await asyncio.gather(*(client.route(text, top_n=2) for text in texts))
        assert client.in_flight == 0
    assert [a.route for a in answers] == [EXPECTED[t] for t in texts]
    assert len({a.query_id for a in answers}) == len(texts)
    assert all(a.query_id.startswith(client.prefix) for a in answers)
    assert all(a.worker == "asked-worker" and len(a.candidates) == 2 for a in answers)


async def test_two_clients_share_the_topics_and_each_gets_its_own_answers(
    asked_worker: RunningWorker,
) -> None:
    async with (
        RouteClient(asked_worker.settings(), timeout_s=60) as one,
        RouteClient(asked_worker.settings()) as two,
    ):
        first, second = await asyncio.gather(
            one.route_many(["play some jazz music for me"] * 4),
            two.route_many(["hello there, good morning"] * 4),
        )
    assert {a.route for a in first if not isinstance(a, Exception)} == {"music"}
    assert {a.route for a in second if not isinstance(a, Exception)} == {"greeting"}
    assert len(first) == len(second) == 4


async def test_a_dead_lettered_query_raises_with_its_code(asked_worker: RunningWorker) -> None:
    async with RouteClient(asked_worker.settings(), timeout_s=60) as client:
        with pytest.raises(QueryRejected) as info:
            await client.route("x" * (asked_worker.settings().max_text_chars + 1))
    assert info.value.code == "too_large"
    assert "characters" in info.value.reason


async def test_no_answer_in_time_is_a_timeout(kafka_broker: LocalKafka) -> None:
    topics = Topics.fresh()  # nobody serves these
    await create_topics(kafka_broker.bootstrap, topics)
    async with RouteClient(topics.settings(kafka_broker.bootstrap), timeout_s=0.3) as client:
        with pytest.raises(RouteTimeout, match=r"within 0\.3 s"):
            await client.route("is anyone there")
        assert client.in_flight == 0


async def test_calls_beyond_max_in_flight_wait_for_a_slot(kafka_broker: LocalKafka) -> None:
    topics = Topics.fresh()
    await create_topics(kafka_broker.bootstrap, topics)
    async with RouteClient(topics.settings(kafka_broker.bootstrap), timeout_s=1.0, max_in_flight=2) as client:
        calls = [asyncio.create_task(client.route(f"question {i}")) for i in range(5)]
        async with asyncio.timeout(10):
            while client.waiting != 3:  # noqa: ASYNC110 - state of the client under test
                await asyncio.sleep(0.005)
        assert client.in_flight == 2
        results = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(r, RouteTimeout) for r in results)


async def test_a_missing_intents_topic_is_a_clear_error(kafka_broker: LocalKafka) -> None:
    settings = Topics.fresh().settings(kafka_broker.bootstrap)
    with pytest.raises(Exception, match="does not exist"):
        async with RouteClient(settings):
            pass


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker.cli.main", "route", *args],
        cwd=ROOT,
        env={**env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_the_route_command_prints_a_table(asked_worker: RunningWorker) -> None:
    done = await asyncio.to_thread(
        run_cli,
        ["will it rain tomorrow morning", "play some jazz music for me", "--timeout", "60"],
        asked_worker.env(),
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any("will it rain tomorrow morning" in line and "weather" in line for line in lines), done.stdout
    assert any("play some jazz music for me" in line and "music" in line for line in lines), done.stdout
    assert "asked-worker" in done.stdout
    for column in ("query", "route", "score", "candidates", "replica", "latency ms"):
        assert column in done.stdout


async def test_the_route_command_reads_a_file_and_prints_json(
    asked_worker: RunningWorker, tmp_path: Path
) -> None:
    texts = tmp_path / "queries.txt"
    texts.write_text("what is my account balance today\n\n" + "y" * 5000 + "\n")
    done = await asyncio.to_thread(
        run_cli, ["--file", str(texts), "--json", "--timeout", "60"], asked_worker.env()
    )
    assert done.returncode == 1  # one of them was dead-lettered
    answers = [orjson.loads(line) for line in done.stdout.splitlines()]
    assert answers[0]["intent"]["route"] == "banking"
    assert answers[1]["error"] == "dead-lettered: too_large"


async def test_the_route_command_times_out_with_status_1(kafka_broker: LocalKafka, tmp_path: Path) -> None:
    topics = Topics.fresh()
    await create_topics(kafka_broker.bootstrap, topics)
    done = await asyncio.to_thread(
        run_cli, ["anyone?", "--timeout", "0.5"], topics.env(kafka_broker.bootstrap, tmp_path / "s.sqlite3")
    )
    assert done.returncode == 1
    assert "timeout (0.5 s)" in done.stdout


async def test_an_explained_answer_says_why(asked_worker: RunningWorker) -> None:
    async with RouteClient(asked_worker.settings(), timeout_s=60) as client:
        plain = await client.route("book a flight to paris please")
        intent = await client.route("book a flight to paris please", explain=True)
    assert plain.explanation is None
    why = intent.explanation
    assert why is not None
    assert intent.route == "travel"
    assert why.rule == "matched"
    assert why.routes[0].route == "travel"
    assert why.routes[0].nearest[0].utterance == "book a flight to paris"
    assert why.threshold is not None
    assert why.head_weight == 0.0  # this worker serves without a head


async def test_the_route_command_explains(asked_worker: RunningWorker) -> None:
    done = await asyncio.to_thread(
        run_cli, ["book a flight to paris please", "--explain", "--timeout", "60"], asked_worker.env()
    )
    assert done.returncode == 0, done.stderr
    assert "why: 'book a flight to paris please': matched" in done.stdout
    assert "book a flight to paris (" in done.stdout  # its nearest utterance and similarity
