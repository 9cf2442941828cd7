"""Routing-engine benchmark: search vs embedding time, IVF recall, mutation latency, stalls, cold start.

    python benchmarks/engine.py --omp-threads 1      # sizes 1k, 10k, 50k, 250k vectors
    python benchmarks/engine.py --sizes 1000 10000 --no-cold-start --no-real

Writes a table to stdout and every figure (with the machine and library versions) to
benchmarks/results/engine.json. Vectors are synthetic, clustered unit vectors of dimension 384
(routes of 5 utterances around topic centres); the encoder is the real exported model when present.
Because that data is easy for an approximate index, recall is also measured on real MiniLM
vectors (Banking77 + CLINC150 route utterances, test texts as queries) when the datasets are there.

Definitions:

- ``decide_to_encode_ratio``: median time to search + decide a 32-query batch over the median time
  the encoder takes to embed those 32 texts (one session, one thread).
- ``recall_at_10``: share of the exact top-10 rows (flat inner product) that the main index's own
  search (``search_k`` rows, as the router asks) returns among its top 10; 256 queries.
- ``visible_ms``: from ``apply`` returning to the return of a one-query decision issued right
  after it (under a two-thread search load) that must already answer with the new route, i.e.
  an upper bound on how long a mutation takes to show; includes that decision's own time, whose
  distribution without a mutation before it is ``control_decision_ms``.
- stall: one thread decides 32-query batches back to back. A decision's ``wait`` is its wall time
  minus the CPU time its thread got meanwhile (time spent waiting for the GIL or a CPU). Its
  ``extra wait`` is that wait minus the median wait of the same load with nothing else going on
  (the baseline phase). Measured while mutations are applied and during a background rebuild.
  Of a wait, ``runqueue`` is time the thread was ready without a CPU, and ``beyond_host_steal``
  what is left after subtracting the hypervisor's steal time on the vCPUs the thread ran on (this
  VM's vCPUs are descheduled by its host for 10-100 ms now and then, more often when both are
  busy). ``control_other_cpu_busy``: the same load beside a process that only spins, in the idle
  class as the build process runs, for as long as the build took (at most 30 s).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from worker.config import Settings
from worker.embedding import EncoderPool
from worker.embedding.model import ModelNotPreparedError, resolve_model
from worker.routing import (
    IndexSettings,
    Route,
    Router,
    RouteStore,
    RouteTable,
    RouteVectors,
    ScoringConfig,
    build_process,
    builder,
    l2_normalise,
)
from worker.routing.builder import build_main
from worker.routing.calibration import LeaveOneOut
from worker.routing.index import MainIndex

DIM = 384
PER_ROUTE = 5
FP = "synthetic@bench:0"
PROBES = (4, 8, 16, 32, 64, 128)
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


def quantiles(values: list[float]) -> dict[str, float]:
    """Count, median, p99 and max of ``values`` (milliseconds)."""
    ordered = sorted(values)
    if not ordered:
        return {"count": 0}
    return {
        "count": len(ordered),
        "median_ms": statistics.median(ordered),
        "p99_ms": ordered[int(0.99 * (len(ordered) - 1))],
        "max_ms": ordered[-1],
    }


def encoder_figures(repeat: int) -> dict[str, Any]:
    """Time the real encoder (one session, one thread) on the 32-query batch."""
    try:
        spec = resolve_model(Settings())
    except ModelNotPreparedError as error:
        return {"available": False, "reason": str(error)}
    with EncoderPool(spec) as pool:
        pool.embed_sync(QUERIES)
        figures = timed(lambda: pool.embed_sync(QUERIES), repeat)
        return {"available": True, "fingerprint": pool.fingerprint, "batch": len(QUERIES), **figures}


def recall(main: MainIndex, exact_rows: np.ndarray, queries: np.ndarray, k: int, search_k: int) -> float:
    """Share of the exact top-``k`` rows found in the top ``k`` of a ``search_k``-row search."""
    _, found = main.search_rows(queries, search_k)
    hits = [len(np.intersect1d(t[:k], f[:k])) / k for t, f in zip(exact_rows, found, strict=True)]
    return float(np.mean(hits))


def exact_top(main: MainIndex, vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    exact = faiss.IndexFlatIP(main.dim)
    exact.add(vectors)
    _, rows = exact.search(queries, k)
    return rows


def recall_curve(
    main: MainIndex, vectors: np.ndarray, queries: np.ndarray, search_k: int, with_time: bool
) -> list[dict[str, float]]:
    """Recall@10 / @search_k (and search time of 32 queries) per number of probed lists."""
    truth = exact_top(main, vectors, queries, search_k)
    curve = []
    for probes in PROBES:
        variant = dataclasses.replace(main, probe_lists=probes)
        point = {
            "probe_lists": probes,
            "recall_at_10": recall(variant, truth, queries, 10, search_k),
            f"recall_at_{search_k}": recall(variant, truth, queries, search_k, search_k),
        }
        if with_time:
            batches = [queries[i : i + 32] for i in range(0, 256, 32)]
            point["search32_median_ms"] = statistics.median(
                timed(functools.partial(variant.search_rows, batch, search_k), 3)["median_ms"]
                for batch in batches
            )
        curve.append(point)
    return curve


def leave_one_out_curve(main: MainIndex, vectors: np.ndarray) -> list[dict[str, float]]:
    """Recall@10 per number of probed lists with stored vectors as queries, each left out of its
    own answer: what an IVF build calibrates on (``IndexSettings.recall_target``)."""
    sample = LeaveOneOut.of(vectors)
    assert sample is not None
    return [{"probe_lists": probes, "recall_at_10": sample.recall(main.index, probes)} for probes in PROBES]


def real_recall(settings: IndexSettings, search_k: int) -> dict[str, Any]:
    """Recall on real MiniLM vectors: Banking77 + CLINC150 route utterances, test texts as queries."""
    here = Path(__file__).resolve().parent
    sys.path.insert(0, str(here))
    from datasets import banking77, clinc150
    from vectors import VectorCache

    root = here.parents[1] / "shared" / "datasets"
    try:
        spec = resolve_model(Settings())
    except ModelNotPreparedError as error:
        return {"available": False, "reason": str(error)}
    if not root.is_dir():
        return {"available": False, "reason": f"no datasets in {root}"}
    with EncoderPool(spec) as pool:
        cache = VectorCache(pool, Settings().cache_dir / "bench-vectors")
        sets = [banking77(root), clinc150(root)]
        vectors = np.concatenate([cache.embed(ds.routes.texts, f"{ds.name}-routes") for ds in sets])
        tests = np.concatenate([cache.embed(ds.test.texts, f"{ds.name}-test") for ds in sets])
    queries = np.ascontiguousarray(tests[np.random.default_rng(0).choice(len(tests), 256, replace=False)])
    routes = [
        RouteVectors(Route(f"r{i:06d}", ("u",)), vectors[i : i + 1], np.zeros((0, DIM), np.float32), FP)
        for i in range(len(vectors))
    ]
    # Force the approximate index at this size: it is what large tables of such vectors get.
    forced = dataclasses.replace(settings, approximate_above=0)
    main = build_main(routes, DIM, forced)
    rows = np.concatenate([rv.utterance_vectors for rv in routes])
    truth = exact_top(main, rows, queries, search_k)
    hnsw = faiss.IndexHNSWFlat(DIM, 32, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = 80
    hnsw.add(rows)
    _, found = hnsw.search(queries, search_k, params=faiss.SearchParametersHNSW(efSearch=128))
    hnsw_recall = np.mean(
        [len(np.intersect1d(t[:10], f[:10])) / 10 for t, f in zip(truth, found, strict=True)]
    )
    return {
        "available": True,
        "vectors": int(main.rows),
        "lists": settings.lists_for(main.rows),
        "queries": len(queries),
        "calibrated_probe_lists": main.probe_lists,
        "calibrated_recall_at_10": recall(main, truth, queries, 10, search_k),
        "curve": recall_curve(main, rows, queries, search_k, with_time=True),
        "leave_one_out_curve": leave_one_out_curve(main, rows),
        "previous_hnsw_m32_ef128_recall_at_10": float(hnsw_recall),
    }


TICK_MS = 1000 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 10.0


def _steal_ticks() -> list[int]:
    """Per-CPU steal time (clock ticks): time the hypervisor ran something else on that vCPU."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return []
    return [int(line.split()[8]) for line in lines if line.startswith("cpu") and line[3].isdigit()]


def _thread_sched() -> tuple[int, float]:
    """The calling thread's last CPU and its run-queue delay so far (ms), from /proc (Linux)."""
    try:
        stat = Path("/proc/thread-self/stat").read_text()
        delay = Path("/proc/thread-self/schedstat").read_text().split()[1]
    except (OSError, IndexError):
        return -1, 0.0
    return int(stat.rsplit(")", 1)[1].split()[36]), int(delay) / 1e6


class SearchLoad:
    """Threads deciding batches back to back, recording each decision's wall time and wait.

    A decision's wait is its wall time minus the CPU time its thread got meanwhile. Of that wait,
    ``runqueue`` is time the thread was ready but had no CPU, and ``steal`` the hypervisor's steal
    time on the vCPUs it ran on (clock-tick resolution): this VM's vCPUs are themselves descheduled
    by the host now and then, for 10-100 ms, more often when both are busy.
    """

    def __init__(self, router: Router, queries: np.ndarray, threads: int = 2) -> None:
        self.latencies: list[float] = []
        self.waits: list[float] = []
        self.runqueue: list[float] = []
        self.steal: list[float] = []
        self.starts: list[float] = []
        self._stop = threading.Event()
        self._router, self._queries = router, queries
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self) -> None:
        while not self._stop.is_set():
            steal, (cpu_before, delay) = _steal_ticks(), _thread_sched()
            started, cpu = time.perf_counter(), time.thread_time()
            self._router.decide(self._queries, 5)
            wall = time.perf_counter() - started
            wait = max(wall - (time.thread_time() - cpu), 0.0) * 1000
            steal_after, (cpu_after, delay_after) = _steal_ticks(), _thread_sched()
            on = {c for c in (cpu_before, cpu_after) if 0 <= c < len(steal)}
            self.starts.append(started)
            self.latencies.append(wall * 1000)
            self.waits.append(wait)
            self.runqueue.append(delay_after - delay)
            self.steal.append(TICK_MS * sum(steal_after[c] - steal[c] for c in on) if steal_after else 0.0)

    def __enter__(self) -> SearchLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def summary(self) -> dict[str, Any]:
        return {**quantiles(self.latencies), "wait": quantiles(self.waits)}


def _mutation(name: str, i: int, rng: np.random.Generator) -> RouteVectors:
    vectors = l2_normalise(rng.normal(size=(PER_ROUTE, DIM)))
    route = Route(name, tuple(f"m{i}-{j}" for j in range(PER_ROUTE)))
    return RouteVectors(route, vectors, np.zeros((0, DIM), dtype=np.float32), FP)


def visibility_figures(
    table: RouteTable, router: Router, queries: np.ndarray, rng: np.random.Generator, mutations: int
) -> dict[str, Any]:
    """Apply time and time until a decision shows each mutation, under a two-thread search load."""
    with SearchLoad(router, queries) as idle:
        time.sleep(0.02 * mutations)
    applies, visible, control = [], [], []
    names = table.route_names()
    step = dict(table.version).get(0, 0)
    probe = Router(table, ScoringConfig(default_threshold=0.0, aggregation="max"))
    with SearchLoad(router, queries) as mutating:
        for i in range(mutations):
            name = names[int(rng.integers(0, len(names)))]
            route = _mutation(name, i, rng)
            # Control: the same one-query decision without a mutation before it.
            started = time.perf_counter()
            probe.decide(route.utterance_vectors[1:2], 1)
            control.append((time.perf_counter() - started) * 1000)
            step += 1
            started = time.perf_counter()
            table.apply([route], [], ((0, step),), rebuild=False)
            returned = time.perf_counter()
            # The first search started after apply returned must already answer with the new vectors.
            decision = probe.decide(route.utterance_vectors[:1], 1)[0]
            visible.append((time.perf_counter() - returned) * 1000)
            applies.append((returned - started) * 1000)
            assert decision.route == name, decision
            assert decision.routes_version == ((0, step),), decision
            time.sleep(0.01)
    return {
        "mutations": mutations,
        "apply_ms": quantiles(applies),
        "visible_ms": quantiles(visible),
        "control_decision_ms": quantiles(control),
        "search_idle_load": idle.summary(),
        "search_while_mutating": mutating.summary(),
    }


class SearchTimeline(SearchLoad):
    """One thread deciding batches back to back."""

    def __init__(self, router: Router, queries: np.ndarray) -> None:
        super().__init__(router, queries, threads=1)

    def extra_waits(self, base_wait: float, start: float = -np.inf, end: float = np.inf) -> list[float]:
        """Extra waits of the decisions that ran entirely within ``[start, end]``."""
        return [self.waits[i] - base_wait for i in self._within(start, end)]

    def stalls(self, base_wait: float, start: float = -np.inf, end: float = np.inf) -> dict[str, Any]:
        """Extra waits within ``[start, end]``, and how much of them the host's steal explains."""
        within = self._within(start, end)
        extra = [self.waits[i] - base_wait for i in within]
        return {
            **quantiles(extra),
            "over_5ms": sum(e > 5.0 for e in extra),
            "runqueue": quantiles([self.runqueue[i] for i in within]),
            "with_host_steal": sum(self.steal[i] > 0 for i in within),
            "beyond_host_steal": quantiles(
                [max(e - self.steal[i], 0.0) for e, i in zip(extra, within, strict=True)]
            ),
        }

    def _within(self, start: float, end: float) -> list[int]:
        return [
            i
            for i, (began, wall) in enumerate(zip(self.starts, self.latencies, strict=True))
            if began >= start and began + wall / 1000 <= end
        ]


@contextmanager
def child_windows() -> Iterator[list[tuple[float, float]]]:
    """Record when index build processes run (instrumentation only: the build is unchanged)."""
    windows: list[tuple[float, float]] = []
    original = builder.run_build_process

    def timed_run(job: Path, *args: Any) -> None:
        started = time.perf_counter()
        try:
            original(job, *args)
        finally:
            windows.append((started, time.perf_counter()))

    builder.run_build_process = timed_run
    try:
        yield windows
    finally:
        builder.run_build_process = original


def stall_figures(
    table: RouteTable,
    router: Router,
    queries: np.ndarray,
    rng: np.random.Generator,
    mutations: int,
    with_rebuild: bool,
) -> dict[str, Any]:
    """Extra wait of one searching thread while mutations are applied and during a rebuild."""
    with SearchTimeline(router, queries) as baseline:
        time.sleep(5.0)
    base_wait = statistics.median(baseline.waits)
    names = table.route_names()
    step = dict(table.version).get(0, 0)
    with SearchTimeline(router, queries) as mutating:
        for i in range(mutations):
            step += 1
            table.apply([_mutation(names[int(rng.integers(0, len(names)))], i, rng)], [], ((0, step),))
            time.sleep(0.02)
    figures: dict[str, Any] = {
        "definition": "one thread deciding 32-query batches back to back; wait = wall - thread CPU "
        "time of a decision; extra = wait - median wait of the baseline phase before; runqueue = "
        "time ready without a CPU; beyond_host_steal = extra minus the hypervisor's steal time on "
        "the vCPUs the thread ran on during the decision (10 ms ticks)",
        "baseline_wait_median_ms": base_wait,
        "baseline": baseline.stalls(base_wait),
        "while_mutating": {"mutations": mutations, **mutating.stalls(base_wait)},
    }
    if with_rebuild:
        with child_windows() as windows, SearchTimeline(router, queries) as rebuilding:
            started = time.perf_counter()
            table.rebuild(block=False)
            table.wait_for_rebuild()
            ended = time.perf_counter()
        assert table.last_rebuild_error is None, table.last_rebuild_error
        assert table.snapshot().overlay.rows == 0
        with SearchTimeline(router, queries) as after:
            time.sleep(5.0)
        (child_start, child_end) = windows[0] if windows else (ended, ended)
        figures["rebuild_s"] = ended - started
        figures["rebuild_child_s"] = child_end - child_start
        figures["while_rebuilding"] = rebuilding.stalls(base_wait, started, ended)
        # The rebuild's own thread works before and after the build process; the process runs alone.
        figures["while_rebuilding_by_step"] = {
            "gathering_and_writing_changes": rebuilding.stalls(base_wait, started, child_start),
            "build_process": rebuilding.stalls(base_wait, child_start, child_end),
            "loading_swapping_persisting": rebuilding.stalls(base_wait, child_end, ended),
        }
        figures["baseline_after"] = after.stalls(base_wait)
        # Control: the other vCPU kept busy as long by an idle-class process that only spins, to
        # separate what the rebuild does from what this VM does when both of its vCPUs are busy.
        with other_cpu_busy(), SearchTimeline(router, queries) as control:
            time.sleep(min(figures["rebuild_child_s"], 30.0))
        figures["control_other_cpu_busy"] = control.stalls(base_wait)
    return figures


@contextmanager
def other_cpu_busy() -> Iterator[None]:
    """A process spinning in the idle scheduling class (as the index build process runs)."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    build_process.set_idle(spinner.pid, True)
    try:
        yield
    finally:
        spinner.kill()
        spinner.wait()


def cold_start(store_path: Path, index_dir: Path, settings: IndexSettings, repeat: int) -> dict[str, Any]:
    """Store load + table from the persisted index, as a restarting replica does (warm page cache)."""
    runs = []
    batch = np.ascontiguousarray(l2_normalise(np.random.default_rng(1).normal(size=(32, DIM))))
    for _ in range(repeat):
        started = time.perf_counter()
        state = RouteStore(store_path).load()
        loaded = time.perf_counter()
        table = RouteTable.from_routes(state.routes, state.version, DIM, FP, settings, index_dir)
        done = time.perf_counter()
        assert table.snapshot().overlay.rows == 0, "persisted index was not reused"
        Router(table).decide(batch, 5)
        first = time.perf_counter()
        runs.append(
            {
                "store_load_s": loaded - started,
                "index_s": done - loaded,
                "total_s": done - started,
                "first_decide_ms": (first - done) * 1000,
            }
        )
        del state, table
    totals = [r["total_s"] for r in runs]
    return {"runs": runs, "best_total_s": min(totals), "worst_total_s": max(totals)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 50_000, 250_000])
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--mutations", type=int, default=50)
    parser.add_argument("--no-cold-start", action="store_true")
    parser.add_argument("--no-rebuild", action="store_true", help="skip the rebuild under load")
    parser.add_argument("--no-real", action="store_true", help="skip recall on real MiniLM vectors")
    parser.add_argument("--approximate-above", type=int, default=None, help="override IndexSettings")
    parser.add_argument("--probe-lists", type=int, default=None, help="override IndexSettings")
    parser.add_argument(
        "--omp-threads", type=int, default=None, help="faiss OpenMP threads (default: faiss's)"
    )
    parser.add_argument(
        "--switch-interval", type=float, default=None, help="sys.setswitchinterval (default: Python's)"
    )
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "engine.json")
    args = parser.parse_args()
    if args.omp_threads is not None:
        faiss.omp_set_num_threads(args.omp_threads)
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    rng = np.random.default_rng(7)
    settings = IndexSettings() if args.omp_threads is None else IndexSettings(faiss_threads=args.omp_threads)
    if args.approximate_above is not None:
        settings = dataclasses.replace(settings, approximate_above=args.approximate_above)
    if args.probe_lists is not None:
        settings = dataclasses.replace(settings, probe_lists=args.probe_lists)
    config = ScoringConfig()
    results: dict[str, Any] = {
        "command": "python benchmarks/engine.py " + " ".join(sys.argv[1:]),
        "machine": {
            "cpu": _cpu_model(),
            "cpus": _cpu_count(),
            "python": sys.version.split()[0],
            "numpy": np.__version__,
            "faiss": faiss.__version__,
            "faiss_omp_threads": faiss.omp_get_max_threads(),
            "gil_switch_interval_s": sys.getswitchinterval(),
            "load_average_at_start": os.getloadavg(),
            "platform": platform.platform(),
        },
        "settings": {
            "index": dataclasses.asdict(settings),
            "scoring": dataclasses.asdict(config),
            "dim": DIM,
            "per_route": PER_ROUTE,
            "batch": 32,
        },
        "definitions": __doc__.split("Definitions:", 1)[1].strip(),
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
            main_index = table.snapshot().main
            figures: dict[str, Any] = {
                "routes": len(routes),
                "kind": main_index.kind,
                "build_s": time.perf_counter() - started,
            }
            if main_index.kind == "ivf":
                figures["lists"] = int(faiss.extract_index_ivf(main_index.index).nlist)
                figures["calibrated_probe_lists"] = main_index.probe_lists
            router = Router(table, config)
            snapshot = table.snapshot()
            figures["search_32"] = timed(
                functools.partial(snapshot.search, batch, config.search_k), args.repeat
            )
            figures["decide_32"] = timed(functools.partial(router.decide, batch, 5), args.repeat)
            if encode_ms:
                figures["decide_to_encode_ratio"] = figures["decide_32"]["median_ms"] / encode_ms
            if main_index.kind == "ivf":
                vectors = np.concatenate(
                    [rv.utterance_vectors for rv in sorted(routes, key=lambda r: r.name)]
                )
                truth = exact_top(main_index, vectors, queries, config.search_k)
                figures["recall_at_10"] = recall(main_index, truth, queries, 10, config.search_k)
                figures["recall_curve"] = recall_curve(main_index, vectors, queries, config.search_k, True)
                del vectors
            if not args.no_cold_start and size == max(args.sizes):
                figures["cold_start"] = cold_start(store_path, index_dir, settings, 3)
            if size == max(args.sizes):
                figures["visibility"] = visibility_figures(table, router, batch, rng, args.mutations)
                figures["stall"] = stall_figures(
                    table, router, batch, rng, args.mutations, not args.no_rebuild
                )
        results["sizes"][str(size)] = figures
        _report(size, figures, encode_ms)
    if not args.no_real:
        results["real_vectors_recall"] = real_recall(settings, config.search_k)
        print(f"real MiniLM vectors: {json.dumps(results['real_vectors_recall'])}")
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
    for key in ("recall_curve", "cold_start", "visibility", "stall"):
        if key in f:
            print(f"         {key}: {json.dumps(f[key], default=str)}")


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
