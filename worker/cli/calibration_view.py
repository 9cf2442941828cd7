"""Printing a calibration: what was chosen, and the estimate it was chosen by."""

from __future__ import annotations

from rich.table import Table

from worker.cli.console import table
from worker.routing import RouteCalibration


def _number(value: float) -> str:
    return "accept all" if value == float("-inf") else f"{value:.4f}"


def calibration_table(calibration: RouteCalibration) -> Table:
    """Two columns: each choice and each cross-validated figure."""
    head = calibration.head
    rows: list[tuple[str, str]] = [
        ("method", calibration.method),
        ("routes", str(len(calibration.routes))),
        ("head", f"{len(head.names)} routes" if head is not None else "none (nearest utterances only)"),
        ("head weight", f"{calibration.head_weight:.2f}"),
        ("threshold", _number(calibration.default_threshold)),
        ("fallback threshold (routes changed later)", _number(calibration.fallback_threshold)),
        ("margin", f"{calibration.margin:.4f}"),
    ]
    if calibration.per_route:
        rows.append(("per-route thresholds", str(len(calibration.per_route))))
    estimate = calibration.estimate
    if estimate is not None:
        where = f"held-out {estimate.held_out}"
        if estimate.folds:
            where += f", {estimate.folds} folds"
        rows.append(("cross-validated on", f"{estimate.examples} {where}"))
        if estimate.top1 is not None:
            rows.append(("  top-1, no threshold", f"{estimate.top1:.4f}"))
        if estimate.nearest_utterance is not None:
            rows.append(("  nearest utterance (baseline)", f"{estimate.nearest_utterance:.4f}"))
        rows.append(("  accuracy", f"{estimate.accuracy:.4f}"))
        rows.append(("  in-scope accuracy", f"{estimate.in_scope_accuracy:.4f}"))
        if estimate.refused is not None:
            rows.append(("  in-scope refused (no match)", f"{estimate.refused:.4f}"))
        if estimate.no_match_recall is not None:
            rows.append(("  no-match recall", f"{estimate.no_match_recall:.4f}"))
    return table(f"calibration {calibration.digest[:12]}", ["", "chosen"], rows)
