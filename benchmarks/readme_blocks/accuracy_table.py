"""Routing accuracy on Banking77 and CLINC150, from accuracy.json."""

from __future__ import annotations

from pathlib import Path

from readme_blocks import block, load, markdown_table

COLUMNS = ["accuracy", "in_scope_accuracy", "oos_recall", "oos_precision", "macro_f1"]


@block("accuracy-table")
def accuracy(results: Path) -> str:
    data = load(results, "accuracy.json")
    rows = []
    for dataset, figures in data["datasets"].items():
        for router, result in figures["results"].items():
            cells = [f"{result[c]:.4f}" if c in result else "" for c in COLUMNS]
            rows.append([dataset, router, *cells])
    return markdown_table(["dataset", "router", *COLUMNS], rows, "ll" + "r" * len(COLUMNS))
