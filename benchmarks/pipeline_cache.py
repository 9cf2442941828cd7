"""Repeated queries through a real worker: the Redis embedding cache and the decision memo.

    flock /work/.bench.lock .venv/bin/python benchmarks/pipeline_cache.py [--quick]

A 10,000-route table (5 real routes embedded by the replica, the rest shipped with vectors made
for this model) is published to the mutation log first. Measured in one run, same model and batch
size: the raw encoder; a backlog of distinct queries (sustained) and latency at half that load;
a Zipf workload (80% repeats over 1,000 texts) without any cache; with the Redis cache and the
in-process decision memo (the defaults), cold then warm; with the warm Redis cache alone. Writes
benchmarks/results/pipeline_cache.json. (benchmarks/pipeline.py measures real texts.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipeline_kit import (
    BATCH,
    PER_ROUTE,
    IntentReader,
    backlog,
    create_topics,
    machine,
    paced,
    prepare_store,
    produce_all,
    raw_encoder,
    run_worker_phase,
    synthetic_routes,
    topic_names,
    unique_texts,
    versions,
    worker_env,
    zipf_workload,
)

from worker.cli.console import console, table
from worker.config import load_settings
from worker.contracts import encode
from worker.embedding import EncoderPool
from worker.embedding.model import resolve_model
from worker.local.broker import LocalBroker
from worker.local.process import free_port
from worker.local.redis import LocalRedis

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "pipeline_cache.json"


async def main(args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(42)
    settings = load_settings()
    model = resolve_model(settings)
    pool = await asyncio.to_thread(EncoderPool, model, 1, settings.encoder_max_pending,
                                   batch_size=BATCH)  # fmt: skip
    workdir = Path(tempfile.mkdtemp(prefix="routeworker-bench-"))
    store = workdir / "store.sqlite3"
    out: dict[str, Any] = {"raw_encoder": []}
    with LocalBroker() as broker, LocalRedis() as redis:
        bootstrap = broker.bootstrap
        mutations = "route-mutations-bench"
        nocache, cached = topic_names("nocache", mutations), topic_names("cache", mutations)
        await create_topics(bootstrap, nocache, args.partitions)
        await create_topics(bootstrap, {**cached, "mutations": "unused-mutations"}, args.partitions)
        routes = await asyncio.to_thread(synthetic_routes, args.routes, pool, rng)
        await produce_all(bootstrap, mutations, [(d.name.encode(), encode(d)) for d in routes])
        console.print(f"published {len(routes)} routes; first replay and index build")
        env = worker_env(bootstrap, nocache, store, local_cache_size=0)
        out["replica_first_start_s"] = await prepare_store(env, workdir / "prepare.log")
        built = re.search(r"rebuilt (\w+) route index: .*", (workdir / "prepare.log").read_text())
        out["route_index"] = built.group(0) if built else "unknown"
        console.print("measuring the raw encoder")
        out["raw_encoder"].append(await raw_encoder(pool, unique_texts(args.raw_texts, "raw-")))

        async def nocache_steps(reader: IntentReader) -> dict[str, Any]:
            console.print("sustained throughput (distinct queries, no cache)")
            topic, port = nocache["queries"], int(env["ROUTEWORKER_HEALTH_PORT"])
            sustained = await backlog(bootstrap, topic, reader, unique_texts(args.backlog, "u-"), "u", port)
            console.print(f"  {sustained['per_second']}/s; latency at 50% of it")
            latency = await paced(bootstrap, topic, reader, sustained["per_second"] / 2, args.seconds, port)
            console.print("Zipf workload, no cache")
            zipf = await backlog(bootstrap, topic, reader, zipf_workload(args.zipf, rng, "a"), "za", port)
            return {"sustained": sustained, "latency_at_half_load": latency, "zipf_no_cache": zipf}

        env = worker_env(bootstrap, nocache, store, local_cache_size=0, health_port=free_port())
        log = workdir / "nocache.log"
        out["no_cache"] = await run_worker_phase(bootstrap, nocache, env, log, nocache_steps)
        out["raw_encoder"].append(await raw_encoder(pool, unique_texts(args.raw_texts, "raw2-")))

        async def cache_steps(reader: IntentReader) -> dict[str, Any]:
            console.print("Zipf workload, Redis cache: empty at start, then warm")
            port = int(env["ROUTEWORKER_HEALTH_PORT"])
            first = zipf_workload(args.zipf, np.random.default_rng(7), "b")
            cold = await backlog(bootstrap, cached["queries"], reader, first, "zb", port)
            again = zipf_workload(args.zipf, np.random.default_rng(8), "c")  # new fresh 20%
            warm = await backlog(bootstrap, cached["queries"], reader, again, "zc", port)
            return {"zipf_redis_cache_cold": cold, "zipf_redis_cache_warm": warm}

        env = worker_env(bootstrap, cached, store, redis_url=redis.url, health_port=free_port())
        out["cache"] = await run_worker_phase(bootstrap, cached, env, workdir / "cache.log", cache_steps)

        async def redis_only_steps(reader: IntentReader) -> dict[str, Any]:
            console.print("Zipf workload, warm Redis cache alone (no in-process decision memo)")
            port = int(env["ROUTEWORKER_HEALTH_PORT"])
            texts = zipf_workload(args.zipf, np.random.default_rng(9), "d")
            return {
                "zipf_redis_only_warm": await backlog(bootstrap, alone["queries"], reader, texts, "zd", port)
            }

        alone = topic_names("redis-only", mutations)
        await create_topics(bootstrap, {**alone, "mutations": "unused-mutations-2"}, args.partitions)
        env = worker_env(
            bootstrap, alone, store, redis_url=redis.url, local_cache_size=0, health_port=free_port()
        )
        log = workdir / "redis-only.log"
        out["redis_only"] = await run_worker_phase(bootstrap, alone, env, log, redis_only_steps)
        out["raw_encoder"].append(await raw_encoder(pool, unique_texts(args.raw_texts, "raw3-")))
    await asyncio.to_thread(pool.close)
    out["worker_logs"] = str(workdir)
    return out


def verdicts(out: dict[str, Any]) -> dict[str, Any]:
    raw = max(r["per_second"] for r in out["raw_encoder"])
    sustained = out["no_cache"]["sustained"]["per_second"]
    p99 = out["no_cache"]["latency_at_half_load"]["produce_to_intent_ms"]["p99"]
    zipf_plain = out["no_cache"]["zipf_no_cache"]["per_second"]
    zipf_cached = out["cache"]["zipf_redis_cache_warm"]["per_second"]
    return {
        "sustained_vs_raw_encoder": {"ratio": round(sustained / raw, 3), "target": 0.9,
                                     "met": sustained >= 0.9 * raw, "raw_encoder_per_second": raw},
        "p99_at_half_load_ms": {"value": p99, "target": 50, "met": p99 <= 50},
        "cache_speedup_on_zipf": {"ratio": round(zipf_cached / zipf_plain, 2), "target": 3.0,
                                  "met": zipf_cached >= 3 * zipf_plain},
        "redis_alone_speedup_on_zipf": {
            "ratio": round(out["redis_only"]["zipf_redis_only_warm"]["per_second"] / zipf_plain, 2)
        },
    }  # fmt: skip


def report(doc: dict[str, Any]) -> None:
    out, verdict = doc["results"], doc["verdicts"]
    lat = out["no_cache"]["latency_at_half_load"]
    raw = verdict["sustained_vs_raw_encoder"]["raw_encoder_per_second"]
    rows = [
        ("raw encoder (texts/s, best run)", raw, ", ".join(str(r["per_second"]) for r in out["raw_encoder"])),
        ("pipeline sustained (queries/s)", out["no_cache"]["sustained"]["per_second"],
         f"{verdict['sustained_vs_raw_encoder']['ratio']:.0%} of raw (target 90%)"),
        (f"p99 produce->intent at {lat['offered_per_second']}/s (ms)", lat["produce_to_intent_ms"]["p99"],
         f"p50 {lat['produce_to_intent_ms']['p50']} (target p99 <= 50)"),
        ("p99 produce->downstream consumer (ms)", lat["produce_to_consumer_ms"]["p99"], "includes its fetch"),
        ("Zipf, no cache (queries/s)", out["no_cache"]["zipf_no_cache"]["per_second"], ""),
        ("Zipf, Redis cache cold (queries/s)", out["cache"]["zipf_redis_cache_cold"]["per_second"],
         "cache empty at start"),
        ("Zipf, Redis cache warm (queries/s)", out["cache"]["zipf_redis_cache_warm"]["per_second"],
         f"x{verdict['cache_speedup_on_zipf']['ratio']} of no cache (target x3)"),
        ("Zipf, Redis alone, no memo (q/s)", out["redis_only"]["zipf_redis_only_warm"]["per_second"],
         f"x{verdict['redis_alone_speedup_on_zipf']['ratio']} of no cache"),
    ]  # fmt: skip
    console.print(table("pipeline benchmark", ["measure", "value", "note"], rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--routes", type=int, default=10_000)
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--backlog", type=int, default=6_000, help="distinct queries of the throughput run")
    parser.add_argument("--zipf", type=int, default=8_000, help="queries of each Zipf run")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the latency run")
    parser.add_argument("--raw-texts", type=int, default=2_048)
    parser.add_argument("--quick", action="store_true", help="small runs, to check the benchmark itself")
    parser.add_argument("--output", type=Path, default=RESULTS)
    options = parser.parse_args()
    if options.quick:
        options.backlog, options.zipf, options.seconds, options.raw_texts = 1_500, 2_000, 8.0, 640
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results = asyncio.run(main(options))
    defaults = load_settings()
    settings = {
        "routes": options.routes,
        "utterances_per_route": PER_ROUTE,
        "batch_size": BATCH,
        "batch_wait_ms": defaults.batch_wait_ms,
        "encoder_threads": defaults.encoder_threads,
        "partitions": options.partitions,
        "max_in_flight_batches": defaults.max_in_flight_batches,
        "kafka_fetch_max_wait_ms": 5,
        "backlog": options.backlog,
        "zipf_queries": options.zipf,
        "latency_seconds": options.seconds,
        "model": resolve_model(defaults).name,
        "variant": defaults.model_variant,
    }
    document = {"machine": machine(), "versions": versions(), "settings": settings, "results": results,
                "verdicts": verdicts(results)}  # fmt: skip
    options.output.parent.mkdir(parents=True, exist_ok=True)
    options.output.write_text(json.dumps(document, indent=2) + "\n")
    report(document)
    console.print(f"written to {options.output}")
