"""Route definitions made without pydantic's validation (the replay's fast path) are exactly what
validation makes of the same document, and anything it is unsure of goes to validation."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from worker.contracts import Limits, RouteDefinition, ShippedEmbeddings, decode_mutation
from worker.contracts.mutation import constructed_definition
from worker.errors import ContractError

VECTORS = ShippedEmbeddings.encode_matrix(np.eye(2, 4, dtype=np.float32))


def document(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": "billing",
        "utterances": ["pay my bill", "invoice"],
        "negative_utterances": [],
        "threshold": None,
        "metadata": {"team": "a"},
        "embeddings": {"fingerprint": "m:1", "dim": 4, "utterances": VECTORS, "negative_utterances": ""},
    }
    doc.update(changes)
    return {key: value for key, value in doc.items() if value is not ...}


def validated(doc: dict[str, Any]) -> RouteDefinition | None:
    try:
        return RouteDefinition.model_validate(doc)
    except ValidationError:
        return None


def check_agrees(doc: dict[str, Any]) -> RouteDefinition | None:
    """The fast path's answer for ``doc``, checked against validation's."""
    made = constructed_definition(doc)
    if made is not None:
        expected = validated(doc)
        assert expected is not None, "constructed a definition validation refuses"
        assert made == expected
        assert made.model_dump() == expected.model_dump()
        assert made.model_fields_set == expected.model_fields_set
        if expected.embeddings is not None:
            assert made.embeddings is not None
            for field, rows in (("utterances", len(doc["utterances"])), ("negative_utterances", 0)):
                assert np.array_equal(
                    made.embeddings.matrix(field, rows), expected.embeddings.matrix(field, rows)
                )
    return made


def test_the_shape_a_publisher_writes_is_constructed() -> None:
    assert check_agrees(document()) is not None
    assert check_agrees(document(embeddings=None, negative_utterances=..., metadata=...)) is not None
    assert check_agrees(document(threshold=1)) is not None  # made a float, as validation does
    assert check_agrees(document(threshold=-0.25)) is not None


@pytest.mark.parametrize(
    "changes",
    [
        {"name": "billing "}, {"name": " billing"}, {"name": "bill\ning"}, {"name": "billing\u00a0"},
        {"name": "bill\u2028ing"}, {"name": ""}, {"name": "x" * 201}, {"name": "__routeworker__/x"},
        {"name": 3}, {"utterances": []}, {"utterances": ["ok", "  "]}, {"utterances": "pay"},
        {"utterances": ["ok", 3]}, {"negative_utterances": [""]}, {"threshold": True},
        {"threshold": 1.5}, {"threshold": "0.5"}, {"metadata": []}, {"colour": "red"},
        {"embeddings": {"fingerprint": "m:1", "dim": 4, "utterances": VECTORS, "extra": 1}},
        {"embeddings": {"fingerprint": "", "dim": 4, "utterances": VECTORS}},
        {"embeddings": {"fingerprint": "m:1", "dim": True, "utterances": VECTORS}},
        {"embeddings": {"fingerprint": "m:1", "dim": 4.0, "utterances": VECTORS}},
        {"embeddings": {"fingerprint": "m:1", "dim": 3, "utterances": VECTORS}},
        {"embeddings": {"fingerprint": "m:1", "dim": 4, "utterances": VECTORS[:-4]}},
        {"embeddings": {"fingerprint": "m:1", "dim": 4, "utterances": "!!" + VECTORS[2:]}},
        {"embeddings": {"fingerprint": "m:1", "dim": 4, "utterances": VECTORS,
                        "negative_utterances": VECTORS}},
        {"embeddings": []},
    ],
)  # fmt: skip
def test_anything_unusual_is_left_to_validation(changes: dict[str, Any]) -> None:
    assert check_agrees(document(**changes)) is None


@pytest.mark.parametrize(
    "changes", [{"name": "billing "}, {"utterances": ["ok", "  "]}, {"threshold": 1.5}, {"colour": "red"},
                {"embeddings": {"fingerprint": "m:1", "dim": 4, "utterances": VECTORS[:-4]}}],
)  # fmt: skip
def test_decoding_answers_as_validation_does(changes: dict[str, Any]) -> None:
    raw = orjson.dumps(document(**changes))
    unknown: Counter[str] = Counter()
    expected = validated(orjson.loads(raw))
    if expected is None:
        with pytest.raises(ContractError, match="breaks its schema"):
            decode_mutation(b"billing", raw, Limits(), unknown)
    else:
        assert decode_mutation(b"billing", raw, Limits(), unknown).definition == expected
        assert unknown == Counter({"colour": 1})


texts = st.one_of(st.text(max_size=6), st.integers(), st.none())
documents = st.fixed_dictionaries(
    {"name": st.one_of(st.text(max_size=8), st.integers()),
     "utterances": st.one_of(st.lists(texts, max_size=3), texts)},
    optional={
        "negative_utterances": st.lists(texts, max_size=2),
        "threshold": st.one_of(st.none(), st.floats(allow_nan=False), st.integers(-2, 2), st.booleans()),
        "metadata": st.one_of(
            st.dictionaries(st.text(max_size=3), st.integers(), max_size=2), st.lists(st.integers())
        ),
        "embeddings": st.one_of(st.none(), st.fixed_dictionaries(
            {"fingerprint": st.text(max_size=3),
             "dim": st.one_of(st.integers(0, 5), st.booleans(), st.floats(0, 5)),
             "utterances": st.sampled_from(["", VECTORS, VECTORS[:8], "AAAAAAAAAAA="])},
            optional={"negative_utterances": st.sampled_from(["", VECTORS[:8]])},
        )),
        "extra": st.integers(),
    },
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@example({"name": "\x08", "utterances": ["0"]})  # a control character: validation only
@given(documents)
def test_generated_documents_construct_only_what_validation_accepts_equally(doc: dict[str, Any]) -> None:
    made = check_agrees(doc)
    expected = validated(doc)
    plain = "extra" not in doc and (
        expected is None or expected.embeddings is None or "negative_utterances" in doc
    )
    name = doc["name"]
    if expected is not None and plain and type(name) is str and name.isascii() and name.isprintable():
        # the shape a writer of this version makes: the fast path takes it (a name with a control
        # character, which the model's pattern allows, is left to validation)
        assert made is not None
