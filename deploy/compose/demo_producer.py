"""Demo producer of the compose stack: a steady trickle of user queries into the `queries` topic.

Runs inside the routeworker image (``python /app/deploy/demo_producer.py``) and reads the same
``ROUTEWORKER_*`` settings as the workers (bootstrap, topic, SASL/SSL). Every ``--bad-every``-th
record is deliberately malformed, so the dead-letter topic has something to show. Keys are
conversation ids: records of one conversation stay in order on one partition.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import uuid
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer

from worker.config import Settings, load_settings
from worker.contracts import Query, encode
from worker.kafka_client import client_options

logger = logging.getLogger("demo_producer")

# phrased unlike the utterances of examples/routes.yaml (an online shop's support routes), plus
# a few that should match nothing
SAMPLE_QUERIES = (
    "hey, where's the parcel I ordered on monday?",
    "please cancel order 51234, I bought it by mistake",
    "I'd like to send these shoes back",
    "still waiting for my money back from the return",
    "I moved, can you ship to my new address instead",
    "the tracking says delivered but nothing is at my door",
    "the mug arrived in pieces",
    "my blender stopped working after two months, is it covered",
    "my card keeps getting declined at checkout",
    "you took the payment twice",
    "I need a receipt for my company",
    "how do I stop my monthly box",
    "I forgot my password",
    "does the discount code SPRING10 still work",
    "can I speak to a real person",
    "what's the capital of Peru",
    "tell me a joke",
)

# each kind ends up in the DLQ with its own error code
MALFORMED = (
    b"this is not json",
    b'{"id": "demo-bad", "text": "   "}',
    b'{"text": "no id at all"}',
    b"\xff\xfe not utf-8",
)


def producer_options(settings: Settings) -> dict[str, Any]:
    """aiokafka producer options: the worker's own connection options (bootstrap, TLS, SASL) and
    acknowledgement by every in-sync replica."""
    return {
        **client_options(settings),
        "client_id": f"{settings.kafka_client_id}-demo-producer",
        "acks": "all",
    }


def demo_record(run: str, index: int, bad_every: int) -> tuple[bytes, bytes]:
    """The key and value of record ``index``: a valid query, or every ``bad_every``-th a bad one."""
    key = f"conversation-{index % 8}".encode()
    if bad_every > 0 and (index + 1) % bad_every == 0:
        return key, MALFORMED[(index // bad_every) % len(MALFORMED)]
    text = SAMPLE_QUERIES[index % len(SAMPLE_QUERIES)]
    return key, encode(Query(id=f"demo-{run}-{index}", text=text, metadata={"source": "demo-producer"}))


async def produce(settings: Settings, *, count: int, rate: float, bad_every: int) -> int:
    """Send ``count`` records (0 = until cancelled) at ``rate`` per second; return how many were acked."""
    run = uuid.uuid4().hex[:8]
    interval = 1.0 / rate if rate > 0 else 0.0
    producer = AIOKafkaProducer(**producer_options(settings))
    await producer.start()
    sent = 0
    try:
        while count == 0 or sent < count:
            key, value = demo_record(run, sent, bad_every)
            await producer.send_and_wait(settings.topic_queries, value, key=key)
            sent += 1
            if sent % 100 == 0:
                logger.info("sent %d records to %s", sent, settings.topic_queries)
            if interval:
                await asyncio.sleep(interval)  # pacing, not synchronisation
    finally:
        await producer.stop()
    return sent


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=0, help="records to send; 0 = until stopped")
    parser.add_argument("--rate", type=float, default=5.0, help="records per second; 0 = as fast as acked")
    parser.add_argument("--bad-every", type=int, default=25, help="every N-th record is malformed; 0 = never")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_settings()
    try:
        sent = asyncio.run(produce(settings, count=args.count, rate=args.rate, bad_every=args.bad_every))
    except KeyboardInterrupt:
        return 130
    logger.info("done: %d records sent", sent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
