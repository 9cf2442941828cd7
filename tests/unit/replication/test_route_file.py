"""Route files: YAML or JSON, validated in full; every problem names its route and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from worker.contracts import Limits
from worker.replication import RouteFileError, load_route_file, parse_routes
from worker.replication.routefile import dump_routes

EXAMPLE = Path(__file__).parents[3] / "examples" / "routes.yaml"


def problems(document: object, limits: Limits | None = None) -> list[tuple[str, str]]:
    with pytest.raises(RouteFileError) as caught:
        parse_routes(document, "test", limits)
    return [(p.route, p.field) for p in caught.value.problems]


def test_the_example_route_set_is_valid_and_realistic() -> None:
    routes = load_route_file(EXAMPLE)
    assert 15 <= len(routes) <= 25
    assert all(8 <= len(r.utterances) <= 15 for r in routes)
    assert sum(bool(r.negative_utterances) for r in routes) >= 5
    assert len({r.name for r in routes}) == len(routes)


def test_yaml_and_json_files_give_the_same_routes(tmp_path: Path) -> None:
    document = [
        {"name": "billing", "utterances": ["pay my bill"], "threshold": 0.6, "metadata": {"team": "b"}}
    ]
    (tmp_path / "r.json").write_text(json.dumps(document))
    (tmp_path / "r.yaml").write_text("routes:\n  - name: billing\n    utterances: [pay my bill]\n"
                                     "    threshold: 0.6\n    metadata: {team: b}\n")  # fmt: skip
    assert load_route_file(tmp_path / "r.json") == load_route_file(tmp_path / "r.yaml")


def test_a_missing_field_names_the_route_by_position() -> None:
    assert problems([{"name": "ok", "utterances": ["x"]}, {"utterances": ["y"]}]) == [("#2", "name")]


def test_field_errors_name_the_route_and_the_field() -> None:
    found = problems(
        [
            {"name": "billing", "utterances": ["pay", "  "], "threshold": 2},
            {"name": "weather", "utterances": [], "colour": "blue"},
        ]
    )
    assert found == [
        ("'billing' (#1)", "utterances"),
        ("'billing' (#1)", "threshold"),
        ("'weather' (#2)", "utterances"),
        ("'weather' (#2)", "colour"),
    ]


def test_an_empty_utterance_says_which_one() -> None:
    with pytest.raises(RouteFileError, match=r"route 'a' \(#1\): utterances: .*utterance 1 is empty"):
        parse_routes([{"name": "a", "utterances": ["fine", " "]}], "test")


def test_negative_utterance_errors_name_the_item() -> None:
    found = problems([{"name": "a", "utterances": ["x"], "negative_utterances": ["ok", 3]}])
    assert found == [("'a' (#1)", "negative_utterances.1")]


def test_duplicate_names_are_refused() -> None:
    found = problems([{"name": "a", "utterances": ["x"]}, {"name": "a", "utterances": ["y"]}])
    assert found == [("'a' (#2)", "name")]


def test_a_route_larger_than_a_mutation_record_may_be_is_refused() -> None:
    big = {"name": "a", "utterances": ["word " * 200] * 10}
    assert problems([big], Limits(max_mutation_bytes=1024)) == [("'a' (#1)", "(route)")]


@pytest.mark.parametrize("document", [None, {"name": "a"}, "routes", 3])
def test_a_document_that_is_not_a_list_of_routes_is_refused(document: object) -> None:
    assert problems(document) == [("(file)", "document")]


def test_a_non_mapping_item_is_refused() -> None:
    assert problems([["a"]]) == [("#1", "(route)")]


def test_syntax_errors_are_reported_as_such(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("- name: a\n  utterances: [unclosed\n")
    with pytest.raises(RouteFileError) as caught:
        load_route_file(bad)
    assert caught.value.problems[0].field == "syntax"
    assert str(bad) in str(caught.value)


def test_an_unreadable_file_is_a_route_file_error(tmp_path: Path) -> None:
    with pytest.raises(RouteFileError, match="file"):
        load_route_file(tmp_path / "absent.yaml")


def test_every_problem_is_reported_at_once() -> None:
    document = [{"name": f"r{i}", "utterances": []} for i in range(5)]
    assert len(problems(document)) == 5


def test_dumped_routes_load_back_identically(tmp_path: Path) -> None:
    routes = load_route_file(EXAMPLE)
    copy = tmp_path / "copy.yaml"
    copy.write_text(dump_routes(routes))
    assert load_route_file(copy) == routes
