"""The routing engine: search cost by table size, mutation visibility, rebuild stalls, from engine.json."""

from __future__ import annotations

from pathlib import Path

from readme_blocks import block, load, markdown_table


@block("engine-table")
def engine(results: Path) -> str:
    data = load(results, "engine.json")
    encoder_ms = data["encoder"]["median_ms"]
    rows = []
    for vectors, size in data["sizes"].items():
        recall = size.get("recall_at_10")
        rows.append([
            f"{int(vectors):,}",
            size["kind"],
            str(size.get("calibrated_probe_lists", "all")),
            f"{size['build_s']:.1f}" if size["build_s"] >= 1 else f"{size['build_s']:.3f}",
            f"{size['decide_32']['median_ms']:.1f}",
            f"{size['decide_to_encode_ratio']:.2f}×",
            "exact" if recall is None else f"{recall:.3f}",
        ])  # fmt: skip
    sizes = markdown_table(
        ["vectors", "index", "lists scanned", "build s", "search + decide 32 ms (median)",
         f"÷ encoder ({encoder_ms:.0f} ms / 32)", "recall@10"],
        rows,
        "llrrrrr",
    )  # fmt: skip
    largest = data["sizes"][max(data["sizes"], key=int)]
    visibility, stall, cold = largest["visibility"], largest["stall"], largest["cold_start"]
    real = data["real_vectors_recall"]
    figures = markdown_table(
        ["figure", "value"],
        [
            ["mutation `apply` (median / max)",
             f"{visibility['apply_ms']['median_ms']:.2f} / {visibility['apply_ms']['max_ms']:.1f} ms"],
            [f"first decision after a mutation, under search load (p99 / max, n={visibility['mutations']})",
             f"{visibility['visible_ms']['p99_ms']:.1f} / {visibility['visible_ms']['max_ms']:.1f} ms"],
            [f"longest search wait while {int(max(data['sizes'], key=int)):,} vectors are rebuilt "
             f"(p99, n={stall['while_rebuilding']['count']:,})",
             f"{stall['while_rebuilding']['max_ms']:.1f} ms "
             f"(p99 {stall['while_rebuilding']['p99_ms']:.1f} ms)"],
            ["cold start from the store, memory-mapped index",
             f"{cold['best_total_s']:.2f}–{cold['worst_total_s']:.2f} s"],
            [f"real MiniLM vectors ({real['vectors']:,}) forced into IVF: lists scanned, recall@10",
             f"{real['calibrated_probe_lists']}, {real['calibrated_recall_at_10']:.3f}"],
        ],
        "lr",
    )  # fmt: skip
    return sizes + "\n\n" + figures
