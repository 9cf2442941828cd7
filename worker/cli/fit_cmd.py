"""`routeworker fit`: calibrate a route file (head, head weight, thresholds) and print what was chosen.

Without ``--examples`` it self-fits: cross-validation over the routes' own utterances chooses the
head weight and the thresholds (:mod:`worker.routing.self_fit`), and the cross-validated estimate is
printed. With ``--examples`` (a CSV with columns ``text,label``; an empty label or
``--no-match-label``, default ``oos``, means "no route should match") per-route thresholds, the
margin and the head weight are fitted on them, with the "no match" examples standing for at least
``--no-match-share`` of the traffic (default 0.1; a labelled file rarely holds as many as traffic
does), and the head is also trained on the in-scope examples. Either way the calibration is the one
`routeworker run` would serve: with the learned head on (``ROUTING_HEAD``) a head is trained as it
is shipped. ``--publish`` ships it to the replicas through the mutation log; ``--write FILE`` writes
the route file back with fitted thresholds filled in; ``--settings-out FILE`` writes the fitted
default threshold, margin and head weight as a TOML settings file (``ROUTEWORKER_CONFIG_FILE``).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
from pathlib import Path

from worker.app.serving import head_serves, scoring_config, self_fit_config
from worker.cli.calibration_view import calibration_table
from worker.cli.console import console, err_console, table
from worker.config import Settings, load_settings
from worker.contracts import RouteDefinition
from worker.embedding.pool import encoder_pool
from worker.replication import calibration_record, publish_calibration
from worker.replication.errors import RouteFileError
from worker.replication.routefile import dump_routes, load_route_file
from worker.replication.vectors import embed_routes, route_of
from worker.routing import FittedThresholds, RouteCalibration, RouteTable, RouteVectors, self_fit
from worker.routing.fit_calibration import fit_calibration
from worker.routing.fitting import NO_MATCH_SHARE, FitMetrics
from worker.routing.head import HeadConfig
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
        texts, labels = read_examples(args.examples, args.no_match_label) if args.examples else ([], [])
    except (RouteFileError, ValueError, OSError) as exc:
        err_console.print(f"[red]cannot fit:[/red] {exc}")
        return 2
    if args.examples is None and args.write is not None:
        err_console.print(
            "[red]cannot fit:[/red] --write needs --examples (a self-fit has no per-route thresholds)"
        )
        return 2
    unknown = sorted({label for label in labels if label is not None} - {d.name for d in definitions})
    if unknown:
        err_console.print(
            f"[red]cannot fit:[/red] examples name routes not in {args.routes}: {', '.join(unknown)}"
        )
        return 2
    with console.status("embedding routes" + (" and examples" if texts else "")):
        pool = encoder_pool(settings)
        try:
            routes = asyncio.run(embed_routes(pool, [route_of(d) for d in definitions]))
            vectors = pool.embed_sync(texts) if texts else None
        finally:
            pool.close()
    if vectors is None:
        with console.status(f"self-fit: cross-validating over the utterances of {len(routes)} routes"):
            calibration = self_fit(routes, scoring_config(settings), self_fit_config(settings, len(routes)))
        console.print(calibration_table(calibration))
    else:
        calibration, fitted = _fit_on_examples(
            settings, routes, pool.dim, pool.fingerprint, vectors, labels, args.no_match_share
        )
        _print_fitted(calibration, fitted, len(texts))
        _write_outputs(args, definitions, calibration, fitted)
    if args.publish:
        receipt = asyncio.run(publish_calibration(settings, calibration_record(calibration, pool.dim)))
        console.print(
            f"published calibration {calibration.digest[:12]} to {settings.topic_mutations} at "
            f"{receipt.positions}: replicas serve it for the routes whose definitions match {args.routes}"
        )
    return 0


def _fit_on_examples(
    settings: Settings,
    routes: list[RouteVectors],
    dim: int,
    fingerprint: str,
    vectors: Vectors,
    labels: list[str | None],
    no_match_share: float | None,
) -> tuple[RouteCalibration, FittedThresholds]:
    """Fit as `routeworker run` serves: with a head (trained as shipped) if the settings want one."""
    table_ = RouteTable.from_routes(routes, (), dim, fingerprint)
    head = HeadConfig() if head_serves(settings, len(routes)) else None
    return fit_calibration(
        table_,
        vectors,
        labels,
        scoring=scoring_config(settings),
        head=head,
        head_weight=settings.routing_head_weight,
        no_match_share=no_match_share,
    )


def _print_fitted(calibration: RouteCalibration, fitted: FittedThresholds, examples: int) -> None:
    console.print(table("fitted thresholds", ["route", "threshold", "examples"], fitted.table()))
    console.print(calibration_table(calibration))
    console.print("   ".join(f"{name} {value:.4f}" for name, value in _settings_of(calibration).items()))
    console.print(table(f"on {examples} examples", ["", "before", "after"], _metrics_rows(fitted)))


def _settings_of(calibration: RouteCalibration) -> dict[str, float]:
    return {
        "routing_default_threshold": _clamp(calibration.default_threshold),
        "routing_margin": round(calibration.margin, 6),
        "routing_head_weight": calibration.head_weight,
    }


def _write_outputs(
    args: argparse.Namespace,
    definitions: list[RouteDefinition],
    calibration: RouteCalibration,
    fitted: FittedThresholds,
) -> None:
    if args.write is not None:
        updated = [d.model_copy(update={"threshold": _clamp(fitted.per_route.get(d.name, fitted.default))})
                   for d in definitions]  # fmt: skip
        args.write.write_text(dump_routes(updated), encoding="utf-8")
        console.print(f"wrote {args.write}: publish it with `routeworker routes apply {args.write}`")
    if args.settings_out is not None:
        lines = [f"{name} = {value!r}" for name, value in _settings_of(calibration).items()]
        args.settings_out.write_text("# fitted by `routeworker fit`\n" + "\n".join(lines) + "\n")
        console.print(f"wrote {args.settings_out}: serve with ROUTEWORKER_CONFIG_FILE={args.settings_out}")


def _share(text: str) -> float | None:
    if text == "own":
        return None
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError("a share within [0, 1), or 'own'")
    return value


def _clamp(threshold: float) -> float:
    # a route threshold lives in [-1, 1] (cosine); "accept everything" fits as -inf
    return max(-1.0, min(1.0, threshold))


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("fit", help="calibrate routes: self-fit, or on labelled examples")
    parser.add_argument("--routes", type=Path, required=True, help="route file (YAML or JSON)")
    parser.add_argument(
        "--examples", type=Path, default=None, help="CSV with columns text,label (default: self-fit)"
    )
    parser.add_argument("--no-match-label", default="oos", help="label meaning no match (default: oos)")
    parser.add_argument(
        "--no-match-share",
        type=_share,
        default=NO_MATCH_SHARE,
        help=f"least share of traffic the no-match examples stand for (default {NO_MATCH_SHARE}; "
        "'own': the examples' own share)",
    )
    parser.add_argument(
        "--write", type=Path, default=None, help="write the route file with fitted thresholds"
    )
    parser.add_argument(
        "--settings-out", type=Path, default=None, help="write the fitted routing settings (TOML)"
    )
    parser.add_argument(
        "--publish", action="store_true", help="publish the calibration to the mutation log for the replicas"
    )
    parser.set_defaults(handler=_fit)
