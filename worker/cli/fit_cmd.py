"""`routeworker fit`: fit per-route thresholds and the margin on labelled examples; print them.

Examples are a CSV with columns ``text,label``; an empty label (or ``--no-match-label``, default
``oos``) means "no route should match". The router is the one `routeworker run` serves with these
settings: with the learned head on (``ROUTING_HEAD``), the head is trained on the routes as every
replica trains it and its weight is fitted too (unless ``ROUTING_HEAD_WEIGHT`` is set).
``--write FILE`` writes the route file back with the fitted thresholds filled in, ready for
`routeworker routes apply`; ``--settings-out FILE`` writes the fitted default threshold, margin and
head weight as a TOML settings file (``ROUTEWORKER_CONFIG_FILE``).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
from pathlib import Path

from worker.app.serving import head_serves, serving_router
from worker.cli.console import console, err_console, table
from worker.config import Settings, load_settings
from worker.embedding.pool import encoder_pool
from worker.replication.errors import RouteFileError
from worker.replication.routefile import dump_routes, load_route_file
from worker.replication.vectors import embed_routes, route_of
from worker.routing import FittedThresholds, Router, RouteTable, fit_head_weight, fit_thresholds, train_head
from worker.routing.fitting import FitMetrics
from worker.routing.types import Vectors


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
    router, fitted = fit_router(serving_router(settings, table_), settings, vectors, labels)
    console.print(table("fitted thresholds", ["route", "threshold", "examples"], fitted.table()))
    fitted_settings = {
        "routing_default_threshold": _clamp(fitted.default),
        "routing_margin": round(fitted.margin, 6),
        "routing_head_weight": router.config.head_weight,
    }
    console.print("   ".join(f"{name} {value:.4f}" for name, value in fitted_settings.items()))
    console.print(table(f"on {len(texts)} examples", ["", "before", "after"], _metrics_rows(fitted)))
    if args.write is not None:
        updated = [d.model_copy(update={"threshold": _clamp(fitted.per_route.get(d.name, fitted.default))})
                   for d in definitions]  # fmt: skip
        args.write.write_text(dump_routes(updated), encoding="utf-8")
        console.print(f"wrote {args.write}: publish it with `routeworker routes apply {args.write}`")
    if args.settings_out is not None:
        lines = [f"{name} = {value!r}" for name, value in fitted_settings.items()]
        args.settings_out.write_text("# fitted by `routeworker fit`\n" + "\n".join(lines) + "\n")
        console.print(f"wrote {args.settings_out}: serve with ROUTEWORKER_CONFIG_FILE={args.settings_out}")
    return 0


def fit_router(
    router: Router, settings: Settings, vectors: Vectors, labels: list[str | None]
) -> tuple[Router, FittedThresholds]:
    """Fit ``router`` as it will serve: with the head (trained here as replicas train it) if on."""
    if not head_serves(settings, len(router.table)):
        return router, fit_thresholds(router, vectors, labels)
    router.head = train_head(router.table.snapshot().routes())
    if settings.routing_head_weight is not None:
        return router, fit_thresholds(router, vectors, labels)
    return fit_head_weight(router, vectors, labels)


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
    parser.add_argument(
        "--settings-out", type=Path, default=None, help="write the fitted routing settings (TOML)"
    )
    parser.set_defaults(handler=_fit)
