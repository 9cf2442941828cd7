"""IVF list codes side by side on a 1M-vector table: build time, search ms of 32 queries, recall@10.

    python benchmarks/ivf_codes.py                      # 200k routes x 5 (1M vectors), every factory
    python benchmarks/ivf_codes.py --routes 20000 --factories 'IVF512,SQfp16'
    python benchmarks/ivf_codes.py --k 32 --shortlists 64,128 --factories '...;...'  # decide's 32

The table is benchmarks/million.py's synthetic routes (route centres near mixes of real MiniLM
vectors, utterances scattered around them); the queries are real Banking77 test texts embedded with
the real model (cached in ~/.cache/routeworker/bench-vectors), the first 32 being million.py's.
Each factory is built the way the replica builds (one faiss thread, k-means on faiss's seeded
sample, 10 iterations), then searched with one thread at a grid of probed lists and shortlist
widths through ``worker.routing.index.shortlist`` (what ``MainIndex.search_rows`` asks faiss: a
"Refine" index first ranks ``pq_candidates`` x the shortlist of PQ candidates by its second codes),
and the shortlist is re-scored exactly from the float32 vectors. So what differs between codes is
the time to find the shortlist and how often it misses a true neighbour. Recall is measured on the
real queries (``recall_32``: million.py's 32, ``recall_all``: 256) and leave-one-out on 256 stored
vectors (``recall_loo``: what a build's ``calibrate_probes`` sees). Writes
benchmarks/results/ivf_codes.json.

Earlier runs, not in the default grid: IVF1024,PQ192x4fs built in 24.8 s and ranked no better than
512 lists; IVF512,PQ384x4fsr (one dimension a code) ranked as well as float16 but took 66 s to
build (its PQ encoding).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from datasets import banking77
from machine import machine_info
from million import DATASETS, REFERENCE, real_queries, route_vectors

from worker.routing.index import shortlist

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "ivf_codes.json"
VECTOR_CACHE = (
    Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "routeworker" / "bench-vectors"
)
FACTORIES = (
    "IVF512,SQfp16",
    "IVF512,SQ8",
    "IVF512,PQ96x4fs",
    "IVF512,PQ192x4fs",
    "IVF512,PQ192x4fsr",
    "IVF512,PQ192x4fsr,Refine(SQ8)",
    "IVF512,PQ192x4fsr,Refine(SQfp16)",
)
PROBES = (8, 11, 16, 23, 32)
#: rows re-scored exactly per query (a "Refine" index ranks ``pq_candidates`` x as many PQ
#: candidates by its second codes first); 26 and 64 are the shortlists of 10 and 32 neighbours
SHORTLISTS = (26, 64, 128, 256)
K = 10


def table(routes: int, per_route: int, dim: int) -> np.ndarray:
    basis = np.load(REFERENCE)
    out = np.empty((routes * per_route, dim), dtype=np.float32)
    for start in range(0, routes, 5_000):
        count = min(5_000, routes - start)
        out[start * per_route : (start + count) * per_route] = route_vectors(
            start, count, per_route, dim, basis
        ).reshape(-1, dim)
    return out


def real_query_vectors(extra: int) -> tuple[np.ndarray, np.ndarray]:
    """million.py's 32 queries and ``extra`` more Banking77 test texts, embedded by the real model."""
    from vectors import VectorCache

    from worker.config import load_settings
    from worker.embedding.pool import encoder_pool

    texts = banking77(DATASETS).test.texts
    first = real_queries(32)
    rest = [t for t in np.random.default_rng(17).permutation(texts).tolist() if t not in set(first)][:extra]
    pool = encoder_pool(load_settings().model_copy(update={"encoder_threads": 1}))
    try:
        cache = VectorCache(pool, VECTOR_CACHE)
        return cache.embed(first, "banking77-million"), cache.embed(rest, "banking77-million-extra")
    finally:
        pool.close()


def build(factory: str, vectors: np.ndarray, faiss: Any) -> tuple[Any, float]:
    rows, dim = vectors.shape
    began = time.perf_counter()
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.extract_index_ivf(index)
    ivf.cp.max_points_per_centroid = 16
    ivf.cp.min_points_per_centroid = 1
    ivf.cp.niter = 10
    index.train(vectors)  # as worker.routing.build_child.new_index: faiss samples (seeded)
    for start in range(0, rows, 16_384):
        index.add(np.ascontiguousarray(vectors[start : start + 16_384]))
    return index, time.perf_counter() - began


def rescored(
    index: Any, vectors: np.ndarray, queries: np.ndarray, probes: int, wide: int, k: int
) -> tuple[np.ndarray, float, float]:
    began = time.perf_counter()
    _, rows = shortlist(index, queries, wide, probes)  # what MainIndex.search_rows asks faiss
    found = time.perf_counter()
    exact = np.einsum("qd,qsd->qs", queries, vectors[np.maximum(rows, 0)])
    exact = np.where(rows >= 0, exact, -np.inf)
    best = np.argsort(-exact, axis=1, kind="stable")[:, :k]
    out = np.take_along_axis(rows, best, axis=1)
    return out, (found - began) * 1e3, (time.perf_counter() - found) * 1e3


def recall(truth: np.ndarray, found: np.ndarray) -> float:
    return float(np.mean([np.intersect1d(t, f).size / t.size for t, f in zip(truth, found, strict=True)]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--routes", type=int, default=200_000)
    parser.add_argument("--per-route", type=int, default=5)
    parser.add_argument("--factories", default=";".join(FACTORIES), help="';'-separated")
    parser.add_argument("--extra-queries", type=int, default=480)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--k", type=int, default=K, help="neighbours kept (the decide path asks 32)")
    parser.add_argument("--probes", default=",".join(map(str, PROBES)))
    parser.add_argument("--shortlists", default=",".join(map(str, SHORTLISTS)))
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    import faiss

    faiss.omp_set_num_threads(1)
    load_start = [round(v, 2) for v in os.getloadavg()]
    queries, extra = real_query_vectors(args.extra_queries)
    vectors = table(args.routes, args.per_route, queries.shape[1])
    everything = np.concatenate([queries, extra])
    k = args.k
    _, truth = faiss.knn(everything, vectors, k, metric=faiss.METRIC_INNER_PRODUCT)
    loo_rows = np.sort(np.random.default_rng(0).choice(vectors.shape[0], 256, replace=False))
    loo_queries = np.ascontiguousarray(vectors[loo_rows])
    _, loo_exact = faiss.knn(loo_queries, vectors, k + 1, metric=faiss.METRIC_INNER_PRODUCT)
    loo_truth = np.array(
        [[r for r in row if r != own][:k] for row, own in zip(loo_exact, loo_rows, strict=True)]
    )
    results: list[dict[str, Any]] = []
    for factory in args.factories.split(";"):
        index, build_s = build(factory, vectors, faiss)
        code_bytes = int(faiss.extract_index_ivf(index).code_size)
        entry: dict[str, Any] = {"factory": factory, "build_s": round(build_s, 2), "code_bytes": code_bytes}
        entry["grid"] = []
        print(f"{factory}: build {build_s:.1f} s", flush=True)
        for probes in map(int, args.probes.split(",")):
            for wide in map(int, args.shortlists.split(",")):
                times, rescore = [], []
                for _ in range(args.rounds):
                    _, search_ms, rescore_ms = rescored(index, vectors, queries, probes, wide, k)
                    times.append(search_ms)
                    rescore.append(rescore_ms)
                found, _, _ = rescored(index, vectors, everything, probes, wide, k)
                loo_found, _, _ = rescored(index, vectors, loo_queries, probes, wide, k + 1)
                loo_answers = np.array([[r for r in row if r != own][:k]
                                        for row, own in zip(loo_found, loo_rows, strict=True)])  # fmt: skip
                point = {
                    "probes": probes,
                    "shortlist": wide,
                    "search_ms": round(statistics.median(times), 2),
                    "rescore_ms": round(statistics.median(rescore), 2),
                    "recall_32": round(recall(truth[:32], found[:32]), 4),
                    "recall_all": round(recall(truth, found), 4),
                    "recall_loo": round(recall(loo_truth, loo_answers), 4),
                }
                entry["grid"].append(point)
                print(f"  {point}", flush=True)
        results.append(entry)
        del index
    out = {
        "machine": machine_info(),
        "load_average": [load_start, [round(v, 2) for v in os.getloadavg()]],
        "settings": {
            "routes": args.routes,
            "per_route": args.per_route,
            "queries": 32,
            "recall_queries": int(everything.shape[0]),
            "k": k,
            "command": sys.argv[1:],
            "rounds": args.rounds,
            "faiss_threads": 1,
            "kmeans": "10 iterations, 16 rows per list (faiss's seeded sample)",
        },
        "factories": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
