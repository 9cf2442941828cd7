"""How long a rebalance of three workers takes under load, against the session timeout (issue 13, item 4).

    python benchmarks/rebalance.py                 # 2 rounds, 3,000 queries over 40 s
    python benchmarks/rebalance.py --rounds 1 --queries 1200 --seconds 20

One Apache Kafka, 6 partitions, real `routeworker run` processes with the default group settings
(session timeout 10 s, heartbeat 1 s). Two workers serve while queries are produced at a steady
pace; each round a third joins (2 -> 3), then one of the three leaves with SIGTERM (3 -> 2).
A rebalance is timed from the workers' own log lines: from the earliest start of any member's
rebalance after the change (its "partitions revoked" line, or its assignment less the duration it
reports: a joining member starts at its JoinGroup) to the last member's new assignment. This
includes finishing and committing the in-flight batches of the revoked partitions. Each replica's
own figure (revocation to its new assignment, also the routeworker_rebalance_duration metric) is
kept too. Writes benchmarks/results/rebalance.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))  # the harness of the integration tests

from eos_faults import Replicas  # noqa: E402
from faults import Plan, produce_paced, records  # noqa: E402
from pipeline_harness import Topics, create_topics, publish_routes, route_definitions  # noqa: E402

from worker.local.kafka import LocalKafka  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "rebalance.json"
SESSION_TIMEOUT_MS = 10_000  # the worker's default
_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ [\w.]+: (.*)$")
_OWN = re.compile(r"after a rebalance of ([0-9.]+)s")


@dataclass
class Rebalance:
    change: str  # "join 2->3" or "leave 3->2"
    seconds: float  # first revocation to the last member's assignment
    replicas_s: list[float]  # each member's own revocation-to-assignment
    members: int


def log_lines(text: str) -> list[tuple[float, str]]:
    """(epoch seconds, message) of each log line with a timestamp."""
    out = []
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            stamp = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            out.append((stamp, m.group(2)))
    return out


async def measure(replicas: Replicas, change: str, since: float, within: float = 90) -> Rebalance:
    """Wait until every running worker was assigned partitions after a revocation later than ``since``."""
    deadline = time.monotonic() + within
    while True:
        lines = {slot: log_lines(w.log()) for slot, w in replicas.running.items()}
        revokes = [t for ls in lines.values() for t, msg in ls if t >= since and "partitions revoked" in msg]
        if revokes:
            first = min(revokes)
            assigned = {
                slot: [(t, msg) for t, msg in ls if t >= first and msg.startswith("assigned ")]
                for slot, ls in lines.items()
            }
            if all(assigned.values()):
                firsts = [entries[0] for entries in assigned.values()]
                last = max(t for t, _ in firsts)
                timed = [(t, float(m.group(1))) for t, msg in firsts if (m := _OWN.search(msg))]
                # a joining member's rebalance starts at its JoinGroup, before the others notice
                # it on their next heartbeat: each member's own figure says when its began
                began = min([first, *(t - own for t, own in timed)])
                return Rebalance(change, round(last - began, 3), [own for _, own in timed], len(assigned))
        if time.monotonic() > deadline:
            raise TimeoutError(f"{change}: no complete rebalance within {within}s")
        await asyncio.sleep(0.2)


async def serving(replicas: Replicas, count: int, within: float = 120) -> None:
    async with asyncio.timeout(within):
        while len(replicas.serving()) < count:  # noqa: ASYNC110 - polling other processes
            await asyncio.sleep(0.2)


async def run(plan: Plan, rounds: int, workdir: Path) -> dict[str, Any]:
    kafka = LocalKafka()
    replicas: Replicas | None = None
    try:
        await asyncio.to_thread(kafka.start)
        bootstrap = kafka.bootstrap
        topics = Topics.fresh()
        await create_topics(bootstrap, topics, partitions=plan.partitions)
        await publish_routes(bootstrap, topics.mutations, route_definitions())
        env = topics.env(
            bootstrap,
            workdir / "unused.sqlite3",
            kafka_session_timeout_ms=SESSION_TIMEOUT_MS,
            kafka_heartbeat_interval_ms=1000,
            commit_interval_ms=1000,
        )
        replicas = Replicas(env, workdir)
        replicas.start()
        replicas.start()
        await serving(replicas, 2)
        stream = records(plan, 0).records
        load = asyncio.create_task(produce_paced(bootstrap, topics.queries, stream, plan.seconds))
        results: list[Rebalance] = []
        await asyncio.sleep(plan.seconds * 0.1)
        for _ in range(rounds):
            since = time.time()
            replicas.start()
            results.append(await measure(replicas, "join 2->3", since))
            await asyncio.sleep(1.0)  # let the new generation serve a moment
            since = time.time()
            await replicas.leave(replicas.oldest())
            results.append(await measure(replicas, "leave 3->2", since))
            await asyncio.sleep(1.0)
        under_load = not load.done()
        await load
        return {
            "rebalances": [asdict(r) for r in results],
            "all_under_load": under_load,
            "longest_s": max(r.seconds for r in results),
            "median_s": statistics.median(r.seconds for r in results),
        }
    finally:
        if replicas is not None:
            await replicas.stop_all()
            replicas.close()
        await asyncio.to_thread(kafka.close)


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--queries", type=int, default=3000)
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    plan = Plan(queries=args.queries, seconds=args.seconds)
    workdir = Path(tempfile.mkdtemp(prefix="routeworker-rebalance-"))
    load_before = [round(x, 2) for x in os.getloadavg()]
    try:
        outcome = await run(plan, args.rounds, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    document = {
        "plan": asdict(plan),
        "rounds": args.rounds,
        "session_timeout_ms": SESSION_TIMEOUT_MS,
        "heartbeat_interval_ms": 1000,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "load_average": load_before},
        **outcome,
    }
    for r in outcome["rebalances"]:
        own = ", ".join(f"{s:.2f}" for s in r["replicas_s"])
        print(f"{r['change']}: {r['seconds']:.2f} s for {r['members']} members (each replica: {own})")
    print(f"longest {outcome['longest_s']:.2f} s of a {SESSION_TIMEOUT_MS / 1000:.0f} s session timeout")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
