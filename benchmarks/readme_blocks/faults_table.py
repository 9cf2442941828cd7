"""The fault suite's outcome per scenario (faults.json) and the rebalance timings (rebalance.json)."""

from __future__ import annotations

from pathlib import Path

from readme_blocks import block, load, markdown_table


@block("faults-table")
def faults_table(results: Path) -> str:
    data = load(results, "faults.json")
    plan = data["plan"]
    rows = []
    for r in data["scenarios"]:
        sent = r["sent_valid"] + r["sent_malformed"] + r["sent_special"]
        codes = ", ".join(f"{code} {n}" for code, n in r["dead_lettered"].items())
        exits = ", ".join(f"{status}: {n}" for status, n in sorted(r["exits"].items()))
        outcome = r["error"] if r["error"] else str(r["answered"])
        rows.append([
            f"{r['scenario']} ({r['fault']})", str(r["workers"]), str(sent), outcome, str(r["lost"]),
            str(r["duplicated"]), codes, f"{r['longest_stall_s']:.1f} s", exits,
        ])  # fmt: skip
    table = markdown_table(
        ["scenario", "workers", "sent", "answered", "lost", "duplicated", "dead letters by code",
         "longest stall", "replica exits"],
        rows,
        "lrrrrrlrl",
    )  # fmt: skip
    lead = (
        f"{plan['queries']:,} queries per scenario over {plan['seconds']:g} s, every "
        f"{plan['malformed_every']}th malformed, {plan['partitions']} partitions; load average at the "
        f"start {data['machine']['load_average_at_start'][0]:.1f} on {data['machine']['cpus']} vCPUs."
    )
    notes = [
        f"- {r['scenario']}: "
        + "; ".join(
            [
                *r["notes"],
                *(f"a replica failed with `{why}`" for why in r.get("exit_reasons", [])),
                *(f"checked {check}" for check in r.get("checks", [])),
            ]
        )
        for r in data["scenarios"]
        if r["notes"]
    ]
    text = lead + "\n\n" + table + "\n\n" + "\n".join(notes)
    rebalance = results / "rebalance.json"
    if rebalance.exists():
        reb = load(results, "rebalance.json")
        timings = ", ".join(f"{r['change']} {r['seconds']:.2f} s" for r in reb["rebalances"])
        text += (
            f"\n\nRebalances of three workers under load (`python benchmarks/rebalance.py`, session "
            f"timeout {reb['session_timeout_ms'] / 1000:g} s): {timings}; longest "
            f"{reb['longest_s']:.2f} s."
        )
    return text
