"""The pipeline on real texts against the naive encoder (pipeline.json), and the cache's effect
on repeated queries (pipeline_cache.json)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from readme_blocks import block, cpu_name, load, markdown_table


@block("pipeline-table")
def pipeline(results: Path) -> str:
    if not (results / "pipeline.json").is_file():
        return "Not measured on this branch yet: run `python benchmarks/pipeline.py`."
    data = load(results, "pipeline.json")
    figures, verdicts = data["results"], data["verdicts"]
    naive = figures["naive_encoder"]["per_second"]
    served = data["settings"]["served_defaults"]
    rows = []
    for run in sorted(figures["pipeline"], key=lambda r: (r["variant"], r["batch_size"])):
        encoder = figures["encoder"][run["variant"]][str(run["batch_size"])]
        sustained = run["sustained"]["per_second"]
        latency = run["latency_at_half_load"]["produce_to_intent_ms"]
        floor = run["broker_alone_at_half_load"]["produce_to_consumer_ms"]
        naive_alongside = run["naive_alongside"]["per_second"]
        default = (
            " (served defaults)"
            if [run["variant"], run["batch_size"]] == [served["variant"], served["batch_size"]]
            else ""
        )
        rows.append([
            f"{run['variant']}, batches of {run['batch_size']}{default}",
            f"{naive_alongside:.0f}",
            f"{encoder['per_second']:.0f} ({encoder['padding_share']:.0%} padding)",
            f"{sustained:.0f}",
            f"{run['pipeline_efficiency']:.0%}",
            f"{run['sustained_over_naive_alongside']:.2f}×",
            f"{latency['p50']:.0f} / {latency['p99']:.0f}",
            f"{floor['p50']:.0f} / {floor['p99']:.0f}",
            f"{100 * run['top1_accuracy_through_kafka']:.2f}%",
            _cpu(run["sustained"]),
            _cpu(run["latency_at_half_load"]),
        ])  # fmt: skip
    table = markdown_table(
        ["configuration", "naive encoder alongside, texts/s", "encoder alone, texts/s", "routed q/s",
         "÷ encoder alone", "÷ naive", "p50 / p99 ms at half load", "broker alone, p50 / p99 ms",
         "top-1", "vCPUs busy, sustained", "vCPUs busy, half load"],
        rows,
        "lrrrrrrrrrr",
    )  # fmt: skip
    targets = []
    for name, label in (("served_defaults", "served defaults"), ("best_config", "best configuration")):
        if name not in verdicts:
            continue
        v = verdicts[name]
        ratio, p99 = v["sustained_over_naive"], v["p99_at_half_load_ms"]
        targets.append([
            f"{label} ({v['variant']}, batches of {v['batch_size']})",
            f"{ratio['value']:.2f}× (target ≥ {ratio['target']:g}: {'met' if ratio['met'] else 'not met'})",
            f"{p99['value']:.1f} ms (target ≤ {p99['target']:g}: {'met' if p99['met'] else 'not met'})",
        ])  # fmt: skip
    noise = data["noise"]
    cache = load(results, "pipeline_cache.json")
    by_load = _latency_by_load(figures["pipeline"], served, verdicts.get("served_defaults", {}))
    zipf = cache["results"]["no_cache"]["zipf_no_cache"]["per_second"]
    warm = cache["results"]["cache"]["zipf_redis_cache_warm"]["per_second"]
    return "\n\n".join([
        table,
        markdown_table(["", "sustained ÷ naive encoder", "p99 produce → intent, half load"], targets, "lrr"),
        *by_load,
        f"The naive encoder (fp32, fastembed, batches of 32 in arrival order) is measured just "
        f"before and just after each worker, and the faster of the two is that row's reference; "
        f"the fastest of the whole run was {naive:.0f} texts/s, on {cpu_name(data['machine'])}. "
        f"Workers ran "
        f"{data['settings']['encoder_threads']} encoder session(s) of one thread each. vCPUs busy: "
        f"CPU seconds per second of the whole machine (of 2) and, in brackets, of the worker · "
        f"the broker · this benchmark (load generator and reader) · anything else. "
        f"Load average {noise['load_average_before'][0]:.1f} at the start, "
        f"{noise['load_average_after'][0]:.1f} at the end; steal {noise['steal_share']:.1%}; "
        f"{data['settings']['broker']} broker, {data['settings']['partitions']} partitions.",
        "![throughput and p99 against batch size and variant](benchmarks/results/pipeline.png)",
        f"Repeated queries (`python benchmarks/pipeline_cache.py`: 80% Zipf over 1,000 texts, "
        f"{cache['settings']['routes']:,} routes): {warm:.0f} queries/s with a warm Redis cache, "
        f"{warm / zipf:.1f}× without a cache.",
    ])  # fmt: skip


def _cpu(phase: dict[str, object]) -> str:
    shares = phase.get("cpu_per_wall_s")
    if not isinstance(shares, dict):
        return "–"  # runs from before the benchmark measured it
    parts = " · ".join(f"{shares[k]:.2f}" for k in ("worker", "broker", "benchmark", "rest"))
    return f"{shares['machine']:.2f} ({parts})"


def _latency_by_load(
    runs: list[dict[str, Any]], served: dict[str, Any], verdict: dict[str, Any]
) -> list[str]:
    """The served defaults' latency at half and at lower shares of their sustained rate, and the
    highest of those loads within the p99 target (runs from before the benchmark measured lower
    loads have none)."""
    wanted = [served["variant"], served["batch_size"]]
    run = next((r for r in runs if [r["variant"], r["batch_size"]] == wanted), None)
    if run is None or not run.get("latency_at_lower_loads"):
        return []
    loads = [{"fraction_of_sustained": 0.5, **run["latency_at_half_load"]}, *run["latency_at_lower_loads"]]
    rows = [
        [
            f"{at['fraction_of_sustained']:g} of sustained",
            f"{at['offered_per_second']:.0f}",
            f"{at['produce_to_intent_ms']['p50']:.0f} / {at['produce_to_intent_ms']['p99']:.0f}",
            f"{at['worker']['mean_batch_size']:.1f}",
            _cpu(at),
        ]
        for at in sorted(loads, key=lambda at: -at["fraction_of_sustained"])
    ]
    columns = ["served defaults, offered load", "queries/s", "p50 / p99 ms produce → intent", "mean batch",
               "vCPUs busy"]  # fmt: skip
    out = [markdown_table(columns, rows, "lrrrr")]
    if "p99_within_target_up_to" in verdict:
        target, within = verdict["p99_at_half_load_ms"]["target"], verdict["p99_within_target_up_to"]
        out.append(
            f"The served defaults' p99 is within {target:g} ms up to {within['fraction_of_sustained']:g} of "
            f"their sustained rate ({within['offered_per_second']:.0f} queries/s) among the loads measured."
            if within
            else f"The served defaults' p99 is above {target:g} ms at every load measured."
        )
    return out
