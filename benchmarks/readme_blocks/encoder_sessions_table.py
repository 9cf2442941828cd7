"""One encoder session against sessions sharing every call, from encoder_sessions.json."""

from __future__ import annotations

from pathlib import Path

from readme_blocks import block, cpu_name, load, markdown_table


@block("encoder-sessions-table")
def encoder_sessions(results: Path) -> str:
    data = load(results, "encoder_sessions.json")
    settings = data["settings"]
    calls = [str(c) for c in settings["calls"]]
    rows = []
    for variant, setups in data["variants"].items():
        for name, cells in setups.items():
            rows.append([
                f"{variant}, {name}",
                *(f"{cells[c]['texts_per_s_median']:.0f} · {cells[c]['call_ms_median']:.1f} ms · "
                  f"{cells[c]['vs_one_session']:.2f}×" for c in calls),
            ])  # fmt: skip
    table = markdown_table(
        ["set-up", *(f"calls of {c}" for c in calls)],
        rows,
        "l" + "r" * len(calls),
    )
    topology = data["machine"]["topology"]
    siblings = ", ".join(f"CPU {cpu}: {sib}" for cpu, sib in topology["thread_siblings"].items())
    noise = data["noise"]
    return (
        table
        + "\n\nEach cell: texts per second · median time of a call · speed over one session. "
        + f"{settings['texts']} texts ({settings['workload']}), one call at a time, one intra-op "
        f"thread a session, median of {settings['repetitions']} alternating repetitions, on "
        f"{cpu_name(data['machine'])}. The kernel's "
        f"CPUs sharing a core: {siblings}. Load average {noise['load_average_before'][0]} at the start, "
        f"{noise['load_average_after'][0]} at the end."
    )
