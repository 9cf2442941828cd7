"""Accuracy of routeworker's router vs semantic-router on Banking77 and CLINC150, same vectors.

    .venv/bin/python benchmarks/accuracy.py [--datasets ../shared/datasets] [--out benchmarks/results]

Every text is embedded once with routeworker's encoder (all-MiniLM-L6-v2 fp32 by default) and
both routers get the same vectors; semantic-router (PyPI, pinned) runs in its own virtualenv.
Writes ``accuracy.json`` (checksums, model, versions, machine, settings, every figure) and
``accuracy.md`` (the table).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from datasets import Dataset, Split, banking77, clinc150
from envs import run_semantic_router
from machine import machine_info
from metrics import report
from rich.console import Console
from rich.table import Table
from vectors import VectorCache

from worker.config import load_settings
from worker.embedding import EncoderPool
from worker.embedding.model import resolve_model
from worker.routing import Route, Router, RouteTable, RouteVectors, ScoringConfig, fit_thresholds
from worker.routing.fitting import FitMetrics, FittedThresholds, fit_head_weight
from worker.routing.head import HeadConfig, train_head

REPO = Path(__file__).resolve().parents[1]
console = Console(width=150)


def build_table(split: Split, vectors: np.ndarray, fingerprint: str) -> RouteTable:
    rows: dict[str, list[int]] = {}
    for i, label in enumerate(split.labels):
        assert label is not None
        rows.setdefault(label, []).append(i)
    routes = [
        RouteVectors(
            Route(name, tuple(split.texts[i] for i in idx)),
            vectors[idx],
            np.zeros((0, vectors.shape[1]), np.float32),
            fingerprint,
        )
        for name, idx in sorted(rows.items())
    ]
    return RouteTable.from_routes(routes, (), vectors.shape[1], fingerprint)


def predict(router: Router, vectors: np.ndarray) -> list[str | None]:
    return [d.route for d in router.decide(vectors, 1)]


def nearest_utterance(routes: Split, route_vecs: np.ndarray, test_vecs: np.ndarray) -> list[str | None]:
    """The plain baseline: the route of the single most similar utterance, no threshold."""
    best = np.argmax(test_vecs @ route_vecs.T, axis=1)
    return [routes.labels[i] for i in best]


def fit_figures(fitted: FittedThresholds) -> dict[str, object]:
    """What the fit chose and the fit-split figures it chose by (never test)."""

    def figures(m: FitMetrics | None) -> dict[str, float | int] | None:
        return asdict(m) if m is not None else None

    return {
        "default": fitted.default,
        "margin": fitted.margin,
        "per_route": len(fitted.per_route),
        "fit_split_before": figures(fitted.before),
        "fit_split_after_in_sample": figures(fitted.after),
        "fit_split_cross_validated": figures(fitted.cross_validated),
    }


def evaluate(ds: Dataset, cache: VectorCache, fingerprint: str, with_sr: bool) -> dict[str, object]:
    vec = {
        "routes": cache.embed(ds.routes.texts, f"{ds.name}-routes"),
        "fit": cache.embed(ds.fit.texts, f"{ds.name}-fit"),
        "test": cache.embed(ds.test.texts, f"{ds.name}-test"),
    }
    results: dict[str, dict[str, float | int]] = {}
    timings: dict[str, float] = {}
    results["nearest utterance (no threshold)"] = report(
        nearest_utterance(ds.routes, vec["routes"], vec["test"]), ds.test.labels
    )
    config = ScoringConfig()
    table = build_table(ds.routes, vec["routes"], fingerprint)
    results["routeworker (defaults)"] = report(predict(Router(table, config), vec["test"]), ds.test.labels)

    held = set(ds.held_out_route_rows)
    keep = [i for i in range(len(ds.routes)) if i not in held]
    fitting_table = build_table(ds.fitting_routes(), vec["routes"][keep], fingerprint)
    started = time.perf_counter()
    fitted = fit_thresholds(Router(fitting_table, config), vec["fit"], ds.fit.labels)
    timings["routeworker_fit_s"] = time.perf_counter() - started
    results["routeworker (fitted)"] = report(
        predict(Router(table, config, fitted), vec["test"]), ds.test.labels
    )
    # Head: trained on the fitting routes, weight + thresholds chosen on the fit split only; the
    # served head is then retrained (same settings) on all routes.
    head_config = HeadConfig()
    started = time.perf_counter()
    fitting_head = train_head(fitting_table.snapshot().routes(), head_config)
    timings["head_train_fitting_routes_s"] = time.perf_counter() - started
    started = time.perf_counter()
    head_router, head_fitted = fit_head_weight(
        Router(fitting_table, config, None, fitting_head), vec["fit"], ds.fit.labels
    )
    timings["head_fit_s"] = time.perf_counter() - started
    chosen_cv = head_fitted.cross_validated
    console.print(
        f"{ds.name}: head weight {head_router.config.head_weight:.2f} chosen on the fit split"
        + (f" (cross-validated accuracy {chosen_cv.accuracy:.4f})" if chosen_cv else "")
    )
    started = time.perf_counter()
    head = train_head(table.snapshot().routes(), head_config)
    timings["head_train_all_routes_s"] = time.perf_counter() - started
    results["routeworker (fitted + head)"] = report(
        predict(Router(table, head_router.config, head_fitted, head), vec["test"]), ds.test.labels
    )
    sr_info: dict[str, object] = {}
    if with_sr:
        with tempfile.TemporaryDirectory() as tmp:
            sr = run_semantic_router(ds, vec, Path(tmp))
        results["semantic-router (defaults)"] = report(sr["default"], ds.test.labels)
        results["semantic-router (own fit)"] = report(sr["fitted"], ds.test.labels)
        sr_info = {"version": sr["version"], "fit_report": sr["fit_report"], "seconds": sr["seconds"]}
    return {
        "protocol": ds.protocol,
        "checksums": ds.checksums,
        "results": results,
        "timings": timings,
        "fitted": fit_figures(fitted),
        "scoring_config": asdict(config),
        "head": {
            "config": asdict(head_config),
            "scoring_config": asdict(head_router.config),
            "chosen_head_weight": head_router.config.head_weight,
            "head_weight_selection": "highest 5-fold cross-validated accuracy on the fit split",
            "fit_split_cross_validated_by_weight": {
                f"{c.head_weight:.2f}": asdict(c.cross_validated) for c in head_fitted.head_weights
            },
            "fitted": fit_figures(head_fitted),
        },
        "semantic_router": sr_info,
    }


def render(all_results: dict[str, dict[str, object]]) -> tuple[Table, str]:
    cols = ["accuracy", "in_scope_accuracy", "oos_recall", "oos_precision", "macro_f1"]
    table = Table(title="routing accuracy (same vectors)")
    md = ["| dataset | router | " + " | ".join(cols) + " |", "|---|---|" + "---:|" * len(cols)]
    for name in ("dataset", "router", *cols):
        table.add_column(name, justify="left" if name in ("dataset", "router") else "right")
    for ds_name, body in all_results.items():
        results = body["results"]
        assert isinstance(results, dict)
        for router, figures in results.items():
            cells = [f"{figures[c]:.4f}" if c in figures else "" for c in cols]
            table.add_row(ds_name, router, *cells)
            md.append(f"| {ds_name} | {router} | " + " | ".join(cells) + " |")
    return table, "\n".join(md) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--no-semantic-router", action="store_true", help="skip the comparison")
    parser.add_argument("--only", choices=["banking77", "clinc150"], default=None)
    args = parser.parse_args()

    settings = load_settings()
    spec = resolve_model(settings)
    encoder = EncoderPool(spec, pool_size=1)
    cache = VectorCache(encoder, settings.cache_dir / "bench-vectors")
    loaders = {"banking77": lambda: banking77(args.datasets), "clinc150": lambda: clinc150(args.datasets)}
    results = {
        name: evaluate(load(), cache, encoder.fingerprint, not args.no_semantic_router)
        for name, load in loaders.items()
        if args.only in (None, name)
    }
    table, markdown = render(results)
    console.print(table)
    manifest = {
        "benchmark": "accuracy",
        "command": "python benchmarks/accuracy.py " + " ".join(sys.argv[1:]),
        "model": encoder.fingerprint,
        "machine": machine_info(),
        "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "unset (OpenBLAS default: one per CPU)"),
        "datasets": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "accuracy.json").write_text(json.dumps(manifest, indent=2, default=str))
    (args.out / "accuracy.md").write_text(markdown)
    console.print(f"wrote {args.out / 'accuracy.json'} and accuracy.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
