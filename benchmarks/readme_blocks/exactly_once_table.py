"""What exactly once costs, from exactly_once.json; what it survives, from exactly_once_faults.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from readme_blocks import block, load, markdown_table


@block("exactly-once-table")
def exactly_once(results: Path) -> str:
    data = load(results, "exactly_once.json")
    summary, verdict = data["results"]["summary"], data["verdicts"]
    offered = data["results"]["offered_per_second_at_half_load"]
    default = str(verdict["default_interval_ms"])
    rows = [_row("at_least_once", summary["at_least_once"], 1.0)]
    for interval, run in sorted(summary["exactly_once"].items(), key=lambda item: int(item[0])):
        label = f"exactly_once, {interval} ms" + (" (default)" if interval == default else "")
        rows.append(_row(label, run, verdict["ratio_by_interval_ms"][interval]))
    columns = ["guarantee, transaction interval", "sustained queries/s", "× at_least_once",
               f"p50 ms at {offered:.0f} q/s", f"p99 ms at {offered:.0f} q/s"]  # fmt: skip
    settings = data["settings"]
    note = (
        f"Best of {settings['rounds']} rounds each, {settings['backlog']:,}-query backlogs, "
        f"{settings['partitions']} partitions, {settings['routes']:,} routes, one worker; latency from "
        "produce to the routed intent being visible to a read_committed reader, at the same offered "
        f"load for every run ({offered:.0f} q/s: half of at_least_once's first round)."
    )
    noise = _noise(data["results"])
    met = "met" if verdict.get("met") else "**not met**"
    if noise:
        met += " in this run, but not beyond the machine's noise"
    return markdown_table(columns, rows, "lrrrr") + "\n\n" + note + "\n\n" + _verdict(verdict, met) + noise


def _noise(results: dict[str, Any]) -> str:
    """How far the shared machine moved the figures: a ratio inside that spread is not a result."""
    summary = results["summary"]
    configs = [summary["at_least_once"], *summary["exactly_once"].values()]
    spread = max(max(c["sustained_by_round"]) / min(c["sustained_by_round"]) for c in configs)
    load = max(r["sustained"]["load_average_before_after"][0][0] for r in results["runs"])
    if spread < 1.2:
        return ""
    return (
        f" The machine was shared: rounds of one configuration differed by up to {spread:.1f}× in "
        f"throughput, and the 1-minute load average was up to {load:.1f} when a run started, so "
        "throughput differences smaller than that (a ratio above 1 among them) are noise; the "
        "latencies, measured at a low offered load, are the steadier figures."
    )


def _verdict(verdict: dict[str, Any], met: str) -> str:
    """The issue's target (exactly once sustains >= 0.85x at least once), at the default cadence."""
    target = f"{verdict['target']:.2f}"
    if "ratio" not in verdict:
        return f"Target ≥ {target}× at_least_once: not measured at the default interval in this run."
    return (
        f"At the default interval ({verdict['default_interval_ms']} ms) exactly_once sustains "
        f"{verdict['ratio']:.2f}× at_least_once's throughput: the target ≥ {target}× is {met}."
    )


def _row(label: str, run: dict[str, Any], ratio: float) -> list[str]:
    latency = run["produce_to_visible_ms"]
    rate = run["sustained_per_second"]
    return [label, f"{rate:.1f}", f"{ratio:.2f}", f"{latency['p50']:.0f}", f"{latency['p99']:.0f}"]


@block("exactly-once-faults-table")
def faults(results: Path) -> str:
    data = load(results, "exactly_once_faults.json")
    plan = data["plan"]
    rows = []
    for mode in ("exactly_once", "at_least_once"):
        run = data[mode]
        rows.append([mode, f"{run['sent_valid']:,} + {run['sent_malformed']:,}", f"{run['answered']:,}",
                     str(run["lost"]), str(run["duplicated"]), str(run["unexpected"]),
                     f"{run['kills']} / {run['joins']} / {run['leaves']}"])  # fmt: skip
    columns = ["mode", "sent (valid + malformed)", "answered", "lost", "duplicated", "unexpected",
               "kill -9 / join / leave"]  # fmt: skip
    note = (
        f"{plan['queries']:,} queries over {plan['seconds']:.0f} s, {plan['workers']} workers at a time, "
        f"{plan['partitions']} partitions, Apache Kafka; counted by a read_committed reader."
    )
    return markdown_table(columns, rows, "lrrrrrr") + "\n\n" + note
