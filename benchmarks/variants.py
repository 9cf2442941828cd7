"""Routing accuracy of the int8 export against fp32: the gate for serving int8 by default.

    flock /work/.bench.lock .venv/bin/python benchmarks/variants.py \
        [--datasets ../shared/datasets] [--out benchmarks/results] [--seeds 0 1 2]

Each variant embeds every text through the encoder pool (so int8 vectors are the ones a replica
serves); vectors are cached per fingerprint (benchmarks/vectors.py). Protocols, on Banking77 and
CLINC150 (benchmarks/datasets.py): ``full`` (every train row is a route utterance) and
``10/route`` (10 utterances per route drawn per seed, the few-shot case most route owners have;
the figure is the mean over seeds). Routers: nearest utterance, uncalibrated, and what a worker
serves (the self-fit calibration `routeworker routes apply` publishes). Nothing is fitted on test
rows.

The gate: int8 may be served by default only if the served router's accuracy stays within
``GATE_POINTS`` of fp32 on every dataset and protocol. Writes ``variants.json``.
:func:`compare_variants` is the entry point other benchmarks (accuracy.py) can call.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from datasets import Dataset, Split, banking77, clinc150
from machine import machine_info
from metrics import report
from rich.console import Console
from rich.table import Table
from vectors import VectorCache

from worker.config import load_settings
from worker.embedding import EncoderPool, resolve_model
from worker.routing import Route, Router, RouteTable, RouteVectors, ScoringConfig, SelfFitConfig, self_fit

REPO = Path(__file__).resolve().parents[1]
GATE_POINTS = 0.3
VARIANTS = ("fp32", "int8")
ROUTERS = ("nearest utterance", "uncalibrated (threshold 0.5, no head)", "served (self-fit, no labels)")
console = Console(width=150)


def per_route_rows(labels: Sequence[str | None], count: int, seed: int) -> list[int]:
    """``count`` rows of every label (all of a smaller label), drawn reproducibly, in row order."""
    by_label: dict[str | None, list[int]] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(label, []).append(i)
    rng = np.random.default_rng(seed)
    taken: list[int] = []
    for label in sorted(by_label, key=str):
        rows = by_label[label]
        taken += [rows[i] for i in rng.permutation(len(rows))[:count]]
    return sorted(taken)


def route_table(split: Split, vectors: np.ndarray, fingerprint: str) -> RouteTable:
    rows: dict[str, list[int]] = {}
    for i, label in enumerate(split.labels):
        assert label is not None
        rows.setdefault(label, []).append(i)
    empty = np.zeros((0, vectors.shape[1]), np.float32)
    routes = [
        RouteVectors(Route(name, tuple(split.texts[i] for i in idx)), vectors[idx], empty, fingerprint)
        for name, idx in sorted(rows.items())
    ]
    return RouteTable.from_routes(routes, (), vectors.shape[1], fingerprint)


def router_accuracy(
    routes: Split, route_vectors: np.ndarray, test: Split, test_vectors: np.ndarray, fingerprint: str
) -> dict[str, float]:
    """Test accuracy of each router over these routes (no match is a class, as in accuracy.py).

    Served: the self-fit calibration (thresholds and learned head, from the route utterances alone)
    that `routeworker routes apply` publishes and every worker serves.
    """
    table = route_table(routes, route_vectors, fingerprint)
    nearest = np.argmax(test_vectors @ route_vectors.T, axis=1)
    served = self_fit(list(table.snapshot().routes()), ScoringConfig(), SelfFitConfig())
    predictions = {
        ROUTERS[0]: [routes.labels[i] for i in nearest],
        ROUTERS[1]: [d.route for d in Router(table, calibrated=False).decide(test_vectors, 1)],
        ROUTERS[2]: [d.route for d in Router(table, calibration=served).decide(test_vectors, 1)],
    }
    return {name: float(report(p, test.labels)["accuracy"]) for name, p in predictions.items()}


def dataset_accuracy(
    ds: Dataset, cache: VectorCache, fingerprint: str, seeds: Sequence[int]
) -> dict[str, Any]:
    """Per protocol, per router: accuracy (10/route: mean over seeds, and each seed)."""
    routes = cache.embed(ds.routes.texts, f"{ds.name}-routes")
    test = cache.embed(ds.test.texts, f"{ds.name}-test")
    full = router_accuracy(ds.routes, routes, ds.test, test, fingerprint)
    by_seed = {}
    for seed in seeds:
        rows = per_route_rows(ds.routes.labels, 10, seed)
        by_seed[str(seed)] = router_accuracy(ds.routes.take(rows), routes[rows], ds.test, test, fingerprint)
    mean = {r: float(np.mean([figures[r] for figures in by_seed.values()])) for r in ROUTERS}
    return {"full": full, "10/route": mean, "10/route by seed": by_seed}


def compare_variants(
    datasets: Path, variants: Sequence[str] = VARIANTS, seeds: Sequence[int] = (0, 1, 2)
) -> dict[str, Any]:
    """Accuracy of every variant on both datasets and protocols, the deltas to fp32, the gate."""
    loaded = [banking77(datasets), clinc150(datasets)]
    figures: dict[str, Any] = {}
    fingerprints: dict[str, str] = {}
    for variant in variants:
        settings = load_settings(model_variant=variant)
        encoder = EncoderPool(resolve_model(settings), pool_size=1)
        fingerprints[variant] = encoder.fingerprint
        cache = VectorCache(encoder, settings.cache_dir / "bench-vectors")
        figures[variant] = {ds.name: dataset_accuracy(ds, cache, encoder.fingerprint, seeds) for ds in loaded}
        encoder.close()
    deltas: dict[str, Any] = {}
    passed = True
    for variant in variants:
        if variant == "fp32":
            continue
        deltas[variant] = {}
        for ds in loaded:
            for protocol in ("full", "10/route"):
                ours, base = figures[variant][ds.name][protocol], figures["fp32"][ds.name][protocol]
                points = {r: round(100 * (ours[r] - base[r]), 3) for r in ROUTERS}
                deltas[variant][f"{ds.name} {protocol}"] = points
                passed &= abs(points[ROUTERS[2]]) <= GATE_POINTS
    return {
        "fingerprints": fingerprints,
        "accuracy": figures,
        "delta_points_vs_fp32": deltas,
        "gate": {
            "rule": f"served router within {GATE_POINTS} points of fp32 on every dataset and protocol",
            "passed": passed,
        },
        "protocols": {
            "full": "routes = every train row (Banking77 10,003; CLINC150 in-scope 15,000)",
            "10/route": f"10 train rows per route, numpy seeds {list(seeds)}, accuracy averaged",
            "test": "Banking77 test (3,080); CLINC150 test + oos_test (5,500, oos = no match)",
        },
        "checksums": {name: sha for ds in loaded for name, sha in ds.checksums.items()},
    }


def render(result: dict[str, Any]) -> Table:
    table = Table(title=f"routing accuracy by variant (gate: {result['gate']['rule']})")
    for column in ("dataset / protocol", "router", *result["accuracy"], "Δ points"):
        table.add_column(column, justify="left" if column in ("dataset / protocol", "router") else "right")
    variants = list(result["accuracy"])
    for key in result["delta_points_vs_fp32"].get("int8", {}):
        name, protocol = key.split(" ", 1)
        for router in ROUTERS:
            cells = [f"{100 * result['accuracy'][v][name][protocol][router]:.2f}" for v in variants]
            delta = result["delta_points_vs_fp32"]["int8"][key][router]
            table.add_row(key, router, *cells, f"{delta:+.2f}")
    return table


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    result = compare_variants(args.datasets, seeds=args.seeds)
    console.print(render(result))
    console.print(f"gate passed: {result['gate']['passed']}")
    doc = {
        "benchmark": "variants",
        "command": "python benchmarks/variants.py " + " ".join(sys.argv[1:]),
        "machine": machine_info(),
        **result,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "variants.json").write_text(json.dumps(doc, indent=2) + "\n")
    console.print(f"wrote {args.out / 'variants.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
