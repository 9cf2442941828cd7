"""schemas/ must equal what the pydantic models export: a drift fails here."""

from __future__ import annotations

from pathlib import Path

from worker.cli.main import main
from worker.contracts.schemas import TOPIC_MESSAGES, render_schemas

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def test_checked_in_schemas_match_models() -> None:
    rendered = render_schemas()
    assert set(rendered) == {p.name for p in SCHEMAS.glob("*.schema.json")}
    for name, body in rendered.items():
        assert (SCHEMAS / name).read_bytes() == body, (
            f"schemas/{name} is stale: run `routeworker schemas export`"
        )


def test_every_topic_has_a_schema() -> None:
    assert set(TOPIC_MESSAGES) == {"queries", "routed-intents", "route-mutations", "queries.dlq"}


def test_check_command_detects_drift(tmp_path: Path) -> None:
    assert main(["schemas", "export", "--dir", str(tmp_path)]) == 0
    assert main(["schemas", "check", "--dir", str(tmp_path)]) == 0
    (tmp_path / "queries.schema.json").write_text("{}")
    assert main(["schemas", "check", "--dir", str(tmp_path)]) == 1


def test_the_explain_field_and_the_explanation_are_in_the_schemas() -> None:
    import json

    queries = json.loads((SCHEMAS / "queries.schema.json").read_text())
    assert queries["properties"]["explain"]["default"] is False
    intents = json.loads((SCHEMAS / "routed-intents.schema.json").read_text())
    assert "explanation" in intents["properties"]
    explanation = intents["$defs"]["Explanation"]
    assert set(explanation["properties"]["rule"]["enum"]) == {
        "matched",
        "below_threshold",
        "within_margin",
        "no_candidates",
    }
    reason = intents["$defs"]["RouteReason"]["properties"]
    assert {"knn_score", "head_probability", "head_share", "threshold", "nearest"} <= set(reason)
