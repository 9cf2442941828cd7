"""The routed intent: contract fields, trimmed candidates, version rendering, timings."""

from __future__ import annotations

from worker.contracts import Query
from worker.pipeline import InputRecord, build_intent, render_version
from worker.pipeline.decode import Accepted
from worker.routing import Candidate, Decision


def test_routes_version_renders_partition_to_next_offset() -> None:
    assert render_version(((0, 17), (3, 4))) == {"0": 17, "3": 4}
    assert render_version(()) == {}


def test_intent_keeps_the_query_id_and_metadata_and_trims_candidates() -> None:
    record = InputRecord("queries", 0, 5, 1_000, b"k", b"")
    query = Query(id="q-1", text="hello", metadata={"user": {"id": 7}})
    decision = Decision(
        "greeting",
        0.9,
        (Candidate("greeting", 0.9), Candidate("farewell", 0.4), Candidate("x", 0.1)),
        ((0, 8),),
    )
    intent = build_intent(
        Accepted(record, query),
        decision,
        2,
        model="m@fp32:1",
        worker="r1",
        batch_started_ms=1_010,
        embed_ms=3.5,
        search_ms=1.25,
        now_ms=1_020,
    )
    assert intent.query_id == "q-1"
    assert intent.route == "greeting"
    assert [c.route for c in intent.candidates] == ["greeting", "farewell"]
    assert intent.routes_version == {"0": 8}
    assert intent.metadata == {"user": {"id": 7}}
    assert (intent.model, intent.worker) == ("m@fp32:1", "r1")
    assert intent.timings.queue_ms == 10
    assert intent.timings.total_ms == 20
    assert (intent.timings.embed_ms, intent.timings.search_ms) == (3.5, 1.25)


def test_no_match_is_a_null_route_and_clock_skew_never_gives_negative_times() -> None:
    record = InputRecord("queries", 0, 5, 5_000, None, b"")
    intent = build_intent(
        Accepted(record, Query(id="q", text="t")),
        Decision(None, 0.1, (), ()),
        3,
        model="m",
        worker="w",
        batch_started_ms=4_000,
        embed_ms=0,
        search_ms=0,
        now_ms=4_500,
    )
    assert intent.route is None
    assert intent.timings.queue_ms == 0
    assert intent.timings.total_ms == 0
