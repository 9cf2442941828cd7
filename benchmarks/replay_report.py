"""The report of `routes apply --dry-run --replay` on Banking77 traffic, and how long it takes.

    python benchmarks/replay_report.py                  # Apache Kafka, 2,000 queries
    python benchmarks/replay_report.py --broker tansu --queries 300   # quick try

On a private broker: the current table holds 76 Banking77 routes (10 train utterances each), one
of them a broad ``card_delivery`` that merges ``card_arrival`` and ``card_delivery_estimate``, and
is published with its self-fit calibration by `routeworker routes apply`. ``--queries`` texts of
the Banking77 test split (seeded draw, every category) are produced to ``queries`` as upstream
traffic, with metadata. The planned route file splits ``card_delivery`` back into its two
categories. Then, exactly as a route owner would:

    routeworker routes apply planned.yaml --prune --dry-run --replay 1h --output json
    routeworker routes apply planned.yaml --prune --dry-run --replay 1h --show-examples

The JSON report (with the wall time of each command and the machine) goes to
benchmarks/results/replay.json, the text report to benchmarks/results/replay_report.txt; the
README's route-management section shows both (``python benchmarks/readme.py``). Run it under
``flock /work/.bench.lock``: the embedding time is the figure, and other work inflates it.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import yaml
from aiokafka import AIOKafkaProducer
from machine import machine_info

from worker.local.broker import LocalBroker
from worker.local.kafka import LocalKafka

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
SPLIT = ("card_arrival", "card_delivery_estimate")
MERGED = "card_delivery"
UTTERANCES = 10
SEED = 0


def _read(path: Path) -> list[tuple[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return [(row["text"], row["category"]) for row in csv.DictReader(fh)]


def route_files(datasets: Path, folder: Path) -> tuple[Path, Path, dict[str, list[str]]]:
    """current.yaml (the two categories merged), planned.yaml (split), and the routes by name."""
    by_category: dict[str, list[str]] = defaultdict(list)
    for text, category in _read(datasets / "banking77" / "train.csv"):
        by_category[category].append(text)
    rng = np.random.default_rng(SEED)
    routes = {
        name: [texts[i] for i in sorted(rng.permutation(len(texts))[:UTTERANCES])]
        for name, texts in sorted(by_category.items())
    }
    planned = [{"name": name, "utterances": utterances} for name, utterances in routes.items()]
    current = [r for r in planned if r["name"] not in SPLIT]
    current.append({"name": MERGED, "utterances": routes[SPLIT[0]] + routes[SPLIT[1]]})
    current.sort(key=lambda r: str(r["name"]))
    current_file, planned_file = folder / "current.yaml", folder / "planned.yaml"
    current_file.write_text(yaml.safe_dump(current, sort_keys=False))
    planned_file.write_text(yaml.safe_dump(planned, sort_keys=False))
    return current_file, planned_file, routes


def traffic(datasets: Path, count: int) -> list[str]:
    """``count`` texts of the Banking77 test split, drawn with a fixed seed."""
    rows = _read(datasets / "banking77" / "test.csv")
    rng = np.random.default_rng(SEED)
    return [rows[i][0] for i in rng.permutation(len(rows))[:count]]


async def produce(bootstrap: str, topic: str, texts: list[str]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, linger_ms=20)
    await producer.start()
    try:
        futures = []
        for i, text in enumerate(texts):
            value = {"id": f"b77-{i:05d}", "text": text, "metadata": {"session": uuid.uuid4().hex}}
            futures.append(await producer.send(topic, orjson.dumps(value)))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


class Cli:
    def __init__(self, bootstrap: str, topics: dict[str, str], columns: int) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTEWORKER_")}
        self.env.update(topics)
        self.env.update(
            {"ROUTEWORKER_KAFKA_BOOTSTRAP": bootstrap, "COLUMNS": str(columns), "HF_HUB_OFFLINE": "1"}
        )

    def __call__(self, *args: str, expect: int = 0) -> tuple[str, float]:
        began = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "worker.cli.main", *args],
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
            timeout=900,
        )
        wall = time.perf_counter() - began
        if done.returncode != expect:
            raise SystemExit(f"routeworker {' '.join(args)}: exit {done.returncode}\n{done.stderr[-3000:]}")
        return done.stdout, wall


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--broker", choices=("kafka", "tansu"), default="kafka")
    parser.add_argument("--queries", type=int, default=2000, help="queries produced (and replayed)")
    parser.add_argument("--datasets", type=Path, default=ROOT.parent / "shared" / "datasets")
    parser.add_argument("--columns", type=int, default=120, help="terminal width of the text report")
    args = parser.parse_args()
    load_before = os.getloadavg()
    service: AbstractContextManager[Any] = LocalKafka() if args.broker == "kafka" else LocalBroker()
    tag = uuid.uuid4().hex[:8]
    topics = {
        f"ROUTEWORKER_TOPIC_{name.upper()}": f"{name}-{tag}"
        for name in ("queries", "intents", "dlq", "mutations")
    }
    with tempfile.TemporaryDirectory() as tmp, service as broker:
        current, planned, _ = route_files(args.datasets, Path(tmp))
        cli = Cli(broker.bootstrap, topics, args.columns)
        cli("topics", "create", "--partitions", "2", "--replication-factor", "1")
        _, publish_s = cli("routes", "apply", str(current))
        texts = traffic(args.datasets, args.queries)
        asyncio.run(produce(broker.bootstrap, topics["ROUTEWORKER_TOPIC_QUERIES"], texts))
        replay = ("routes", "apply", str(planned), "--prune", "--dry-run", "--replay", "1h")
        replay_limit = ("--replay-limit", str(args.queries))
        json_out, json_s = cli(*replay, *replay_limit, "--output", "json")
        text_out, text_s = cli(*replay, *replay_limit, "--show-examples")
    report = json.loads(json_out)
    shown = " ".join(
        ["routeworker", *replay[:2], "planned.yaml", *replay[3:], *replay_limit, "--show-examples"]
    )
    result = {
        "benchmark": "replay_report",
        "command": "python benchmarks/replay_report.py " + " ".join(sys.argv[1:]),
        "machine": machine_info(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "broker": args.broker,
        "queries_produced": len(texts),
        "split": {"merged": MERGED, "into": list(SPLIT)},
        "routes_current": report["routes"],
        "publish_current_wall_s": round(publish_s, 2),
        "replay_json_wall_s": round(json_s, 2),
        "replay_text_wall_s": round(text_s, 2),
        "text_command": shown,
        "report": report,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "replay.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "replay_report.txt").write_text(text_out)
    replayed = report["replay"]
    print(
        f"{replayed['replayed']} queries replayed: {replayed['changed']} change route; embedding "
        f"{replayed['embedded_texts']} texts took {replayed['seconds']['embed']:.2f} s; the whole command "
        f"{json_s:.1f} s. Wrote {RESULTS / 'replay.json'} and {RESULTS / 'replay_report.txt'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
