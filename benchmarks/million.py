"""Million-vector tables: a replica joining a log of 200,000 routes x 5 shipped vectors, restarting,
and deciding 32 real queries against that table (issue 16, part 4).

    python benchmarks/million.py                       # 200k routes x 5 (1M vectors of 384 dims)
    python benchmarks/million.py --routes 20000        # a quick run while developing
    python benchmarks/million.py --republish           # publish the log again (new topic)
    python benchmarks/million.py --only restart --output /tmp/restart.json
                                                       # the restart alone, on a full run's store

1. Publish (once): ``--routes`` routes of 5 utterances to a private Apache Kafka (LocalKafka, one
   KRaft node) whose log directory persists in ``--workdir`` between runs, each record a full
   ``RouteDefinition`` with ``ShippedEmbeddings`` of the real model's fingerprint and dimension
   (what `routes apply --with-embeddings` publishes). The vectors are synthetic, made without the
   encoder: each route has a centre drawn near a random mix of real MiniLM vectors (the model
   reference set), so the table sits where real text embeddings do, and its utterances are unit
   vectors scattered around that centre.
2. Fresh join, in a child process (its RSS is the replica's alone): the real model is loaded, a
   replica with an empty store replays the log until ``ready``, then its main index is built;
   time to ready, with where it went (fetch, decode, store write, table install), and to the index.
3. Restart, in another child: the same store and persisted index, nothing to replay.
4. In both children, after the index is built: search + decide of 32 real Banking77 test queries
   against encoding the same 32 queries with the real model (fp32, one session, one intra-op
   thread), alternated in the same process; recall@10 of the index on those queries against
   exact search; peak and current RSS.

Writes benchmarks/results/million.json (machine, versions, settings, every figure); the README's
block ``million-table`` is rendered from it (``python benchmarks/readme.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from datasets import banking77
from machine import machine_info

from worker.config import Settings, load_settings
from worker.contracts import RouteDefinition, RouteMutation, ShippedEmbeddings

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "million.json"
DATASETS = ROOT.parent / "shared" / "datasets"
REFERENCE = ROOT.parent / "shared" / "model-reference" / "minilm-l6-v2-fp32-vectors.npy"
DEFAULT_WORKDIR = (
    Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "routeworker" / "bench-million"
)
QUERIES = 32
#: routes generated and published per step (keeps the publisher's memory small)
_CHUNK = 5_000

logger = logging.getLogger("million")


# ---------------------------------------------------------------------------------------------
# synthetic routes with shipped vectors


def route_vectors(start: int, count: int, per_route: int, dim: int, basis: np.ndarray) -> np.ndarray:
    """Unit vectors of routes ``start .. start+count``: clustered per route, deterministic per chunk."""
    rng = np.random.default_rng(start + 1)
    mix = rng.dirichlet(np.full(3, 0.7), size=count)
    picks = rng.integers(0, basis.shape[0], size=(count, 3))
    centres = np.einsum("rk,rkd->rd", mix, basis[picks]) + rng.normal(scale=0.04, size=(count, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    spread = rng.normal(scale=0.025, size=(count, per_route, dim))
    vectors = centres[:, None, :] + spread
    vectors /= np.linalg.norm(vectors, axis=2, keepdims=True)
    return vectors.astype(np.float32)


def definitions(start: int, count: int, per_route: int, fingerprint: str, dim: int, basis: np.ndarray
                ) -> Iterator[RouteDefinition]:  # fmt: skip
    """Definitions as a publisher with ``--with-embeddings`` makes them (the first of each chunk is
    validated; the others are built without validation, which took longer than publishing)."""
    vectors = route_vectors(start, count, per_route, dim, basis)
    for i in range(count):
        index = start + i
        shipped = ShippedEmbeddings.model_construct(
            fingerprint=fingerprint,
            dim=dim,
            utterances=ShippedEmbeddings.encode_matrix(vectors[i]),
            negative_utterances="",
        )
        definition = RouteDefinition.model_construct(
            name=f"route-{index:07d}",
            utterances=[f"route {index} example {j}: how do I do {index % 997}" for j in range(per_route)],
            negative_utterances=[],
            threshold=None,
            metadata={"team": f"team-{index % 40}"},
            embeddings=shipped,
        )  # fmt: skip
        if i == 0:
            RouteDefinition.model_validate(definition.model_dump())
        yield definition


def settings_for(bootstrap: str, topic: str, store: Path) -> Settings:
    return load_settings(kafka_bootstrap=bootstrap, topic_mutations=topic, store_path=store)


async def log_records(settings: Settings) -> int:
    from worker.replication.log import MutationLog

    async with MutationLog.opened(settings) as log:
        return sum(log.ends.values()) - sum(log.starts.values())


async def publish(
    settings: Settings, routes: int, per_route: int, fingerprint: str, dim: int
) -> dict[str, Any]:
    from worker.replication import MutationPublisher, TopicSpec, ensure_topics

    await ensure_topics(settings, [TopicSpec(settings.topic_mutations, 3, {"cleanup.policy": "compact"})])
    basis = np.load(REFERENCE)
    started = time.perf_counter()
    generating = 0.0
    async with MutationPublisher(settings) as publisher:
        for start in range(0, routes, _CHUNK):
            began = time.perf_counter()
            chunk = list(definitions(start, min(_CHUNK, routes - start), per_route, fingerprint, dim, basis))
            generating += time.perf_counter() - began
            await publisher.publish([RouteMutation(d.name, d) for d in chunk])
            print(f"  published {start + len(chunk):,} / {routes:,}", flush=True)
    total = time.perf_counter() - started
    return {"publish_s": total, "generate_s": generating, "records": routes}


# ---------------------------------------------------------------------------------------------
# the replica, in a child process


def rss_now_mb(field: str = "VmRSS") -> float:
    """This process's resident memory now (``RssAnon``: its own heap; ``RssFile``: mapped files,
    e.g. the index, whose pages are the page cache's and reclaimable)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def rss_split() -> dict[str, float]:
    return {"rss": rss_now_mb(), "anon": rss_now_mb("RssAnon"), "file": rss_now_mb("RssFile"),
            **mapped_rss_mb()}  # fmt: skip


def mapped_rss_mb() -> dict[str, float]:
    """Resident pages of the mapped index files (``.faiss``) and vectors files (``.vectors``), from
    /proc/self/smaps: the part of ``RssFile`` that is the route table's."""
    out = {"index_files": 0.0, "vectors_files": 0.0}
    kind = None
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            first = line.split(maxsplit=1)[0]
            if "-" in first and not first.endswith(":"):  # a mapping's header line
                path = line.split()[-1]
                kind = "index_files" if path.endswith(".faiss") else "vectors_files" if path.endswith(
                    ".vectors") else None  # fmt: skip
            elif first == "Rss:" and kind is not None:
                out[kind] += int(line.split()[1]) / 1024
    return out


def cpu_seconds() -> dict[str, Any]:
    """This process's CPU seconds so far (user, system) and per thread (by name), from /proc:
    the steps overlap in threads, so their wall times say little about the work they did."""
    times = os.times()
    import threading

    names = {t.native_id: t.name for t in threading.enumerate()}
    threads: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError):
            name = names.get(int(task.name)) or (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            threads[name] = threads.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    # children: the processes reaped so far (a fresh replay's decode processes, the index build)
    return {"user": round(times.user, 2), "system": round(times.system, 2),
            "children_user": round(times.children_user, 2),
            "children_system": round(times.children_system, 2),
            "threads": {k: round(v, 2) for k, v in sorted(threads.items())}}  # fmt: skip


def rss_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Timers:
    """Seconds spent in the replica's steps, summed over calls (steps overlap in threads; a fetch
    includes its wait for the broker's answer)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def wrap(self, owner: Any, name: str, label: str, *, coroutine: bool = False) -> None:
        original = getattr(owner, name)

        def add(elapsed: float) -> None:
            self.seconds[label] = self.seconds.get(label, 0.0) + elapsed
            self.calls[label] = self.calls.get(label, 0) + 1

        if coroutine:

            async def timed_async(*args: Any, **kwargs: Any) -> Any:
                began = time.perf_counter()
                try:
                    return await original(*args, **kwargs)
                finally:
                    add(time.perf_counter() - began)

            setattr(owner, name, timed_async)
        else:

            def timed(*args: Any, **kwargs: Any) -> Any:
                began = time.perf_counter()
                try:
                    return original(*args, **kwargs)
                finally:
                    add(time.perf_counter() - began)

            setattr(owner, name, timed)

    def as_dict(self) -> dict[str, Any]:
        return {label: {"s": round(s, 3), "calls": self.calls[label]} for label, s in self.seconds.items()}


def exact_top(snapshot: Any, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k route names' rows per query over the main index's routes, in slices (little memory)."""
    import faiss

    routes = snapshot.main.slot_routes
    best_sims = np.full((queries.shape[0], 0), -np.inf, dtype=np.float32)
    best_rows = np.zeros((queries.shape[0], 0), dtype=np.int64)
    row = 0
    for start in range(0, len(routes), 20_000):
        part = np.concatenate([rv.utterance_vectors for rv in routes[start : start + 20_000]])
        sims, rows = faiss.knn(queries, part, k, metric=faiss.METRIC_INNER_PRODUCT)
        best_sims = np.concatenate([best_sims, sims], axis=1)
        best_rows = np.concatenate([best_rows, rows + row], axis=1)
        order = np.argsort(-best_sims, axis=1, kind="stable")[:, :k]
        best_sims = np.take_along_axis(best_sims, order, axis=1)
        best_rows = np.take_along_axis(best_rows, order, axis=1)
        row += part.shape[0]
    return best_rows


def index_shape(main: Any) -> dict[str, Any]:
    """Lists and list codes of an IVF main index (what a search scans)."""
    if main.kind != "ivf" or main.index is None:
        return {}
    from worker.routing.index import codes_label
    from worker.routing.native import faiss

    return {"lists": int(faiss.extract_index_ivf(main.index).nlist), "codes": codes_label(main.index)}


def measure_search(replica: Any, pool: Any, texts: list[str], rounds: int) -> dict[str, Any]:
    """Search + decide of ``texts`` against encoding them, alternated; recall@10 of the main index."""
    from worker.routing import Router

    router = Router(replica.table)
    vectors = pool.embed_sync(texts)  # warm-up of the session
    router.decide(vectors, 3)
    encode_ms, decide_ms, search_ms = [], [], []
    for _ in range(rounds):
        began = time.perf_counter()
        vectors = pool.embed_sync(texts)
        encode_ms.append((time.perf_counter() - began) * 1e3)
        began = time.perf_counter()
        router.decide(vectors, 3)
        decide_ms.append((time.perf_counter() - began) * 1e3)
        snapshot = replica.table.snapshot()
        began = time.perf_counter()
        snapshot.search(vectors, 10)
        search_ms.append((time.perf_counter() - began) * 1e3)
    snapshot = replica.table.snapshot()
    main = snapshot.main
    out: dict[str, Any] = {
        "queries": len(texts),
        "rounds": rounds,
        "encode_ms": statistics.median(encode_ms),
        "decide_ms": statistics.median(decide_ms),
        "search_only_ms": statistics.median(search_ms),
        "decide_over_encode": statistics.median(d / e for d, e in zip(decide_ms, encode_ms, strict=True)),
        "encode_ms_all": [round(v, 2) for v in encode_ms],
        "decide_ms_all": [round(v, 2) for v in decide_ms],
        "index": {
            "kind": main.kind,
            "rows": main.rows,
            "probe_lists": main.probe_lists,
            "overlay_rows": snapshot.overlay.rows,
            **index_shape(main),
        },
    }
    # the replica's memory while serving, before this benchmark's exact search adds its own
    out["rss_mb_serving"] = {**rss_split(), "peak": rss_peak_mb()}
    if main.index is not None and snapshot.overlay.rows == 0:
        exact = exact_top(snapshot, vectors, 10)
        _, found = main.search_rows(vectors, 10)
        hits = [len(set(e.tolist()) & set(f.tolist())) / 10 for e, f in zip(exact, found, strict=True)]
        out["recall_at_10"] = float(np.mean(hits))
    return out


async def replica_phase(args: argparse.Namespace) -> dict[str, Any]:
    from worker.embedding.pool import encoder_pool
    from worker.replication import RouteReplica
    from worker.replication import replica as replica_module
    from worker.replication.decoder import ReplayDecoder
    from worker.replication.log import MutationLog
    from worker.routing import store as store_module

    settings = settings_for(args.bootstrap, args.topic, Path(args.store))
    timers = Timers()
    timers.wrap(MutationLog, "next_batch", "fetch", coroutine=True)
    timers.wrap(RouteReplica, "_prepare", "decode")
    # a large fresh replay decodes in a process of its own: the replica waits for each batch there
    timers.wrap(ReplayDecoder, "answer", "decode_process")
    timers.wrap(store_module.RouteStore, "apply", "store_write")
    timers.wrap(store_module.RouteStore, "load", "store_load")
    timers.wrap(RouteReplica, "_install_pending", "table_install", coroutine=True)
    timers.wrap(replica_module.RouteTable, "from_routes", "table_from_store")
    # a fresh replay's store writes, held until ready (nothing to do for a restart)
    timers.wrap(RouteReplica, "_store_held", "store_after_ready", coroutine=True)
    rss_before_model = rss_now_mb()
    began = time.perf_counter()
    pool = await asyncio.to_thread(encoder_pool, settings.model_copy(update={"encoder_threads": 1}))
    model_s = time.perf_counter() - began
    rss_model = rss_now_mb()
    replica = RouteReplica(settings, pool)
    began = time.perf_counter()
    await replica.open()
    opened = time.perf_counter()
    runner = asyncio.create_task(replica.run())
    ready_wait = asyncio.ensure_future(replica.ready.wait())
    await asyncio.wait({runner, ready_wait}, timeout=args.timeout, return_when=asyncio.FIRST_COMPLETED)
    if runner.done():
        runner.result()  # the replica failed before it was ready: its error, at once
    if not replica.ready.is_set():
        raise TimeoutError(f"replica not ready within {args.timeout} s")
    ready = time.perf_counter()
    cpu_ready = cpu_seconds()
    rss_ready = rss_split()
    # until ready: afterwards the tailing fetches (long polls of an idle log) would add up here
    breakdown = timers.as_dict()
    table = replica.table
    texts = args.queries
    right_after = {}
    snapshot = table.snapshot()
    if snapshot.overlay.rows:
        from worker.routing import Router

        vectors = await asyncio.to_thread(pool.embed_sync, texts)
        t = time.perf_counter()
        await asyncio.to_thread(Router(table).decide, vectors, 3)
        right_after = {"decide_ms": (time.perf_counter() - t) * 1e3, "overlay_rows": snapshot.overlay.rows}
    # the main index: built in the background after a fresh join (none was persisted yet)
    while table.snapshot().overlay.rows and time.perf_counter() - began < args.timeout:
        await asyncio.to_thread(table.wait_for_rebuild, 1.0)
        if table.last_rebuild_error is not None:
            raise RuntimeError(f"index rebuild failed: {table.last_rebuild_error}")
    indexed = time.perf_counter()
    await asyncio.sleep(0.2)  # the manifest is written just after the swap
    rss_indexed = rss_split()
    search = await asyncio.to_thread(measure_search, replica, pool, texts, args.rounds)
    rss_end = rss_split()
    await replica.stop()
    await runner
    pool.close()
    return {
        "model_load_s": model_s,
        # from ready until the store held the whole replay (it ran beside the searches above)
        "store_caught_up_after_ready_s": timers.seconds.get("store_after_ready", 0.0),
        "open_s": opened - began,
        "ready_s": ready - began,
        "index_ready_s": indexed - began,
        "routes_in_table": len(table),
        "breakdown_s": breakdown,
        "cpu_s_at_ready": cpu_ready,
        "stats": replica.stats.as_dict(),
        "decide_right_after_ready": right_after,
        "search": search,
        "rss_mb": {
            "before_model": rss_before_model,
            "model_loaded": rss_model,
            "at_ready": rss_ready,
            "index_built": rss_indexed,
            "after_search": rss_end,
            "peak": rss_peak_mb(),
            "peak_serving": search["rss_mb_serving"]["peak"],
            # the index build process (a child of the replica: its own memory, gone after the build)
            "build_process_peak": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        },
    }


def run_child(args: argparse.Namespace, phase: str, topic: str, bootstrap: str, store: Path,
              queries: list[str]) -> dict[str, Any]:  # fmt: skip
    spec = {"topic": topic, "bootstrap": bootstrap, "store": str(store), "queries": queries,
            "rounds": args.rounds, "timeout": args.timeout}  # fmt: skip
    out = store.with_name(f"{phase}-result.json")
    out.unlink(missing_ok=True)
    command = [sys.executable, __file__, "--child", json.dumps(spec), "--child-output", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    log = store.with_name(f"{phase}.log")
    with open(log, "w") as sink:
        code = subprocess.run(command, env=env, stdout=sink, stderr=subprocess.STDOUT, check=False).returncode
    if code != 0:
        raise RuntimeError(f"{phase} replica failed ({code}); see {log}:\n" + log.read_text()[-3000:])
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def child_main(spec_json: str, output: Path) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    spec = json.loads(spec_json)
    args = argparse.Namespace(**spec)
    result = asyncio.run(replica_phase(args))
    output.write_text(json.dumps(result, indent=1))


# ---------------------------------------------------------------------------------------------


def real_queries(count: int) -> list[str]:
    texts = banking77(DATASETS).test.texts
    rng = np.random.default_rng(16)
    return [texts[i] for i in rng.choice(len(texts), size=count, replace=False)]


def model_identity() -> tuple[str, int, dict[str, Any]]:
    from worker.embedding.pool import encoder_pool

    settings = load_settings()
    pool = encoder_pool(settings.model_copy(update={"encoder_threads": 1}))
    try:
        return pool.fingerprint, pool.dim, {"name": settings.model_name, "variant": settings.model_variant}
    finally:
        pool.close()


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--routes", type=int, default=200_000)
    parser.add_argument("--per-route", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=15, help="search/encode rounds, alternated")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--republish", action="store_true", help="publish to a new topic")
    parser.add_argument(
        "--only",
        choices=("restart",),
        help="restart: only the restart phase, on the store and persisted index a previous full run "
        "left in --workdir (kept, not replaced); the JSON then has no fresh section",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-output", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args.child, args.child_output)
        return 0
    if args.only and args.output == RESULTS:
        parser.error("--only writes a partial result: give it an --output other than " + str(RESULTS))
    logging.basicConfig(level=logging.WARNING)
    from worker.local.kafka import LocalKafka

    fingerprint, dim, model = model_identity()
    queries = real_queries(QUERIES)
    args.workdir.mkdir(parents=True, exist_ok=True)
    model_tag = re.sub(r"[^A-Za-z0-9._-]", "-", fingerprint.split("@")[-1])[:40]
    topic = f"million-{args.routes}x{args.per_route}-{model_tag}"
    marker = args.workdir / f"{topic}.published.json"
    results: dict[str, Any] = {
        "machine": machine_info(),
        "load_average_start": load_average(),
        "settings": {
            "routes": args.routes,
            "per_route": args.per_route,
            "vectors": args.routes * args.per_route,
            "dim": dim,
            "rounds": args.rounds,
            "queries": QUERIES,
            "topic_partitions": 3,
            "broker": "Apache Kafka (worker.local LocalKafka, one KRaft node, log dir kept)",
        },
        "model": {**model, "fingerprint": fingerprint},
    }
    kafka = LocalKafka(
        workdir=args.workdir / "kafka", port=int(os.environ.get("MILLION_KAFKA_PORT", "39092"))
    )
    with contextlib.ExitStack() as stack:
        kafka.start()
        stack.callback(kafka.stop)
        settings = settings_for(kafka.bootstrap, topic, args.workdir / "unused.db")
        have = asyncio.run(log_records(settings)) if marker.exists() and not args.republish else 0
        if have < args.routes:
            print(f"publishing {args.routes:,} routes to {topic}", flush=True)
            published = asyncio.run(publish(settings, args.routes, args.per_route, fingerprint, dim))
            marker.write_text(json.dumps(published))
            published["this_run"] = True
        else:
            published = json.loads(marker.read_text()) | {"this_run": False}
        results["publish"] = published
        store = args.workdir / f"replica-{args.routes}" / "routes.sqlite3"
        phases: tuple[str, ...] = ("fresh", "restart")
        if args.only == "restart":
            if not (store.exists() and (store.parent / "routes.sqlite3.index" / "main-index.json").exists()):
                raise SystemExit(f"--only restart needs the store and index of a full run in {store.parent}")
            phases = ("restart",)
        else:
            store.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(store.parent, ignore_errors=True)  # a fresh replica: empty store, no index
            store.parent.mkdir(parents=True)
        results["phases"] = list(phases)
        for phase in phases:
            print(f"{phase} replica ...", flush=True)
            results[phase] = run_child(args, phase, topic, kafka.bootstrap, store, queries)
            print_phase(phase, results[phase])
    results["load_average_end"] = load_average()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.output}")
    return 0


def print_phase(phase: str, figures: dict[str, Any]) -> None:
    search = figures["search"]
    print(f"  {phase}: ready {figures['ready_s']:.2f} s, index {figures['index_ready_s']:.2f} s; "
          f"decide(32) {search['decide_ms']:.1f} ms vs encode(32) {search['encode_ms']:.1f} ms = "
          f"{search['decide_over_encode']:.3f}; recall@10 {search.get('recall_at_10')}; "
          f"peak RSS serving {figures['rss_mb']['peak_serving']:.0f} MB", flush=True)  # fmt: skip
    print(f"    breakdown {figures['breakdown_s']}", flush=True)
    print(f"    cpu at ready {figures.get('cpu_s_at_ready')}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
