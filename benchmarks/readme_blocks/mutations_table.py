"""The mutation log: publish → live, fresh join, and throughput while routes are added (two JSON files)."""

from __future__ import annotations

from pathlib import Path

from readme_blocks import block, load, markdown_table


@block("mutations-table")
def mutations(results: Path) -> str:
    data = load(results, "mutations.json")
    live = data["publish_to_live"]
    rows = []
    for label, key in (
        ("vectors shipped in the record", "shipped"),
        ("replicas embed", "embedded_on_replica"),
    ):
        figures = live[key]["live_on_all"]
        rows.append([
            f"publish → live on {live[key]['replicas']} replicas, {label} (n={figures['n']})",
            f"p50 {figures['p50_ms']:.0f} ms, p99 {figures['p99_ms']:.0f} ms, max {figures['max_ms']:.0f} ms",
        ])  # fmt: skip
    join = data["fresh_join"]
    rows.append([f"fresh replica joining a log of {join['routes']:,} routes ({join['vectors']:,} vectors)",
                 f"ready in {join['fresh']['ready_s']:.1f} s"])  # fmt: skip
    rows.append(["the same replica restarted on its store", f"ready in {join['restart']['ready_s']:.1f} s"])
    added = load(results, "pipeline_mutations.json")
    cycles = added["cycles"]
    rate = added["per_second"]
    rows += [
        [f"throughput while {added['settings']['added']:,} routes are added to "
         f"{added['settings']['routes']:,} ({len(cycles)} cycles)",
         f"{added['throughput_ratio']:.2f}× baseline ({rate['adding']:.0f} vs {rate['baseline']:.0f} q/s), "
         f"{added['throughput_ratio_vs_control']:.2f}× control"],
        ["added routes live after publishing",
         _span([c["publish_to_live_ms"] / 1000 for c in cycles], "s")],
        ["folded into the main index after publishing",
         _span([c["publish_to_rebuilt_ms"] / 1000 for c in cycles], "s")],
        ["dead letters, duplicate intents, worker error lines",
         f"{added['errors']['dlq_records']}, {added['errors']['duplicate_intents']}, "
         f"{len(added['errors']['worker_error_lines'])}"],
    ]  # fmt: skip
    return (
        markdown_table(["figure", "value"], rows, "lr")
        + "\n\n"
        + ("![publish → live latency](benchmarks/results/mutations_publish_to_live.png)")
    )


def _span(values: list[float], unit: str) -> str:
    return f"{min(values):.1f}–{max(values):.1f} {unit}"
