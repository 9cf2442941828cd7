"""Pipeline throughput and latency on a real broker, from pipeline.json."""

from __future__ import annotations

from pathlib import Path

from readme_blocks import block, load, markdown_table


@block("pipeline-table")
def pipeline(results: Path) -> str:
    data = load(results, "pipeline.json")
    settings, figures = data["settings"], data["results"]
    encoder = max(run["per_second"] for run in figures["raw_encoder"])
    sustained = figures["no_cache"]["sustained"]["per_second"]
    half = figures["no_cache"]["latency_at_half_load"]
    zipf = figures["no_cache"]["zipf_no_cache"]["per_second"]
    warm = figures["cache"]["zipf_redis_cache_warm"]["per_second"]
    rows = [
        ["raw encoder, batches of 32 (best of 3)", f"{encoder:.1f} texts/s"],
        [f"sustained, {settings['routes']:,} routes, batch {settings['batch_size']}",
         f"{sustained:.1f} queries/s ({sustained / encoder:.0%} of the encoder)"],
        [f"produce → routed intent at {half['offered_per_second']:.0f} queries/s (p50 / p99)",
         f"{half['produce_to_intent_ms']['p50']} / {half['produce_to_intent_ms']['p99']} ms"],
        ["80% repeated queries (Zipf over 1,000 texts), warm Redis cache",
         f"{warm:.1f} queries/s ({warm / zipf:.1f}× without a cache)"],
    ]  # fmt: skip
    return markdown_table(["figure", "value"], rows, "lr")
