"""The report of `routes apply --dry-run --replay` (replay_report.txt) and its timing (replay.json)."""

from __future__ import annotations

from pathlib import Path

from readme_blocks import block, load


@block("replay-report")
def replay_report(results: Path) -> str:
    data = load(results, "replay.json")
    text = (results / "replay_report.txt").read_text(encoding="utf-8").rstrip()
    replay = data["report"]["replay"]
    seconds = replay["seconds"]
    machine = data["machine"]
    broker = {"kafka": "Apache Kafka", "tansu": "Tansu"}[data["broker"]]
    rate = replay["embedded_texts"] / seconds["embed"]
    rest = data["replay_json_wall_s"] - sum(seconds.values())
    loads = f"{data['load_average_before'][0]:.1f} before, {data['load_average_after'][0]:.1f} after"
    timing = (
        f"The same replay with `--output json` (the figures kept in benchmarks/results/replay.json): "
        f"{replay['replayed']:,} queries in {data['replay_json_wall_s']:.1f} s for the whole command, "
        f"on {machine['cpus']} vCPUs ({machine['cpu']}) shared with other work (load average {loads}), "
        f"{broker}: embedding {replay['embedded_texts']:,} distinct texts {seconds['embed']:.1f} s "
        f"({rate:.0f} texts/s), building both tables {seconds['build_tables']:.1f} s (embedding "
        f"their routes), reading the sample {seconds['read_sample']:.2f} s, routing it through both "
        f"{seconds['route']:.2f} s, and {rest:.1f} s starting, loading the model, reading the "
        f"mutation log and the self-fit of the planned table. From `{data['command'].strip()}`."
    )
    merged = data["split"]["merged"]
    split = sum(m["count"] for m in replay["moves"] if m["from"] == merged)
    reading = (
        f"{split} of the {replay['changed']} queries that change route leave `{merged}`; the others "
        "move because the planned table is served with a calibration of its own (self-fit again for "
        "the new set of routes, as `routes apply` would publish it): the side effect a structural "
        "plan does not show."
    )
    return f"```console\n$ {data['text_command']}\n{text}\n```\n\n{reading}\n\n{timing}"
