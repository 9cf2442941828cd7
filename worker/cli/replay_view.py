"""How `routes apply --replay` shows a replay: the impact as text, or as JSON for tools.

Query texts are shown only when asked (``show_examples``); query metadata is never read into the
report, so it cannot be shown. A sample with nothing to replay (empty, or only malformed records)
is one line (:func:`nothing_to_replay`).
"""

from __future__ import annotations

from typing import Any

from rich.console import Console

from worker.app.replay import ReplayReport
from worker.cli.console import table
from worker.routing.impact import AffectedQuery, RouteImpact

NO_MATCH = "(no match)"
#: moves listed in the text report (the largest; JSON lists every one)
MOVES_SHOWN = 20


def route_label(route: str | None) -> str:
    return NO_MATCH if route is None else route


def nothing_to_replay(report: ReplayReport, topic: str) -> str | None:
    """One line when the sample holds no query to replay (None when it holds some)."""
    if report.impact.queries > 0:
        return None
    if report.records == 0:
        return f"replay: {topic} holds no records in {report.sample}: nothing to replay"
    reasons = ", ".join(f"{code} {n}" for code, n in sorted(report.malformed.items()))
    if report.malformed_total == report.records:
        return f"replay: all {report.records} records of {report.sample} are malformed ({reasons})"
    return f"replay: none of the {report.queries} queries of {report.sample} could be embedded" + (
        f"; {report.malformed_total} malformed records ({reasons})" if reasons else ""
    )


def print_replay(report: ReplayReport, topic: str, out: Console, *, show_examples: bool) -> None:
    """The impact as tables: the share that moves, the moves, the most affected queries, timings."""
    impact = report.impact
    line = nothing_to_replay(report, topic)
    if line is not None:
        out.print(f"[yellow]{line}; the plan above is structural only[/yellow]")
        return
    out.print(_sample_line(report, topic))
    out.print(f"current table: {report.current_calibration}")
    out.print(f"planned table: {report.planned_calibration}")
    out.print(f"[bold]{impact.changed} of {impact.queries} queries change route ({impact.share:.1%})[/bold]")
    if impact.moves:
        shown = impact.moves[:MOVES_SHOWN]
        rows = [(route_label(m.source), route_label(m.target), m.count) for m in shown]
        title = "Moves" if len(shown) == len(impact.moves) else f"Moves (the {len(shown)} largest)"
        out.print(table(title, ("from", "to", "queries"), rows))
        rest = impact.moves[MOVES_SHOWN:]
        if rest:
            out.print(
                f"and {len(rest)} smaller moves of {sum(m.count for m in rest)} queries "
                "(--output json lists every move)"
            )
        out.print(_examples_table(impact, show_examples))
        if not show_examples:
            out.print("query texts are hidden: --show-examples shows them")
    out.print(_timing_line(report))


def _sample_line(report: ReplayReport, topic: str) -> str:
    malformed = ""
    if report.malformed_total:
        reasons = ", ".join(f"{code} {n}" for code, n in sorted(report.malformed.items()))
        malformed = f", {report.malformed_total} malformed ({reasons})"
    unembeddable = f", {report.unembeddable} the model cannot embed" if report.unembeddable else ""
    return (
        f"replayed {report.sample} of {topic}: {report.records} records{malformed}, "
        f"{report.queries} queries{unembeddable}"
    )


def _timing_line(report: ReplayReport) -> str:
    rate = report.embedded / report.embed_seconds if report.embed_seconds > 0 else 0.0
    return (
        f"embedded {report.embedded} distinct texts in {report.embed_seconds:.2f} s ({rate:.0f}/s) "
        f"with {report.model}; sample read in {report.read_seconds:.2f} s, tables built in "
        f"{report.tables_seconds:.2f} s, routed in {report.route_seconds:.2f} s"
    )


def _examples_table(impact: RouteImpact, show_examples: bool) -> Any:
    columns = ["query id", "from", "score", "to", "score"] + (["text"] if show_examples else [])
    rows = [
        [q.id, route_label(q.before), q.before_score, route_label(q.after), q.after_score]
        + ([q.text] if show_examples else [])
        for q in impact.examples
    ]
    title = f"Most affected queries ({len(impact.examples)} of {impact.changed}, largest score change first)"
    return table(title, columns, rows)


def replay_json(report: ReplayReport, *, show_examples: bool) -> dict[str, Any]:
    """The report as JSON-ready data (texts only with ``show_examples``)."""
    impact = report.impact
    return {
        "sample": report.sample,
        "records": report.records,
        "malformed": report.malformed,
        "queries": report.queries,
        "unembeddable": report.unembeddable,
        "replayed": impact.queries,
        "changed": impact.changed,
        "changed_share": round(impact.share, 6),
        "moves": [{"from": m.source, "to": m.target, "count": m.count} for m in impact.moves],
        "examples": [_example(q, show_examples) for q in impact.examples],
        "answers_before": _counts(impact.before_counts),
        "answers_after": _counts(impact.after_counts),
        "current_calibration": report.current_calibration,
        "planned_calibration": report.planned_calibration,
        "model": report.model,
        "embedded_texts": report.embedded,
        "seconds": {
            "read_sample": round(report.read_seconds, 3),
            "build_tables": round(report.tables_seconds, 3),
            "embed": round(report.embed_seconds, 3),
            "route": round(report.route_seconds, 3),
        },
    }


def _example(query: AffectedQuery, show_examples: bool) -> dict[str, Any]:
    shown: dict[str, Any] = {
        "id": query.id,
        "from": query.before,
        "from_score": query.before_score,
        "to": query.after,
        "to_score": query.after_score,
    }
    if show_examples:
        shown["text"] = query.text
    return shown


def _counts(counts: dict[str | None, int]) -> list[dict[str, Any]]:
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0] or ""))
    return [{"route": route, "count": n} for route, n in ordered]
