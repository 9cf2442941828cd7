"""Million-vector tables (issue 16, part 4): join, restart, search + decide vs encoding, RSS, from million.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from readme_blocks import block, load, markdown_table

#: the issue's targets: (figure, its value in the JSON, limit, unit)
_TARGET_READY_S = 60.0
_TARGET_RESTART_S = 3.0
_TARGET_RATIO = 0.2
_TARGET_RSS_MB = 2.5 * 1024


def _met(value: float, limit: float) -> str:
    return "yes" if value <= limit else "**no**"


def _breakdown(phase: dict[str, Any]) -> str:
    parts = phase["breakdown_s"]
    names = {"fetch": "fetch", "decode": "decode", "store_write": "store write",
             "table_install": "index build + install", "store_load": "store load",
             "table_from_store": "table from store"}  # fmt: skip
    return ", ".join(f"{label} {parts[key]['s']:.1f} s" for key, label in names.items() if key in parts)


@block("million-table")
def million_table(results: Path) -> str:
    data = load(results, "million.json")
    settings, fresh, restart = data["settings"], data["fresh"], data["restart"]
    ratio = max(fresh["search"]["decide_over_encode"], restart["search"]["decide_over_encode"])
    peak = max(fresh["rss_mb"]["peak"], restart["rss_mb"]["peak"])
    rows = [
        ["fresh replica joining the log: ready (serving from its main index)",
         f"{fresh['ready_s']:.1f} s", f"≤ {_TARGET_READY_S:.0f} s", _met(fresh["ready_s"], _TARGET_READY_S)],
        ["… of which (summed per step; fetch and decode overlap the store writes)", _breakdown(fresh), "", ""],
        ["restart from its store and persisted index: ready", f"{restart['ready_s']:.2f} s",
         f"≤ {_TARGET_RESTART_S:.0f} s", _met(restart["ready_s"], _TARGET_RESTART_S)],
        ["… of which", _breakdown(restart), "", ""],
        [f"search + decide of {restart['search']['queries']} real queries ÷ encoding them "
         "(fp32, one thread; median of alternated rounds, worse of the two replicas)",
         f"{ratio:.3f} ({restart['search']['decide_ms']:.1f} ms vs {restart['search']['encode_ms']:.1f} ms)",
         f"≤ {_TARGET_RATIO}", _met(ratio, _TARGET_RATIO)],
        ["recall@10 of the index on those queries (vs exact search)",
         f"{restart['search'].get('recall_at_10', float('nan')):.3f} "
         f"({restart['search']['index']['kind']}, {restart['search']['index']['probe_lists']} lists scanned)", "", ""],
        ["replica peak RSS (fresh join / restart; model included)",
         f"{fresh['rss_mb']['peak'] / 1024:.2f} / {restart['rss_mb']['peak'] / 1024:.2f} GB",
         "≤ 2.5 GB", _met(peak, _TARGET_RSS_MB)],
    ]  # fmt: skip
    table = markdown_table(["figure", "value", "target", "met"], rows, "lrrl")
    load_avg = f"{data['load_average_start'][0]:.1f} at the start, {data['load_average_end'][0]:.1f} at the end"
    note = (
        f"{settings['routes']:,} routes × {settings['per_route']} utterances = {settings['vectors']:,} vectors "
        f"of {settings['dim']} dims, shipped in the log ({data['model']['fingerprint']}); "
        f"{settings['broker']}; {data['machine']['cpus']} vCPUs ({data['machine']['cpu']}), "
        f"1-minute load average {load_avg}."
    )
    return note + "\n\n" + table
