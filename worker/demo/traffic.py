"""Sample customer-support traffic for the demo: real questions, off-topic ones, and broken records."""

from __future__ import annotations

import random
from dataclasses import dataclass

import orjson

QUESTIONS = (
    "hey, where's my parcel? it's been 5 days",
    "I'd like to cancel the order I made this morning",
    "how do I send back a jacket that doesn't fit",
    "when will I get my money back for the returned shoes",
    "please ship my order to my office address instead",
    "tracking says delivered but there's nothing at my door",
    "the vase arrived in pieces",
    "my blender stopped working after 3 months, is it covered",
    "my card got declined at checkout",
    "you charged me twice for the same order!",
    "I need to change the credit card on my account",
    "can I get a PDF invoice for my company",
    "stop my monthly subscription please",
    "upgrade me to the premium plan",
    "forgot my password, can't log in",
    "my account says it's locked",
    "how do I change my email address",
    "please delete my account and all my data",
    "the discount code SPRING20 isn't working",
    "how much is left on my gift card",
    "is this laptop compatible with a 4k monitor",
    "are you open on sundays in the berlin store",
    "let me talk to a real person",
    "this is the worst service I've ever had",
)
OFF_TOPIC = (
    "what's the capital of australia",
    "write me a poem about the sea",
    "who won the football match yesterday",
    "what is 17 times 23",
)
MALFORMED: tuple[tuple[str, bytes], ...] = (
    ("invalid_json", b'{"id": "x", "text": '),
    ("empty_text", b'{"id": "e", "text": "   "}'),
    ("schema", b'{"text": "no id here"}'),
    ("not_object", b'["a", "list"]'),
    ("invalid_utf8", b'{"id": "b", "text": "\xff\xfe"}'),
)


@dataclass(frozen=True)
class Record:
    """One record to produce: key, value bytes, and what the demo expects of it."""

    key: bytes
    value: bytes
    expect: str  # "route", "no_match?" or the DLQ error code


def sample(count: int, seed: int = 7, malformed_every: int = 20) -> list[Record]:
    """``count`` records: mostly support questions, some off-topic, every Nth one malformed."""
    rng = random.Random(seed)
    out: list[Record] = []
    for i in range(count):
        key = f"conversation-{rng.randrange(50)}".encode()
        if malformed_every and i % malformed_every == malformed_every - 1:
            code, raw = MALFORMED[(i // malformed_every) % len(MALFORMED)]
            out.append(Record(key, raw, code))
            continue
        pool, expect = (OFF_TOPIC, "no_match?") if rng.random() < 0.1 else (QUESTIONS, "route")
        text = rng.choice(pool)
        value = orjson.dumps({"id": f"demo-{i}", "text": text, "metadata": {"channel": "chat", "n": i}})
        out.append(Record(key, value, expect))
    return out
