"""How each broker answers a waiting fetch: produce -> consume latency against fetch.max.wait.ms.

    flock /work/.bench.lock .venv/bin/python benchmarks/broker_fetch_wait.py [--rate 70] [--seconds 4]

Records produced at a steady rate (as the pipeline benchmark's half-load run does) are read straight
back by a consumer that fetches with each ``fetch_max_wait_ms``, on Tansu and on Apache Kafka. A
broker that answers a waiting fetch as soon as a record lands (Apache Kafka) shows the same latency
at every wait; one that holds the fetch (Tansu) adds part of the wait to every record. Writes
benchmarks/results/broker_fetch_wait.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipeline_kit import broker_floor, create_topic, load_average

from worker.cli.console import console
from worker.local.broker import LocalBroker
from worker.local.kafka import LocalKafka

RESULTS = Path(__file__).resolve().parent / "results"
WAITS_MS = (5, 100, 500)


async def run(rate: float, seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, service in (("tansu", LocalBroker), ("kafka", LocalKafka)):
        with service() as running:
            out[name] = {}
            for wait in WAITS_MS:
                topic = f"fetch-wait-{wait}"
                await create_topic(running.bootstrap, topic, 2)
                measured = await broker_floor(running.bootstrap, topic, rate, seconds, wait)
                out[name][str(wait)] = measured
                console.print(f"{name}, fetch wait {wait} ms: {measured['produce_to_consumer_ms']}")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=70.0, help="records per second")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each run")
    args = parser.parse_args()
    before = load_average()
    results = asyncio.run(run(args.rate, args.seconds))
    document = {
        "benchmark": "broker_fetch_wait",
        "command": "python benchmarks/broker_fetch_wait.py " + " ".join(sys.argv[1:]),
        "noise": {"load_average_before": before, "load_average_after": load_average()},
        "results": results,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "broker_fetch_wait.json").write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
