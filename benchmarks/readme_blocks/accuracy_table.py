"""Routing accuracy on Banking77 and CLINC150 (few-shot and full data), from accuracy.json."""

from __future__ import annotations

from pathlib import Path

from accuracy_report import render_markdown

from readme_blocks import block, load


@block("accuracy-table")
def accuracy(results: Path) -> str:
    return render_markdown(load(results, "accuracy.json")).rstrip()
