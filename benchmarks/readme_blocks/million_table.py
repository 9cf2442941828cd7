"""Million-vector tables (issue 16, part 4): join, restart, decide vs encoding, RSS (million.json)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from readme_blocks import block, load, markdown_table

#: the issue's targets
_TARGET_READY_S = 60.0
_TARGET_RESTART_S = 3.0
_TARGET_RATIO = 0.2
_TARGET_RSS_MB = 2.5 * 1024


def _met(value: float, limit: float) -> str:
    return "yes" if value <= limit else "**no**"


def _breakdown(phase: dict[str, Any]) -> str:
    parts = phase["breakdown_s"]
    names = {"fetch": "fetch", "decode": "decode in the replica",
             "decode_process": "waiting for the decode processes", "store_write": "store write",
             "table_install": "index build + install", "store_load": "store load",
             "table_from_store": "table from store"}  # fmt: skip
    return ", ".join(
        f"{label} {parts[key]['s']:.1f} s"
        for key, label in names.items()
        if parts.get(key, {}).get("s", 0) >= 0.05
    )


def _split(rss: dict[str, float] | None) -> str:
    if rss is None:
        return ""
    text = f"{rss['anon'] / 1024:.2f} GB own heap + {rss['file'] / 1024:.2f} GB mapped files"
    if "vectors_files" in rss:
        text += f" (index {rss['index_files'] / 1024:.2f} GB, vectors {rss['vectors_files'] / 1024:.2f} GB)"
    return text


def _serving_peak(phase: dict[str, Any]) -> float:
    """Peak RSS while serving, before the benchmark's exact search (older runs: the overall peak)."""
    rss: dict[str, Any] = phase["rss_mb"]
    return float(rss.get("peak_serving", rss["peak"]))


@block("million-table")
def million_table(results: Path) -> str:
    data = load(results, "million.json")
    settings, fresh, restart = data["settings"], data["fresh"], data["restart"]
    search = max(fresh["search"], restart["search"], key=lambda figures: figures["decide_over_encode"])
    ratio = search["decide_over_encode"]
    serving = {name: _serving_peak(phase) for name, phase in (("fresh", fresh), ("restart", restart))}
    peak = max(serving.values())
    ready, restarted = fresh["ready_s"], restart["ready_s"]
    timings = f"{ratio:.3f} ({search['decide_ms']:.1f} ms vs {search['encode_ms']:.1f} ms)"
    index = search["index"]
    recall = f"{search.get('recall_at_10', float('nan')):.3f}"
    recall += f" ({index['kind']}, {index['probe_lists']} lists scanned)"
    rss = f"{serving['fresh'] / 1024:.2f} / {serving['restart'] / 1024:.2f} GB"
    ready_rss = restart["rss_mb"]["at_ready"]
    split = _split(ready_rss) if isinstance(ready_rss, dict) else f"{ready_rss / 1024:.2f} GB"
    now = [phase["search"].get("rss_mb_serving", {}).get("rss") for phase in (fresh, restart)]
    build = f"{fresh['rss_mb']['build_process_peak'] / 1024:.2f} GB"
    rows = [
        [f"fresh replica joining the log: ready (serving from its main index; model loaded before, "
         f"{fresh['model_load_s']:.1f} s)",
         f"{ready:.1f} s", f"≤ {_TARGET_READY_S:.0f} s", _met(ready, _TARGET_READY_S)],
        [("… of which (summed per step; fetch and decode overlap the store writes)"
          if "store_write" in fresh["breakdown_s"]
          else "… of which (summed per step; the store is written after ready)"),
         _breakdown(fresh), "", ""],
        *([["… the store caught up with the table (its writes held during the replay), after ready",
            f"{fresh['store_caught_up_after_ready_s']:.1f} s", "", ""]]
          if fresh.get("store_caught_up_after_ready_s") else []),
        [f"restart from its store and persisted index: ready (model loaded before, "
         f"{restart['model_load_s']:.1f} s)",
         f"{restarted:.2f} s", f"≤ {_TARGET_RESTART_S:.0f} s", _met(restarted, _TARGET_RESTART_S)],
        ["… of which", _breakdown(restart), "", ""],
        [f"search + decide of {search['queries']} real queries ÷ encoding them (fp32, one thread; "
         "median of alternated rounds, the worse replica)",
         timings, f"≤ {_TARGET_RATIO}", _met(ratio, _TARGET_RATIO)],
        ["recall@10 of the index on those queries (vs exact search)", recall, "", ""],
        ["replica peak RSS (fresh join / restart; model included, the benchmark's exact search not)",
         rss, "≤ 2.5 GB", _met(peak, _TARGET_RSS_MB)],
        *([["replica RSS while serving, after the searches (fresh join / restart)",
            f"{now[0] / 1024:.2f} / {now[1] / 1024:.2f} GB", "≤ 2.5 GB",
            _met(max(now), _TARGET_RSS_MB)]] if None not in now else []),
        ["… restarted replica at ready", split, "", ""],
        ["… restarted replica after the searches", _split(restart["search"].get("rss_mb_serving")), "", ""],
        ["index build process (a child of the fresh replica, gone after the build): peak RSS", build, "", ""],
    ]  # fmt: skip
    table = markdown_table(["figure", "value", "target", "met"], rows, "lrrl")
    start_load, end_load = data["load_average_start"][0], data["load_average_end"][0]
    machine = data["machine"]
    note = (
        f"{settings['routes']:,} routes × {settings['per_route']} utterances = {settings['vectors']:,} "
        f"vectors of {settings['dim']} dims, shipped in the log ({data['model']['fingerprint']}); "
        f"{settings['broker']}; {machine['cpus']} vCPUs ({machine['cpu']}), 1-minute load average "
        f"{start_load:.1f} at the start, {end_load:.1f} at the end."
    )
    return note + "\n\n" + table
