"""Routing accuracy of the int8 export against fp32, and the gate that decides the default (variants.json)."""

from __future__ import annotations

from pathlib import Path

from readme_blocks import block, load, markdown_table

SERVED = "served (self-fit, no labels)"


@block("variants-table")
def variants(results: Path) -> str:
    data = load(results, "variants.json")
    accuracy, deltas = data["accuracy"], data["delta_points_vs_fp32"]["int8"]
    rows = []
    for key, points in deltas.items():
        name, protocol = key.split(" ", 1)
        for router, delta in points.items():
            rows.append([
                f"{name} {protocol}",
                router,
                f"{100 * accuracy['fp32'][name][protocol][router]:.2f}",
                f"{100 * accuracy['int8'][name][protocol][router]:.2f}",
                f"{delta:+.2f}" + (" **(gate)**" if router == SERVED else ""),
            ])  # fmt: skip
    gate = data["gate"]
    verdict = "passed: int8 may be served by default" if gate["passed"] else "failed: fp32 stays the default"
    return (
        markdown_table(["dataset / protocol", "router", "fp32 %", "int8 %", "Δ points"], rows, "llrrr")
        + f"\n\nGate ({gate['rule']}): {verdict}."
    )
