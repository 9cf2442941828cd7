"""The Kafka query pipeline: batches of queries in, routed intents and dead letters out."""

from worker.pipeline.app import QueryPipeline
from worker.pipeline.batcher import Batcher
from worker.pipeline.commit import Committer
from worker.pipeline.decode import DecodedBatch, dead_letter, decode_batch
from worker.pipeline.errors import PipelineError, ShutdownTimeout
from worker.pipeline.intents import build_intent, render_version
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
    "OffsetTracker",
    "Outbound",
    "PipelineError",
    "ProcessedBatch",
    "QueryPipeline",
    "ShutdownTimeout",
    "build_intent",
    "dead_letter",
    "decode_batch",
    "render_version",
]
