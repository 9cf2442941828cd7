"""The Kafka query pipeline: batches of queries in, routed intents and dead letters out.

One step per module (batcher, backpressure, decode, embed, search, produce, offsets, commit,
rebalance), glued by :class:`QueryPipeline`. It knows the routing engine and the embedding cache,
never the mutation log: the application layer (:mod:`worker.app`) hands it a router over a live
table. The Kafka clients it needs are the protocols of :mod:`worker.pipeline.kafka`.
"""

from worker.pipeline.app import QueryPipeline
from worker.pipeline.batcher import Batcher
from worker.pipeline.commit import Committer
from worker.pipeline.decode import DecodedBatch, dead_letter, decode_batch
from worker.pipeline.errors import PipelineError, ShutdownTimeout
from worker.pipeline.intents import build_intent, render_version
from worker.pipeline.kafka import KafkaRecord, OutputProducer, QueryConsumer
from worker.pipeline.offsets import InFlightBatch, OffsetTracker
from worker.pipeline.process import BatchProcessor, ProcessedBatch
from worker.pipeline.produce import Delivery
from worker.pipeline.types import InputRecord, Outbound

__all__ = [
    "BatchProcessor",
    "Batcher",
    "Committer",
    "DecodedBatch",
    "Delivery",
    "InFlightBatch",
    "InputRecord",
    "KafkaRecord",
    "OffsetTracker",
    "Outbound",
    "OutputProducer",
    "PipelineError",
    "ProcessedBatch",
    "QueryConsumer",
    "QueryPipeline",
    "ShutdownTimeout",
    "build_intent",
    "dead_letter",
    "decode_batch",
    "render_version",
]
