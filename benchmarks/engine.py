"""Routing-engine benchmark: search vs embedding time, HNSW recall, mutation latency, cold start.

    python benchmarks/engine.py                # sizes 1k, 10k, 50k, 250k vectors
    python benchmarks/engine.py --sizes 1000 10000 --no-cold-start

Writes a table to stdout and every figure (with the machine and library versions) to
benchmarks/results/engine.json. Vectors are synthetic, clustered unit vectors of dimension 384
(routes of 5 utterances around topic centres); the encoder is the real exported model when present.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from worker.config import Settings
from worker.embedding.model import ModelNotPreparedError, resolve_model
from worker.routing import (
    EncoderPool,
    IndexSettings,
    Route,
    Router,
    RouteStore,
    RouteTable,
    RouteVectors,
    ScoringConfig,
    l2_normalise,
)

DIM = 384
PER_ROUTE = 5
FP = "synthetic@bench:0"
QUERIES = [
    f"{verb} my {thing} please"
    for verb in ("cancel", "check", "update", "show")
    for thing in (
        "order from last week",
        "account balance",
        "flight to paris",
        "gym membership",
        "credit card limit",
        "delivery address",
        "subscription plan",
        "insurance claim",
    )
]


def synthetic(vectors: int, rng: np.random.Generator) -> tuple[list[RouteVectors], np.ndarray]:
    """Routes of PER_ROUTE utterances around topic centres, and utterance-like queries."""
    routes = vectors // PER_ROUTE
    topics = l2_normalise(rng.normal(size=(max(routes // 20, 1), DIM)))
    centres = l2_normalise(topics[rng.integers(0, topics.shape[0], routes)] + 0.6 * _noise(rng, routes))
    points = l2_normalise(np.repeat(centres, PER_ROUTE, axis=0) + 0.5 * _noise(rng, routes * PER_ROUTE))
    empty = np.zeros((0, DIM), dtype=np.float32)
    made = [
        RouteVectors(
            Route(f"route-{i:06d}", tuple(f"u{j}" for j in range(PER_ROUTE))),
            points[i * PER_ROUTE : (i + 1) * PER_ROUTE],
            empty,
            FP,
        )
        for i in range(routes)
    ]
    queries = l2_normalise(centres[rng.integers(0, routes, 256)] + 0.5 * _noise(rng, 256))
    return made, queries


def _noise(rng: np.random.Generator, n: int) -> np.ndarray:
    noise: np.ndarray = (rng.normal(size=(n, DIM)) / np.sqrt(DIM)).astype(np.float32)
    return noise


def timed(action: Callable[[], object], repeat: int) -> dict[str, float]:
    """Median / p95 / max wall time in milliseconds."""
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return {
        "median_ms": statistics.median(samples),
        "p95_ms": samples[int(0.95 * (len(samples) - 1))],
        "max_ms": samples[-1],
    }


def encoder_figures(repeat: int) -> dict[str, Any]:
    """Time the real encoder (one session, one thread) on the 32-query batch."""
    try:
        spec = resolve_model(Settings())
    except ModelNotPreparedError as error:
        return {"available": False, "reason": str(error)}
    with EncoderPool(spec.path, spec.name) as pool:
        pool.embed_sync(QUERIES)
        figures = timed(lambda: pool.embed_sync(QUERIES), repeat)
        return {"available": True, "fingerprint": pool.fingerprint, "batch": len(QUERIES), **figures}


def recall_at_10(table: RouteTable, routes: list[RouteVectors], queries: np.ndarray) -> float:
    main = table.snapshot().main
    exact = faiss.IndexFlatIP(DIM)
    exact.add(np.concatenate([rv.utterance_vectors for rv in sorted(routes, key=lambda rv: rv.name)]))
    _, truth = exact.search(queries, 10)
    _, found = main.index.search(queries, 10)
    return float(np.mean([len(np.intersect1d(t, f)) / 10 for t, f in zip(truth, found, strict=True)]))


class SearchLoad:
    """Two threads deciding batches back to back, recording each decision's wall time."""

    def __init__(self, router: Router, queries: np.ndarray) -> None:
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._router, self._queries = router, queries
        self._threads = [threading.Thread(target=self._run) for _ in range(2)]

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            self._router.decide(self._queries, 5)
            self.latencies.append((time.perf_counter() - started) * 1000)

    def __enter__(self) -> SearchLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def summary(self) -> dict[str, float]:
        ordered = sorted(self.latencies)
        return {
            "searches": len(ordered),
            "median_ms": statistics.median(ordered),
            "p99_ms": ordered[int(0.99 * (len(ordered) - 1))],
            "max_ms": ordered[-1],
        }


def mutation_figures(
    table: RouteTable,
    router: Router,
    queries: np.ndarray,
    rng: np.random.Generator,
    mutations: int,
    with_rebuild: bool,
) -> dict[str, Any]:
    """Search latency under the same two-thread load without and with mutations (and a rebuild)."""
    with SearchLoad(router, queries) as idle:
        time.sleep(0.02 * mutations)
    applies, visible = [], []
    names = table.route_names()
    step = dict(table.version).get(0, 0)
    probe = Router(table, ScoringConfig(default_threshold=0.0, aggregation="max"))
    with SearchLoad(router, queries) as mutating:
        for i in range(mutations):
            name = names[int(rng.integers(0, len(names)))]
            vectors = l2_normalise(rng.normal(size=(PER_ROUTE, DIM)))
            route = RouteVectors(
                Route(name, tuple(f"m{i}-{j}" for j in range(PER_ROUTE))),
                vectors,
                np.zeros((0, DIM), dtype=np.float32),
                FP,
            )
            step += 1
            started = time.perf_counter()
            table.apply([route], [], ((0, step),), rebuild=False)
            returned = time.perf_counter()
            # The first search started after apply returned must already answer with the new vectors.
            decision = probe.decide(vectors[:1], 1)[0]
            visible.append((time.perf_counter() - returned) * 1000)
            applies.append((returned - started) * 1000)
            assert decision.route == name, decision
            assert decision.routes_version == ((0, step),), decision
            time.sleep(0.01)
    figures: dict[str, Any] = {
        "mutations": mutations,
        "apply_ms_median": statistics.median(applies),
        "apply_ms_max": max(applies),
        "visible_by_first_search_after_return_ms_max": max(visible),
        "search_idle_load": idle.summary(),
        "search_while_mutating": mutating.summary(),
    }
    if with_rebuild:
        with SearchLoad(router, queries) as rebuilding:
            started = time.perf_counter()
            table.rebuild(block=False)
            table.wait_for_rebuild()
            figures["rebuild_s"] = time.perf_counter() - started
        figures["search_while_rebuilding"] = rebuilding.summary()
    return figures


def cold_start(store_path: Path, index_dir: Path, settings: IndexSettings, repeat: int) -> dict[str, Any]:
    """Store load + table from the persisted index, as a restarting replica does."""
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        state = RouteStore(store_path).load()
        loaded = time.perf_counter()
        table = RouteTable.from_routes(state.routes, state.version, DIM, FP, settings, index_dir)
        done = time.perf_counter()
        assert table.snapshot().overlay.rows == 0, "persisted index was not reused"
        runs.append({"store_load_s": loaded - started, "index_s": done - loaded, "total_s": done - started})
    return {"runs": runs, "best_total_s": min(r["total_s"] for r in runs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 50_000, 250_000])
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--mutations", type=int, default=50)
    parser.add_argument("--no-cold-start", action="store_true")
    parser.add_argument("--no-rebuild", action="store_true", help="skip the rebuild under load")
    parser.add_argument("--approximate-above", type=int, default=None, help="override IndexSettings")
    parser.add_argument(
        "--omp-threads", type=int, default=None, help="faiss OpenMP threads (default: faiss's)"
    )
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "engine.json")
    args = parser.parse_args()
    if args.omp_threads is not None:
        faiss.omp_set_num_threads(args.omp_threads)
    rng = np.random.default_rng(7)
    settings = IndexSettings()
    if args.approximate_above is not None:
        settings = IndexSettings(approximate_above=args.approximate_above)
    config = ScoringConfig()
    results: dict[str, Any] = {
        "machine": {
            "cpu": _cpu_model(),
            "cpus": _cpu_count(),
            "python": sys.version.split()[0],
            "numpy": np.__version__,
            "faiss": faiss.__version__,
            "faiss_omp_threads": faiss.omp_get_max_threads(),
            "load_average_at_start": os.getloadavg(),
            "platform": platform.platform(),
        },
        "settings": {
            "index": settings.__dict__,
            "scoring": config.__dict__,
            "dim": DIM,
            "per_route": PER_ROUTE,
            "batch": 32,
        },
        "encoder": encoder_figures(max(args.repeat // 3, 5)),
        "sizes": {},
    }
    encode_ms = results["encoder"].get("median_ms")
    for size in args.sizes:
        routes, queries = synthetic(size, rng)
        batch = queries[:32]
        with tempfile.TemporaryDirectory() as scratch:
            store_path, index_dir = Path(scratch) / "routes.db", Path(scratch) / "index"
            RouteStore(store_path).apply(routes, [], {0: len(routes)})
            started = time.perf_counter()
            table = RouteTable.from_routes(routes, ((0, len(routes)),), DIM, FP, settings, index_dir)
            figures: dict[str, Any] = {
                "routes": len(routes),
                "kind": table.snapshot().main.kind,
                "build_s": time.perf_counter() - started,
            }
            router = Router(table, config)
            snapshot = table.snapshot()
            figures["search_32"] = timed(
                functools.partial(snapshot.search, batch, config.search_k), args.repeat
            )
            figures["decide_32"] = timed(functools.partial(router.decide, batch, 5), args.repeat)
            if encode_ms:
                figures["decide_to_encode_ratio"] = figures["decide_32"]["median_ms"] / encode_ms
            if figures["kind"] == "hnsw":
                figures["recall_at_10"] = recall_at_10(table, routes, queries[:200])
            if not args.no_cold_start and size == max(args.sizes):
                figures["cold_start"] = cold_start(store_path, index_dir, settings, 3)
            if size == max(args.sizes):
                figures["mutations"] = mutation_figures(
                    table, router, batch, rng, args.mutations, not args.no_rebuild
                )
        results["sizes"][str(size)] = figures
        _report(size, figures, encode_ms)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2, default=str))
    print(f"saved {args.output}")


def _report(size: int, f: dict[str, Any], encode_ms: float | None) -> None:
    nan = float("nan")
    ratio = f.get("decide_to_encode_ratio", nan)
    print(
        f"{size:>8} vectors {f['kind']:>5}  build {f['build_s']:7.2f}s  search32 "
        f"{f['search_32']['median_ms']:7.2f} ms  decide32 {f['decide_32']['median_ms']:7.2f} ms  "
        f"encode32 {encode_ms or nan:7.2f} ms  ratio {ratio:.3f}  recall@10 {f.get('recall_at_10', nan):.4f}"
    )
    if "cold_start" in f:
        print(f"         cold start from store + persisted index: {f['cold_start']['runs']}")
    if "mutations" in f:
        print(f"         mutations: {json.dumps(f['mutations'], default=str)}")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _cpu_count() -> int | None:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


if __name__ == "__main__":
    main()
