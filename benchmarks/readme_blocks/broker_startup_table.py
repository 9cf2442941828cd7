"""Private broker start-up times (Apache Kafka variants and Tansu), from broker_startup.json."""

from __future__ import annotations

from pathlib import Path

from readme_blocks import block, load, markdown_table


@block("broker-startup-table")
def broker_startup(results: Path) -> str:
    data = load(results, "broker_startup.json")
    rows = []
    for name, variant in data["variants"].items():
        total = variant["total_s"]
        stop = variant.get("stop_s")
        rows.append([
            name,
            f"{total['median']:.2f} s ({total['min']:.2f}–{total['max']:.2f})",
            f"{variant['format_s']['median']:.2f} s" if "format_s" in variant else "",
            f"{stop['median']:.2f} s" if stop else "",
        ])  # fmt: skip
    cold = data["cold_resolution"]
    table = markdown_table(
        [
            f"broker (median of {data['runs_per_variant']})",
            "ready to answer Metadata",
            "of which format",
            "stop",
        ],
        rows,
        "lrrr",
    )
    notes = markdown_table(
        ["figure", "value"],
        [
            [f"resolving the {cold['jars']} jars ({cold['jar_bytes'] / 1e6:.1f} MB) from an empty cache",
             f"{cold['resolve_empty_m2_and_cache_s']:.1f} s"],
            ["training the class archive", f"{cold['train_class_archive_s']:.1f} s"],
            ["a warm `make kafka` (checksum pass, in process)", f"{cold['warm_prepare_s']:.2f} s"],
        ],
        "lr",
    )  # fmt: skip
    return table + "\n\n" + notes
