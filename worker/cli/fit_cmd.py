"""`routeworker fit`: fit per-route thresholds and the margin on labelled examples; print them.

Examples are a CSV with columns ``text,label``; an empty label (or ``--no-match-label``, default
``oos``) means "no route should match". ``--write FILE`` writes the route file back with the fitted
thresholds filled in, ready for `routeworker routes apply`.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
from pathlib import Path

from worker.cli.console import console, err_console, table
from worker.config import load_settings
from worker.embedding.pool import encoder_pool
from worker.replication.errors import RouteFileError
from worker.replication.routefile import dump_routes, load_route_file
from worker.replication.vectors import embed_routes, route_of
from worker.routing import FittedThresholds, Router, RouteTable, fit_thresholds
from worker.routing.fitting import FitMetrics


def read_examples(path: Path, no_match_label: str) -> tuple[list[str], list[str | None]]:
    """(texts, labels) from a ``text,label`` CSV; no-match rows get the label None."""
    texts: list[str] = []
    labels: list[str | None] = []
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"text", "label"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: needs a header with the columns text,label")
        for line, row in enumerate(reader, start=2):
            text = (row["text"] or "").strip()
            if not text:
                raise ValueError(f"{path}:{line}: empty text")
            label = (row["label"] or "").strip()
            texts.append(text)
            labels.append(None if label in ("", no_match_label) else label)
    return texts, labels


def _metrics_rows(fitted: FittedThresholds) -> list[tuple[str, str, str]]:
    def cells(m: FitMetrics | None) -> list[str]:
        if m is None:
            return ["", "", "", ""]
        return [
            f"{v:.4f}" for v in (m.accuracy, m.in_scope_accuracy, m.no_match_recall, m.no_match_precision)
        ]

    names = ["accuracy", "in-scope accuracy", "no-match recall", "no-match precision"]
    return list(zip(names, cells(fitted.before), cells(fitted.after), strict=True))


def _fit(args: argparse.Namespace) -> int:
    settings = load_settings()
    try:
        definitions = load_route_file(args.routes, settings.limits)
        texts, labels = read_examples(args.examples, args.no_match_label)
    except (RouteFileError, ValueError, OSError) as exc:
        err_console.print(f"[red]cannot fit:[/red] {exc}")
        return 2
    unknown = sorted({label for label in labels if label is not None} - {d.name for d in definitions})
    if unknown:
        err_console.print(
            f"[red]cannot fit:[/red] examples name routes not in {args.routes}: {', '.join(unknown)}"
        )
        return 2
    with console.status("embedding routes and examples"):
        pool = encoder_pool(settings)
        try:
            routes = asyncio.run(embed_routes(pool, [route_of(d) for d in definitions]))
            vectors = pool.embed_sync(texts)
        finally:
            pool.close()
    table_ = RouteTable.from_routes(routes, (), pool.dim, pool.fingerprint)
    fitted = fit_thresholds(Router(table_), vectors, labels)
    console.print(table("fitted thresholds", ["route", "threshold", "examples"], fitted.table()))
    console.print(f"default threshold {fitted.default:.4f}   margin {fitted.margin:.4f}")
    console.print(table(f"on {len(texts)} examples", ["", "before", "after"], _metrics_rows(fitted)))
    if args.write is not None:
        updated = [d.model_copy(update={"threshold": _clamp(fitted.per_route.get(d.name, fitted.default))})
                   for d in definitions]  # fmt: skip
        args.write.write_text(dump_routes(updated), encoding="utf-8")
        console.print(f"wrote {args.write}: publish it with `routeworker routes apply {args.write}`")
    return 0


def _clamp(threshold: float) -> float:
    # a route threshold lives in [-1, 1] (cosine); "accept everything" fits as -inf
    return max(-1.0, min(1.0, threshold))


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("fit", help="fit route thresholds and margin on labelled examples")
    parser.add_argument("--routes", type=Path, required=True, help="route file (YAML or JSON)")
    parser.add_argument("--examples", type=Path, required=True, help="CSV with columns text,label")
    parser.add_argument("--no-match-label", default="oos", help="label meaning no match (default: oos)")
    parser.add_argument(
        "--write", type=Path, default=None, help="write the route file with fitted thresholds"
    )
    parser.set_defaults(handler=_fit)
