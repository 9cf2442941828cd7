"""Query throughput of a real `routeworker run` worker while routes are added to the mutation log.

    python benchmarks/pipeline_mutations.py                 # 10k-route table, 3 cycles of +1,000 routes
    python benchmarks/pipeline_mutations.py --routes 2000 --cycles 2 --embed-on-replica

A worker process (route replica, encoder pool, query pipeline) drains a backlog of distinct queries
from the real (Tansu) broker as fast as it can. The run alternates two kinds of window:

- *baseline*: ``--window`` seconds in which the route table does not change;
- *adding*: 1,000 new routes are published (vectors shipped with the records unless
  ``--embed-on-replica``); the window lasts until the worker answers with a route-table version that
  includes all of them AND its background index rebuild triggered by them has finished (the log's
  "rebuilt ... route index" line), and at least ``--window`` seconds.

- *control*: the same records are published, for as long, to a topic the worker does not read.
  The broker, the publisher and the worker share this machine's two vCPUs (in production they do
  not): the control shows what the broker and publisher alone cost the worker.

Throughput in a window = routed intents whose timestamp falls in it / its length, summed over all
cycles. Reported: adding / baseline (everything on one machine) and adding / control (the
worker's own cost of applying the routes); target at least 0.90. "No errors" is
checked, not assumed: the dead-letter topic must stay empty, every query is answered exactly
once, the worker's log has no ERROR line and it exits 0.

Writes the figures, with machine, versions and settings, to
benchmarks/results/pipeline_mutations.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer
from pipeline_kit import (
    BATCH,
    PER_ROUTE,
    IntentReader,
    Worker,
    create_topics,
    load_average,
    machine,
    prepare_store,
    produce_all,
    query,
    synthetic_routes,
    topic_names,
    unique_texts,
    versions,
    worker_env,
)

from worker.cli.console import console, table
from worker.config import load_settings
from worker.contracts import RouteDefinition, RouteMutation, ShippedEmbeddings, encode
from worker.embedding import EncoderPool
from worker.embedding.model import resolve_model
from worker.local.broker import LocalBroker
from worker.local.process import free_port
from worker.replication import MutationPublisher
from worker.routing import l2_normalise

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "pipeline_mutations.json"
TARGET_RATIO = 0.90


class VersionedIntentReader(IntentReader):
    """Routed intents as they arrive: query id -> (intent timestamp ms, routes_version)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(bootstrap, topic)
        self.versions: dict[str, tuple[int, dict[str, int]]] = {}
        self.duplicates = 0

    def take(self, record: Any, intent: dict[str, Any], now: float) -> None:
        if intent["query_id"] in self.versions:
            self.duplicates += 1
        else:
            self.versions[intent["query_id"]] = (record.timestamp, intent["routes_version"])

    def first_covering(self, positions: dict[int, int], since_ms: float) -> float | None:
        """Timestamp of the first intent after ``since_ms`` decided by a table holding ``positions``."""
        stamps = [
            ts
            for ts, version in self.versions.values()
            if ts >= since_ms and all(version.get(str(p), 0) >= o for p, o in positions.items())
        ]
        return float(min(stamps)) if stamps else None

    def timeline(self, start_ms: float, end_ms: float, step_ms: float = 500) -> list[int]:
        """Intents stamped in each ``step_ms`` bin from ``start_ms`` to ``end_ms``."""
        bins = [0] * max(1, int((end_ms - start_ms) // step_ms))
        for ts, _ in self.versions.values():
            i = int((ts - start_ms) // step_ms)
            if 0 <= i < len(bins):
                bins[i] += 1
        return bins

    def rate(self, start_ms: float, end_ms: float) -> tuple[int, float]:
        """(intents stamped in [start, end), per second)."""
        count = sum(1 for ts, _ in self.versions.values() if start_ms <= ts < end_ms)
        return count, count / ((end_ms - start_ms) / 1000)


async def count_records(bootstrap: str, topic: str) -> int:
    """Records in ``topic`` (all partitions), read from the start until nothing more arrives."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        total = 0
        while batches := await consumer.getmany(timeout_ms=2_000):
            total += sum(len(records) for records in batches.values())
        return total
    finally:
        await consumer.stop()


def added_routes(
    cycle: int, count: int, dim: int, fingerprint: str, rng: np.random.Generator, ship: bool
) -> list[RouteDefinition]:
    """``count`` new routes; with ``ship`` their vectors (clustered, unit) travel in the record."""
    made = []
    centres = l2_normalise(rng.normal(size=(count, dim)))
    for i in range(count):
        utterances = [
            f"added route {cycle}-{i} example {j} about {rng.integers(1e6)}" for j in range(PER_ROUTE)
        ]
        embeddings = None
        if ship:
            vectors = l2_normalise(
                np.repeat(centres[i : i + 1], PER_ROUTE, 0) + rng.normal(size=(PER_ROUTE, dim)) / 40
            )
            embeddings = ShippedEmbeddings(
                fingerprint=fingerprint, dim=dim, utterances=ShippedEmbeddings.encode_matrix(vectors)
            )
        made.append(
            RouteDefinition(name=f"added-{cycle}-{i:04d}", utterances=utterances, embeddings=embeddings)
        )
    return made


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds used by the worker, the broker and this benchmark process between two marks."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids

    def mark(self) -> dict[str, float]:
        return {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def since(self, before: dict[str, float]) -> dict[str, float]:
        now = self.mark()
        return {name: round(now[name] - before[name], 2) for name in before}


def rebuilds_logged(log: Path) -> int:
    return log.read_text(errors="replace").count("rebuilt ")


def error_lines(log: Path) -> list[str]:
    return [
        line
        for line in log.read_text(errors="replace").splitlines()
        if " ERROR " in line or "Traceback" in line
    ]


async def wait_until(predicate: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {within}s")
        await asyncio.sleep(0.1)


async def one_cycle(
    publisher: MutationPublisher,
    decoy: MutationPublisher,
    reader: VersionedIntentReader,
    log: Path,
    routes: list[RouteDefinition],
    window: float,
    cpu: CpuMeter,
) -> dict[str, Any]:
    """Baseline window; publish ``routes`` and measure until they are live and folded in; then the
    same records to a topic the worker does not read, for as long (the control)."""
    mutations = [RouteMutation(d.name, d) for d in routes]
    base_start, base_cpu = time.time() * 1000, cpu.mark()
    await asyncio.sleep(window)
    base_end, base_cpu_used = time.time() * 1000, cpu.since(base_cpu)
    rebuilt_before = rebuilds_logged(log)
    load_before = load_average()
    started, adding_cpu = time.time() * 1000, cpu.mark()
    receipt = await publisher.publish(mutations)
    acked = time.time() * 1000
    positions = {int(p): int(o) for p, o in receipt.positions.items()}
    await wait_until(lambda: reader.first_covering(positions, started) is not None, 600, "routes applied")
    live = reader.first_covering(positions, started)
    await wait_until(lambda: rebuilds_logged(log) > rebuilt_before, 600, "index rebuilt")
    settled = time.time() * 1000
    end = max(settled, started + window * 1000)
    await asyncio.sleep(max(0.0, end / 1000 - time.time()))
    adding_cpu_used = cpu.since(adding_cpu)
    control_start, control_cpu = time.time() * 1000, cpu.mark()
    await decoy.publish(mutations)
    control_end = control_start + (end - started)
    await asyncio.sleep(max(0.0, control_end / 1000 - time.time()))
    control_cpu_used = cpu.since(control_cpu)
    await asyncio.sleep(0.5)  # intents of the window still on their way

    def window_figures(start_ms: float, end_ms: float) -> dict[str, float]:
        count, per_second = reader.rate(start_ms, end_ms)
        return {"seconds": round((end_ms - start_ms) / 1000, 2), "intents": count,
                "per_second": round(per_second, 1)}  # fmt: skip

    return {
        "baseline": window_figures(base_start, base_end),
        "adding": window_figures(started, end),
        "control": window_figures(control_start, control_end),
        "cpu_seconds": {"baseline": base_cpu_used, "adding": adding_cpu_used, "control": control_cpu_used},
        "publish_acked_ms": round(acked - started, 1),
        "publish_to_live_ms": round(live - started, 1) if live is not None else None,
        "publish_to_rebuilt_ms": round(settled - started, 1),
        "load_average_before_after": [load_before, load_average()],
        "intents_per_500ms_from_publish_minus_5s": reader.timeline(started - 5_000, end),
        "intents_per_500ms_from_control_publish": reader.timeline(control_start, control_end),
    }


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(11)
    settings = load_settings()
    model = resolve_model(settings)
    pool = await asyncio.to_thread(EncoderPool, model, 1, batch_size=BATCH)
    workdir = Path(tempfile.mkdtemp(prefix="routeworker-bench-mutations-"))
    try:
        with LocalBroker() as broker:
            bootstrap = broker.bootstrap
            names = topic_names("mut", "route-mutations-mut")
            await create_topics(bootstrap, names, args.partitions)
            names["decoy"] = "decoy-mutations"
            await create_topics(bootstrap, {**names, "mutations": names["decoy"], "queries": "decoy-queries",
                                            "intents": "decoy-intents", "dlq": "decoy-dlq"}, 1)  # fmt: skip
            base = await asyncio.to_thread(synthetic_routes, args.routes, pool, rng)
            await produce_all(bootstrap, names["mutations"], [(d.name.encode(), encode(d)) for d in base])
            console.print(f"published {len(base):,} routes; first replay and index build")
            store = workdir / "store.sqlite3"
            env = worker_env(
                bootstrap, names, store, local_cache_size=0, health_port=free_port(),
                background_nice=args.background_nice,
            )  # fmt: skip
            first_start_s = await prepare_store(env, workdir / "prepare.log")
            additions = [
                added_routes(c, args.added, pool.dim, pool.fingerprint, rng, not args.embed_on_replica)
                for c in range(args.cycles)
            ]
            # the backlog outlasts the run: produced before the worker starts, so the load generator
            # does not share the CPUs with the measured worker
            expected_s = 15 + args.cycles * (args.window + max(args.window, 60))
            backlog = unique_texts(int(args.backlog_rate * expected_s), "m-")
            await produce_all(
                bootstrap, names["queries"], [(None, query(f"m-{i}", t)) for i, t in enumerate(backlog)]
            )
            console.print(f"backlog of {len(backlog):,} queries produced; starting the worker")
            reader = VersionedIntentReader(bootstrap, names["intents"])
            await reader.start()
            log = workdir / "worker.log"
            worker = Worker(env, log)
            assert broker.pid is not None
            cpu = CpuMeter({"worker": worker.proc.pid, "broker": broker.pid, "benchmark": os.getpid()})
            cycles: list[dict[str, Any]] = []
            try:
                await wait_until(lambda: len(reader.versions) > 0, 300, "first routed intent")
                await asyncio.sleep(args.warmup)
                bench_settings = settings.model_copy(
                    update={"kafka_bootstrap": bootstrap, "topic_mutations": names["mutations"]}
                )
                decoy_settings = bench_settings.model_copy(update={"topic_mutations": names["decoy"]})
                async with (
                    MutationPublisher(bench_settings) as publisher,
                    MutationPublisher(decoy_settings) as decoy,
                ):
                    for c, routes in enumerate(additions):
                        cycles.append(
                            await one_cycle(publisher, decoy, reader, log, routes, args.window, cpu)
                        )
                        last = cycles[-1]
                        console.print(
                            f"cycle {c + 1}: baseline {last['baseline']['per_second']}/s, adding "
                            f"{last['adding']['per_second']}/s, control {last['control']['per_second']}/s; "
                            f"live after "
                            f"{last['publish_to_live_ms']} ms, folded in after "
                            f"{last['publish_to_rebuilt_ms']} ms"
                        )
                answered_before_stop = len(reader.versions)
            finally:
                code = worker.stop()
                await reader.stop()
            dlq = await count_records(bootstrap, names["dlq"])
        rates = {
            kind: sum(c[kind]["intents"] for c in cycles) / sum(c[kind]["seconds"] for c in cycles)
            for kind in ("baseline", "adding", "control")
        }
        ratio = rates["adding"] / rates["baseline"]
        # window-independent: queries not served because of the additions, in seconds of full service
        lost = [
            (c["control"]["per_second"] * c["adding"]["seconds"] - c["adding"]["intents"])
            / c["control"]["per_second"]
            for c in cycles
        ]
        own = rates["adding"] / rates["control"]
        errors = error_lines(log)
        return {
            "benchmark": "pipeline throughput while routes are added",
            "command": "python benchmarks/pipeline_mutations.py " + " ".join(sys.argv[1:]),
            "model": pool.fingerprint,
            "machine": machine(),
            "versions": versions(),
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "replica_first_start_s": first_start_s,
            "cycles": cycles,
            "per_second": {kind: round(rate, 1) for kind, rate in rates.items()},
            "throughput_ratio": round(ratio, 3),
            "control_ratio": round(rates["control"] / rates["baseline"], 3),
            "throughput_ratio_vs_control": round(own, 3),
            "service_seconds_lost_per_addition_vs_control": [round(x, 2) for x in lost],
            "target_ratio": TARGET_RATIO,
            "errors": {
                "dlq_records": dlq,
                "duplicate_intents": reader.duplicates,
                "answered": answered_before_stop,
                "worker_error_lines": errors[:20],
                "worker_exit_code": code,
            },
            "verdict": {
                "throughput_vs_baseline": ratio >= TARGET_RATIO,
                "throughput_vs_control": own >= TARGET_RATIO,
                "no_errors": dlq == 0 and reader.duplicates == 0 and not errors and code == 0,
            },
            "worker_log": str(log),
        }
    finally:
        await asyncio.to_thread(pool.close)


def report(doc: dict[str, Any]) -> None:
    rows = [
        (
            str(i + 1),
            f"{c['baseline']['per_second']:.1f}",
            f"{c['adding']['per_second']:.1f}",
            f"{c['control']['per_second']:.1f}",
            f"{c['adding']['per_second'] / c['baseline']['per_second']:.2f}",
            f"{c['adding']['per_second'] / c['control']['per_second']:.2f}",
            f"{c['adding']['seconds']:.1f}",
            f"{c['publish_to_live_ms']:.0f}",
            f"{c['publish_to_rebuilt_ms']:.0f}",
        )
        for i, c in enumerate(doc["cycles"])
    ]
    columns = ["cycle", "baseline q/s", "adding q/s", "control q/s", "adding/baseline", "adding/control",
               "window s", "live ms", "folded ms"]  # fmt: skip
    settings = doc["settings"]
    title = (
        f"query throughput while adding {settings['added']:,} routes to a {settings['routes']:,}-route table"
    )
    console.print(table(title, columns, rows))
    e = doc["errors"]
    console.print(
        f"adding/baseline {doc['throughput_ratio']:.3f}, control/baseline {doc['control_ratio']:.3f}, "
        f"adding/control {doc['throughput_ratio_vs_control']:.3f} (target >= {TARGET_RATIO}); "
        f"DLQ {e['dlq_records']}, duplicates {e['duplicate_intents']}, "
        f"error lines {len(e['worker_error_lines'])}, exit {e['worker_exit_code']}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--routes", type=int, default=10_000, help="routes in the table before adding")
    parser.add_argument("--added", type=int, default=1_000, help="routes added per cycle")
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--window", type=float, default=15.0, help="shortest window, seconds")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument(
        "--backlog-rate", type=float, default=400.0, help="queries produced per expected second"
    )
    parser.add_argument("--background-nice", type=int, default=10, help="the worker's background_nice")
    parser.add_argument("--embed-on-replica", action="store_true", help="publish routes without vectors")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    doc = asyncio.run(measure(args))
    report(doc)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(doc, indent=2, default=str))
    console.print(f"saved {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
