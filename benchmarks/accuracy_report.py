"""The accuracy benchmark's tables: mean ± std over seeds, markdown from the JSON (also the README block).

Everything here reads the result JSON only, so the README tables can be regenerated (and checked
for drift) from ``benchmarks/results/accuracy.json`` without running anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from accuracy_runs import FITTED, NEAREST, SERVED, SR_DEFAULT, SR_FITTED, UNCALIBRATED

METRICS = ("accuracy", "in_scope_accuracy", "oos_recall", "oos_precision", "macro_f1")
ROWS = (  # (router, labelled data it uses)
    (NEAREST, "none"),
    (UNCALIBRATED, "none"),
    (SERVED, "none"),
    (SR_DEFAULT, "none"),
    (FITTED, "fit split"),
    (SR_FITTED, "fit split"),
)
#: the issue's targets (all-MiniLM-L6-v2 fp32, mean over 5 seeds): (dataset, group, router, metric, minimum)
TARGETS = (
    ("banking77", "k10", SERVED, "accuracy", 0.870),
    ("clinc150", "k10", SERVED, "in_scope_accuracy", 0.88),
    ("clinc150", "k10", SERVED, "oos_recall", 0.50),
    ("clinc150", "k10", SERVED, "accuracy", 0.81),
    ("banking77", "full", FITTED, "accuracy", 0.945),
    ("clinc150", "full", FITTED, "accuracy", 0.900),
    ("clinc150", "full", FITTED, "in_scope_accuracy", 0.960),
    ("clinc150", "full", FITTED, "oos_recall", 0.70),
)


def group_of(run: Mapping[str, Any]) -> str:
    return "full" if run["k"] is None else f"k{run['k']}"


def summarise(runs: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """group ("k5", ..., "full") -> router -> metric -> {mean, std, n} over the group's seeds."""
    grouped: dict[str, dict[str, dict[str, list[float]]]] = {}
    for run in runs.values():
        for router, figures in run["results"].items():
            for metric in METRICS:
                if metric in figures:
                    grouped.setdefault(group_of(run), {}).setdefault(router, {}).setdefault(
                        metric, []
                    ).append(float(figures[metric]))
    return {
        group: {
            router: {
                metric: {
                    "mean": float(np.mean(values)),
                    "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                    "n": len(values),
                }
                for metric, values in metrics.items()
            }
            for router, metrics in routers.items()
        }
        for group, routers in grouped.items()
    }


def _cell(summary: Mapping[str, Any], group: str, router: str, metric: str) -> str:
    figure = summary.get(group, {}).get(router, {}).get(metric)
    if figure is None:
        return ""
    if figure["n"] > 1:
        return f"{100 * figure['mean']:.1f} ± {100 * figure['std']:.1f}"
    return f"{100 * figure['mean']:.1f}"


def _groups(summary: Mapping[str, Any]) -> list[str]:
    shots = sorted((g for g in summary if g != "full"), key=lambda g: int(g[1:]))
    return [*shots, *(["full"] if "full" in summary else [])]


def _table(summary: Mapping[str, Any], metric: str) -> list[str]:
    groups = _groups(summary)
    heads = [("full data" if g == "full" else f"k = {g[1:]}") for g in groups]
    lines = ["| router | labelled data | " + " | ".join(heads) + " |", "|---|---|" + "---:|" * len(groups)]
    for router, labels in ROWS:
        cells = [_cell(summary, g, router, metric) for g in groups]
        if any(cells):
            lines.append(f"| {router} | {labels} | " + " | ".join(cells) + " |")
    return lines


def _targets(manifest: Mapping[str, Any]) -> list[str]:
    lines = [
        "| target | set | protocol | figure | minimum | mean ± std | met |",
        "|---|---|---|---|---:|---:|:---:|",
    ]
    for dataset, group, router, metric, minimum in TARGETS:
        summary = manifest["datasets"].get(dataset, {}).get("summary", {})
        figure = summary.get(group, {}).get(router, {}).get(metric)
        if figure is None:
            continue
        protocol = "10 per intent, no labels" if group == "k10" else "full data, fit split"
        shown = _cell(summary, group, router, metric)
        met = "yes" if figure["mean"] >= minimum else "**no**"
        lines.append(
            f"| {router} | {dataset} | {protocol} | {metric} | {100 * minimum:.1f} | {shown} | {met} |"
        )
    return lines


def _never_below_nearest(manifest: Mapping[str, Any]) -> list[str]:
    """Served defaults vs nearest utterance, in-scope accuracy, every set and k (every seed)."""
    lines = ["| set | routes | seeds where served defaults ≥ nearest utterance (in scope) | worst margin |",
             "|---|---|---:|---:|"]  # fmt: skip
    for dataset, body in manifest["datasets"].items():
        by_group: dict[str, list[float]] = {}
        for run in body["runs"].values():
            results = run["results"]
            margin = results[SERVED]["in_scope_accuracy"] - results[NEAREST]["in_scope_accuracy"]
            by_group.setdefault(group_of(run), []).append(margin)
        for group in _groups(body["summary"]):
            margins = by_group[group]
            held = sum(m >= 0 for m in margins)
            label = "all" if group == "full" else f"{group[1:]} per intent"
            lines.append(f"| {dataset} | {label} | {held} of {len(margins)} | {100 * min(margins):+.1f} |")
    return lines


def render_markdown(manifest: Mapping[str, Any]) -> str:
    """Every table of the benchmark as markdown (percent, mean ± std over seeds)."""
    out: list[str] = []
    titles = {
        ("banking77", "accuracy"): "Banking77 accuracy (3,080 test queries)",
        ("clinc150", "in_scope_accuracy"): "CLINC150 in-scope accuracy (4,500 test queries)",
        ("clinc150", "oos_recall"): "CLINC150 out-of-scope recall (1,000 test queries answered 'no match')",
        (
            "clinc150",
            "accuracy",
        ): "CLINC150 overall accuracy (5,500 test queries, 'no match' counted as a class)",
    }
    for (dataset, metric), title in titles.items():
        if dataset in manifest["datasets"]:
            out += [f"**{title}**, %", "", *_table(manifest["datasets"][dataset]["summary"], metric), ""]
    out += ["**Targets**", "", *_targets(manifest), ""]
    out += ["**Never below nearest utterance**", "", *_never_below_nearest(manifest), ""]
    return "\n".join(out)
