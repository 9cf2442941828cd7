"""Start-up time of the private brokers: Apache Kafka (format + start until it answers) vs Tansu.

    flock /work/.bench.lock python benchmarks/broker_startup.py              # 5 runs of each
    flock /work/.bench.lock python benchmarks/broker_startup.py --runs 3 \\
        --java /usr/lib/jvm/temurin-25-jdk-amd64/bin/java --cluster --cold-resolution

Each Kafka run is a fresh LocalKafka: ``format`` (kafka-storage format in its own JVM) then
``start`` (the broker JVM until a Metadata request lists it), then a controlled stop. Every Java is
measured with and without its class archive (made first if missing). A Tansu run is a fresh
LocalBroker until its port accepts and a Metadata request answers. ``--cluster`` adds three-node
Kafka clusters; ``--cold-resolution`` resolves the jars into an empty cache from an empty local
Maven repository (downloads ~45 MB from Maven Central), then trains a class archive there.

Prints a table and writes every figure, with machine, Java and Kafka versions and the load
average (other work on the machine inflates the figures), to benchmarks/results/broker_startup.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import machine_info

from worker.local.broker import LocalBroker
from worker.local.java import find_java
from worker.local.kafka import DEFAULT_HEAP, KafkaNode, LocalKafka
from worker.local.kafka_cds import prepare_class_archive
from worker.local.kafka_dist import prepare_kafka
from worker.local.kafka_probe import metadata_brokers
from worker.local.kafka_runtime import KafkaRuntime, kafka_runtime

RESULTS = Path(__file__).parent / "results" / "broker_startup.json"


def _memory_kb(pid: int | None) -> dict[str, int]:
    """Resident and proportional set size: Pss splits the pages nodes share (the class archive)."""
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss"):
            out[key.lower() + "_kb"] = int(rest.split()[0])
    return out


def kafka_run(runtime: KafkaRuntime, nodes: int, use_archive: bool) -> dict[str, Any]:
    kafka = LocalKafka(nodes=nodes, runtime=runtime)
    try:
        for node in kafka.nodes:
            node.use_archive = use_archive
        began = time.perf_counter()
        with ThreadPoolExecutor(nodes) as pool:  # as LocalKafka.start formats: all nodes at once
            list(pool.map(KafkaNode.format, kafka.nodes))
        formatted = time.perf_counter()
        kafka.start()  # formatted already: launches every node and waits until each answers
        answered = time.perf_counter()
        memory = [_memory_kb(node.pid) for node in kafka.nodes]
        kafka.stop()
        stopped = time.perf_counter()
    finally:
        kafka.close()
    return {
        "format_s": formatted - began,
        "start_s": answered - formatted,
        "total_s": answered - began,
        "stop_s": stopped - answered,
        "memory_per_node": memory,
    }


def tansu_run() -> dict[str, Any]:
    began = time.perf_counter()
    broker = LocalBroker().start()
    try:
        listening = time.perf_counter()
        assert metadata_brokers(broker.bootstrap) is not None, "Tansu does not answer Metadata"
        answered = time.perf_counter()
    finally:
        broker.stop()
    return {"listening_s": listening - began, "total_s": answered - began}


def summary(runs: list[dict[str, Any]], key: str) -> dict[str, float]:
    values = [run[key] for run in runs]
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def cold_resolution() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="routeworker-cold-") as scratch:
        cache, m2 = Path(scratch) / "cache", Path(scratch) / "m2"
        began = time.perf_counter()
        dist = prepare_kafka(cache, mvn_args=[f"-Dmaven.repo.local={m2}"])
        resolved = time.perf_counter()
        runtime = KafkaRuntime(find_java(), dist)
        prepare_class_archive(runtime)
        trained = time.perf_counter()
        began_warm = time.perf_counter()
        prepare_kafka(cache)
        warm = time.perf_counter() - began_warm
        return {
            "resolve_empty_m2_and_cache_s": resolved - began,
            "train_class_archive_s": trained - resolved,
            "warm_prepare_s": warm,
            "jars": len(dist.jars()),
            "jar_bytes": dist.size_bytes(),
            "m2_bytes": sum(p.stat().st_size for p in m2.rglob("*") if p.is_file()),
        }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--java", type=Path, action="append", default=[], help="also measure this java")
    parser.add_argument("--cluster", action="store_true", help="also measure three-node clusters")
    parser.add_argument("--cold-resolution", action="store_true", help="resolve from an empty ~/.m2")
    args = parser.parse_args()
    load_start = os.getloadavg()

    began = time.perf_counter()
    default = kafka_runtime()
    warm_runtime_s = time.perf_counter() - began
    runtimes = [default] + [KafkaRuntime(find_java(path), default.distribution) for path in args.java]
    for runtime in runtimes:
        prepare_class_archive(runtime, progress=lambda line: print(line, file=sys.stderr))

    variants: dict[str, dict[str, Any]] = {}
    for runtime in runtimes:
        for nodes in (1, 3) if args.cluster else (1,):
            for use_archive in (True, False):
                name = f"kafka java{runtime.java.feature} {nodes} node{'s' * (nodes > 1)}" + (
                    " + class archive" if use_archive else ""
                )
                runs = [kafka_run(runtime, nodes, use_archive) for _ in range(args.runs)]
                variants[name] = {
                    "java": runtime.java.describe(),
                    "nodes": nodes,
                    "class_archive": use_archive,
                    "runs": runs,
                    **{key: summary(runs, key) for key in ("format_s", "start_s", "total_s", "stop_s")},
                }
                print(f"{name}: {variants[name]['total_s']['median']:.2f} s median", file=sys.stderr)
    tansu = [tansu_run() for _ in range(args.runs)]
    variants["tansu"] = {"runs": tansu, "total_s": summary(tansu, "total_s")}

    result: dict[str, Any] = {
        "benchmark": "broker_startup",
        "machine": machine_info(),
        "load_average_before": load_start,
        "load_average_after": os.getloadavg(),
        "kafka": default.distribution.version,
        "kafka_jars": len(default.distribution.jars()),
        "kafka_jar_bytes": default.distribution.size_bytes(),
        "java_default": default.java.describe(),
        "heap": DEFAULT_HEAP,
        "runs_per_variant": args.runs,
        "warm_prepare_s": warm_runtime_s,
        "variants": variants,
    }
    if args.cold_resolution:
        result["cold_resolution"] = cold_resolution()

    header = f"{'broker':<42} {'format s':>9} {'start s':>8} {'total s':>8} {'stop s':>7}"
    print(f"{header}  (median of {args.runs})")
    for name, variant in variants.items():
        cells = [variant.get(key, {}).get("median") for key in ("format_s", "start_s", "total_s", "stop_s")]
        shown = [f"{c:.2f}" if c is not None else "-" for c in cells]
        print(f"{name:<42} {shown[0]:>9} {shown[1]:>8} {shown[2]:>8} {shown[3]:>7}")
    if "cold_resolution" in result:
        cold = result["cold_resolution"]
        print(
            f"cold resolution (empty ~/.m2 and cache): {cold['resolve_empty_m2_and_cache_s']:.1f} s, "
            f"{cold['jars']} jars, {cold['jar_bytes'] / 1e6:.1f} MB; class archive training "
            f"{cold['train_class_archive_s']:.1f} s; warm prepare {cold['warm_prepare_s']:.2f} s"
        )
    print(f"load average before {load_start}, after {result['load_average_after']}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
