"""Accuracy against utterances per intent, drawn from ``accuracy.json`` (runs in a matplotlib env).

    python plot_accuracy.py benchmarks/results/accuracy.json benchmarks/results/accuracy.png

Reads the JSON only (``benchmarks/accuracy.py`` calls it through ``envs.run_plot``): one panel per
figure (Banking77 accuracy, CLINC150 in-scope accuracy, out-of-scope recall and overall accuracy),
one line per router, mean ± std over the seeds as error bars, full data as the last point.
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

PANELS = (
    ("banking77", "accuracy", "Banking77 accuracy"),
    ("clinc150", "in_scope_accuracy", "CLINC150 in-scope accuracy"),
    ("clinc150", "oos_recall", "CLINC150 out-of-scope recall"),
    ("clinc150", "accuracy", "CLINC150 overall accuracy"),
)
STYLE = {  # router label prefix -> (short name, line style)
    "nearest utterance": ("nearest utterance", ":"),
    "routeworker uncalibrated": ("routeworker uncalibrated (0.5)", (0, (1, 3))),
    "routeworker served defaults": ("routeworker defaults, no labels", "-"),
    "routeworker fitted": ("routeworker fitted (fit split)", "--"),
    "semantic-router 1.1.1 (defaults)": ("semantic-router defaults", "-."),
    "semantic-router 1.1.1 (own fit": ("semantic-router own fit", (0, (5, 2, 1, 2))),
}


def main() -> int:
    with open(sys.argv[1]) as fh:
        manifest = json.load(fh)
    panels = [p for p in PANELS if p[0] in manifest["datasets"]]
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.0), squeeze=False)
    for axis, (dataset, metric, title) in zip(axes[0], panels, strict=True):
        summary = manifest["datasets"][dataset]["summary"]
        groups = sorted((g for g in summary if g != "full"), key=lambda g: int(g[1:]))
        ticks = [int(g[1:]) for g in groups]
        labels = [str(k) for k in ticks]
        if "full" in summary:
            groups.append("full")
            ticks.append(max(ticks, default=10) * 2)
            labels.append("full")
        for prefix, (name, style) in STYLE.items():
            router = next((r for r in summary[groups[0]] if r.startswith(prefix)), None)
            if router is None or metric not in summary[groups[0]][router]:
                continue
            means = [100 * summary[g][router][metric]["mean"] for g in groups]
            stds = [100 * summary[g][router][metric]["std"] for g in groups]
            axis.errorbar(ticks, means, yerr=stds, label=name, linestyle=style, marker="o", markersize=3,
                          capsize=2)  # fmt: skip
        axis.set_xscale("log", base=2)
        axis.set_xticks(ticks, labels)
        axis.set_xlabel("utterances per intent")
        axis.set_ylabel("%")
        axis.set_title(title, fontsize=10)
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="lower right")
    figure.suptitle(f"routing accuracy against utterances per intent ({manifest['model']})", fontsize=10)
    figure.tight_layout()
    figure.savefig(sys.argv[2], dpi=110, metadata={"Software": None})
    return 0


if __name__ == "__main__":
    sys.exit(main())
