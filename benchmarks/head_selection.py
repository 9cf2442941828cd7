"""How the route head's training settings (``HeadConfig`` defaults) were chosen: on fit data only.

    .venv/bin/python benchmarks/head_selection.py [--datasets ../shared/datasets] [--out benchmarks/results]

Never uses a test split. Banking77: 5-fold cross-validation over the train split (each fold is
routed against the routes built from the other four). CLINC150: routes = in-scope train, judged
on val + oos_val (the fit split of ``accuracy.py``). For every candidate it prints the head's
top-1 accuracy alone and blended with the kNN scores, and, on CLINC150, the cross-validated
accuracy of the whole fit (head weight + thresholds) that ``accuracy.py`` runs. Uses the vectors
cached by ``accuracy.py`` (run that first or let this embed them).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy_runs import build_table
from datasets import Split, banking77, clinc150, stratified_slice
from machine import machine_info
from rich.console import Console
from rich.table import Table
from vectors import VectorCache

from worker.config import load_settings
from worker.embedding import EncoderPool
from worker.embedding.model import resolve_model
from worker.routing import Router, RouteTable, ScoringConfig
from worker.routing.fitting import fit_head_weight
from worker.routing.head import HeadConfig, RouteHead, train_head

REPO = Path(__file__).resolve().parents[1]
console = Console(width=150)

DEFAULT = HeadConfig()
LINEAR = HeadConfig(hidden=0, scale=16.0, epochs=12, learning_rate=0.005, label_smoothing=0.0, dropout=0.0)
#: the previous linear head, and the default with one setting changed at a time
CANDIDATES = {
    "linear (previous default)": LINEAR,
    "linear + label smoothing 0.1": replace(LINEAR, label_smoothing=0.1, epochs=30, learning_rate=0.003),
    "default (hidden 512, dropout 0.5)": DEFAULT,
    "hidden 256": replace(DEFAULT, hidden=256),
    "hidden 1024": replace(DEFAULT, hidden=1024),
    "dropout 0.3": replace(DEFAULT, dropout=0.3),
    "no label smoothing": replace(DEFAULT, label_smoothing=0.0),
    "input scale 2": replace(DEFAULT, scale=2.0),
}
BLEND = 0.3  # the kNN + head blend reported next to the head alone


def selection_score(row: dict[str, dict[str, float]]) -> float:
    """The rule that picks the default: mean of Banking77's blended top-1 (5-fold CV over train)
    and CLINC150's cross-validated fit accuracy (val + oos_val)."""
    return (row["banking77_train_5fold"]["blend_top1"] + row["clinc150_val"]["fit_cv_accuracy"]) / 2


def top1(router: Router, vectors: np.ndarray) -> list[str | None]:
    """The best-ranked route of every query (no threshold)."""
    _, ranked = router.score(vectors)
    return [
        ranked.names[s] if e > s else None for s, e in zip(ranked.starts[:-1], ranked.starts[1:], strict=True)
    ]


def head_top1(head: RouteHead, vectors: np.ndarray) -> list[str]:
    return [head.names[i] for i in head.probabilities(vectors).argmax(axis=1)]


def share(predicted: list[str] | list[str | None], truth: list[str | None]) -> float:
    return float(np.mean([p == t for p, t in zip(predicted, truth, strict=True)]))


def banking77_cv(
    routes: Split, vectors: np.ndarray, fingerprint: str, config: HeadConfig
) -> dict[str, float]:
    labels = routes.labels
    rest = list(range(len(labels)))
    folds: list[list[int]] = []
    for k in range(5, 1, -1):  # stratified slices of what is left: 1/5, 1/4 of the rest, ...
        taken, _ = stratified_slice([labels[i] for i in rest], 1 / k, seed=len(folds))
        folds.append([rest[i] for i in taken])
        rest = sorted(set(rest) - set(folds[-1]))
    folds.append(rest)
    alone, blended, seconds = [], [], []
    for held in folds:
        held_set = set(held)
        keep = [i for i in range(len(labels)) if i not in held_set]
        table = build_table(routes.take(keep), vectors[keep], fingerprint)
        started = time.perf_counter()
        head = train_head(table.snapshot().routes(), config)
        seconds.append(time.perf_counter() - started)
        truth = [labels[i] for i in held]
        alone.append(share(head_top1(head, vectors[held]), truth))
        router = Router(table, ScoringConfig(head_weight=BLEND), None, head)
        blended.append(share(top1(router, vectors[held]), truth))
    return {
        "head_top1": float(np.mean(alone)),
        "blend_top1": float(np.mean(blended)),
        "train_s": max(seconds),
    }


def clinc150_fit(table: RouteTable, fit: Split, vectors: np.ndarray, config: HeadConfig) -> dict[str, float]:
    started = time.perf_counter()
    head = train_head(table.snapshot().routes(), config)
    seconds = time.perf_counter() - started
    scoped = [i for i, label in enumerate(fit.labels) if label is not None]
    truth = [fit.labels[i] for i in scoped]
    router = Router(table, ScoringConfig(head_weight=BLEND), None, head)
    fitted_router, fitted = fit_head_weight(Router(table, ScoringConfig(), None, head), vectors, fit.labels)
    estimate = fitted.cross_validated
    assert estimate is not None
    return {
        "head_top1": share(head_top1(head, vectors[scoped]), truth),
        "blend_top1": share(top1(router, vectors[scoped]), truth),
        "fit_head_weight": fitted_router.config.head_weight,
        "fit_cv_accuracy": estimate.accuracy,
        "fit_cv_in_scope": estimate.in_scope_accuracy,
        "fit_cv_oos_recall": estimate.no_match_recall,
        "train_s": seconds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()

    settings = load_settings()
    spec = resolve_model(settings)
    encoder = EncoderPool(spec, pool_size=1)
    cache = VectorCache(encoder, settings.cache_dir / "bench-vectors")
    bank, clinc = banking77(args.datasets), clinc150(args.datasets)
    bank_vectors = cache.embed(bank.routes.texts, "banking77-routes")
    clinc_table = build_table(
        clinc.routes, cache.embed(clinc.routes.texts, "clinc150-routes"), encoder.fingerprint
    )
    clinc_fit = cache.embed(clinc.fit.texts, "clinc150-fit")

    figures: dict[str, dict[str, dict[str, float]]] = {}
    for name, config in CANDIDATES.items():
        figures[name] = {
            "banking77_train_5fold": banking77_cv(bank.routes, bank_vectors, encoder.fingerprint, config),
            "clinc150_val": clinc150_fit(clinc_table, clinc.fit, clinc_fit, config),
        }
        console.print(f"{name}: {json.dumps(figures[name])}")
    scores = {name: selection_score(row) for name, row in figures.items()}
    winner = max(scores, key=lambda name: scores[name])

    table = Table(title="route head candidates (fit data only, never test)")
    for column in ("candidate", "B77 head", f"B77 +kNN w{BLEND}", "CLINC head", f"CLINC +kNN w{BLEND}",
                   "CLINC fit CV acc", "w", "score", "train s (CLINC)"):  # fmt: skip
        table.add_column(column, justify="left" if column == "candidate" else "right")
    for name, row in figures.items():
        b, c = row["banking77_train_5fold"], row["clinc150_val"]
        table.add_row(
            name + (" *" if name == winner else ""),
            f"{b['head_top1']:.4f}",
            f"{b['blend_top1']:.4f}",
            f"{c['head_top1']:.4f}",
            f"{c['blend_top1']:.4f}",
            f"{c['fit_cv_accuracy']:.4f}",
            f"{c['fit_head_weight']:.1f}",
            f"{scores[name]:.4f}",
            f"{c['train_s']:.1f}",
        )
    console.print(table)
    console.print(f"best by the selection rule (*): {winner}")
    manifest = {
        "benchmark": "head_selection",
        "command": "python benchmarks/head_selection.py " + " ".join(sys.argv[1:]),
        "protocol": "Banking77: 5 stratified folds of train, each routed against the other four; "
        "CLINC150: routes = in-scope train, judged on val + oos_val. No test split is used.",
        "model": encoder.fingerprint,
        "machine": machine_info(),
        "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "unset (OpenBLAS default: one per CPU)"),
        "selection_rule": selection_score.__doc__,
        "winner": winner,
        "candidates": {
            name: {"config": asdict(CANDIDATES[name]), "score": scores[name], **row}
            for name, row in figures.items()
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "head_selection.json").write_text(json.dumps(manifest, indent=2))
    console.print(f"wrote {args.out / 'head_selection.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
