"""Processing step: decode; reuse remembered decisions of repeated texts; embed the other texts
(through the cache), search and decide; build the output records.

Runs inside the batch span of :mod:`worker.pipeline.app` and adds a child span per step; the trace
context of each routed intent comes from :class:`QueryTracer`.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from opentelemetry.trace import Tracer

from worker.cache import AsyncEncoder, CachedEncoder
from worker.config import Settings
from worker.contracts import encode
from worker.contracts.evolution import FirstSightings
from worker.errors import ErrorCode
from worker.pipeline.decisions import DecisionMemo, RouterState, router_state, same_state
from worker.pipeline.decode import Accepted, Rejected, dead_letter, decode_batch
from worker.pipeline.embed import embed_isolating, unique_texts
from worker.pipeline.failpoints import route_failpoint
from worker.pipeline.intents import build_intent
from worker.pipeline.query_trace import QueryTracer
from worker.pipeline.search import SearchThread
from worker.pipeline.types import InputRecord, Outbound
from worker.routing import Decision, Router
from worker.routing.explain import ROUTES as EXPLAINED_ROUTES
from worker.routing.explain import Explanation
from worker.telemetry import PipelineMetrics

logger = logging.getLogger(__name__)


@dataclass
class ProcessedBatch:
    """A batch's output records and what is needed to account for them once acknowledged.

    ``matched`` and ``routed_timestamps_ms`` run parallel to ``intents`` (whether the intent names
    a route, and its query's timestamp), so an intent dead-lettered at produce time can be left out.
    """

    trace: QueryTracer
    intents: list[Outbound] = field(default_factory=list)
    dead_letters: list[Outbound] = field(default_factory=list)
    routed_timestamps_ms: list[int] = field(default_factory=list)
    matched: list[bool] = field(default_factory=list)
    dead_codes: list[str] = field(default_factory=list)

    @property
    def outbounds(self) -> list[Outbound]:
        """Every record to produce, intents first (both in consumption order)."""
        return self.intents + self.dead_letters

    @property
    def routed(self) -> int:
        """Intents that name a route."""
        return sum(self.matched)

    @property
    def no_match(self) -> int:
        """Intents with no match."""
        return len(self.matched) - self.routed


def _ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000


class BatchProcessor:
    """Turns consumed records into routed intents and dead letters; :meth:`close` when done."""

    def __init__(
        self,
        settings: Settings,
        encoder: AsyncEncoder,
        router: Router,
        tracer: Tracer,
        metrics: PipelineMetrics,
        *,
        remember_decisions: int = 0,
    ) -> None:
        self._settings = settings
        self._limits = settings.limits
        self._encoder = encoder
        self._model = encoder.encoder if isinstance(encoder, CachedEncoder) else encoder
        self.router = router
        self._tracer = tracer
        self._metrics = metrics
        self._search = SearchThread(failpoint=route_failpoint())  # off unless the fault suite sets it
        self._memo = DecisionMemo(remember_decisions)
        self._unknown_seen = FirstSightings()
        metrics.unknown_fields(settings.topic_queries, 0)  # exported from the start: rate() has a base

    def close(self) -> None:
        """Stop the search thread."""
        self._search.close()

    def dead_letter_of(self, record: Outbound, code: ErrorCode, reason: str) -> Outbound | None:
        """The dead letter of the query a routed intent answers (None for a record without one)."""
        if record.source is None:
            return None
        return dead_letter(
            Rejected(record.source, code, reason), self._settings.topic_dlq, self._settings.replica_id
        )

    def _count_unknown_fields(self, unknown: Counter[str]) -> None:
        topic = self._settings.topic_queries
        self._metrics.unknown_fields(topic, unknown.total())
        for path in self._unknown_seen.new(unknown):
            logger.info(
                "queries on %s carry field %r, unknown to this version: ignored (contract mode tolerant)",
                topic,
                path,
            )

    def _reject(self, out: ProcessedBatch, rejected: Rejected) -> None:
        out.dead_letters.append(dead_letter(rejected, self._settings.topic_dlq, self._settings.replica_id))
        out.dead_codes.append(rejected.code.value)

    async def process(
        self, records: Sequence[InputRecord], on_embedded: Callable[[], None] = lambda: None
    ) -> ProcessedBatch:
        """Every record becomes exactly one output record: an intent or a dead letter.

        ``on_embedded`` is called as soon as the batch no longer needs the encoder.
        """
        started_ns = time.time_ns()
        out = ProcessedBatch(QueryTracer(self._tracer, started_ns))
        self._metrics.batch_size(len(records))
        with self._tracer.start_as_current_span("routeworker.decode"):
            decoded = decode_batch(records, self._limits)
        if decoded.unknown_fields:
            self._count_unknown_fields(decoded.unknown_fields)
        for rejected in decoded.rejected:
            self._reject(out, rejected)
        accepted = decoded.accepted
        if not accepted:
            on_embedded()
            return out
        unique = unique_texts([a.query.text for a in accepted])
        top_n = [0] * len(unique.texts)
        explained: set[int] = set()  # texts some query wants explained: decided afresh, never memoised
        for a, i in zip(accepted, unique.index, strict=True):
            top_n[i] = max(top_n[i], a.query.top_n or self._settings.top_n)
            if self._wants_explanation(a):
                explained.add(i)
                top_n[i] = max(top_n[i], EXPLAINED_ROUTES)  # the runner-up and the routes explained
        state = router_state(self.router)
        snapshot, head = self.router.table.snapshot(), self.router.head  # what the explanations read
        decisions = self._remembered(unique.texts, top_n, state, skip=explained)
        wanted = [i for i in range(len(unique.texts)) if i not in decisions]
        with self._tracer.start_as_current_span("routeworker.embed", attributes={"texts": len(wanted)}):
            clock = time.perf_counter()
            embedded = await embed_isolating(
                self._encoder, [unique.texts[i] for i in wanted], model=self._model
            )
            embed_ms = _ms_since(clock)
        on_embedded()
        self._metrics.embed_ms(embed_ms)
        failed = {wanted[j]: (ErrorCode.PROCESSING, reason) for j, reason in embedded.failed.items()}
        explanations: dict[int, Explanation] = {}
        routable = [j for j in range(len(wanted)) if j not in embedded.failed]
        with self._tracer.start_as_current_span("routeworker.search", attributes={"queries": len(routable)}):
            clock = time.perf_counter()
            if routable:
                searched = await self._search.decide_isolating(
                    self.router,
                    embedded.vectors[routable],
                    [top_n[wanted[j]] for j in routable],
                    [unique.texts[wanted[j]] for j in routable],
                )
                unchanged = same_state(state, router_state(self.router))
                for row, reason in searched.failed.items():
                    failed[wanted[routable[row]]] = (ErrorCode.ROUTING_FAILED, reason)
                for row, decision in searched.decisions.items():
                    i = wanted[routable[row]]
                    decisions[i] = decision
                    if unchanged and i not in explained:
                        self._memo.put((unique.texts[i], top_n[i]), decision, state)
                why = [j for j in routable if wanted[j] in explained and wanted[j] in decisions]
                if why:
                    try:
                        reasons = await self._search.explain(
                            self.router,
                            snapshot,
                            head,
                            embedded.vectors[why],
                            [decisions[wanted[j]] for j in why],
                        )
                    except Exception:  # an explanation is extra: its failure must not fail the answers
                        logger.exception("explaining %d decisions failed: their intents go without", len(why))
                    else:
                        explanations = {wanted[j]: r for j, r in zip(why, reasons, strict=True)}
            search_ms = _ms_since(clock)
        self._metrics.search_ms(search_ms)
        facts = _BatchFacts(self._encoder.fingerprint, started_ns / 1e6, embed_ms, search_ms)
        for a, i in zip(accepted, unique.index, strict=True):
            if i in failed:
                code, reason = failed[i]
                self._reject(out, Rejected(a.record, code, reason))
            else:
                why_this = explanations.get(i) if self._wants_explanation(a) else None
                self._route(out, a, decisions[i], facts, why_this)
        return out

    def _wants_explanation(self, accepted: Accepted) -> bool:
        return accepted.query.explain or self._settings.explain_all

    def _remembered(
        self, texts: list[str], top_n: list[int], state: RouterState, skip: set[int]
    ) -> dict[int, Decision]:
        """Decisions the memo holds for this router state: those texts need neither embedding nor
        search. New decisions are kept only if the state read after deciding is still the one the
        memo serves (see :meth:`DecisionMemo.put`)."""
        self._memo.use(state)
        found: dict[int, Decision] = {}
        for i, text in enumerate(texts):
            if i in skip:
                continue
            remembered = self._memo.get((text, top_n[i]))
            if remembered is not None:
                found[i] = remembered
        self._metrics.decisions_remembered(len(found))
        return found

    def _route(
        self,
        out: ProcessedBatch,
        accepted: Accepted,
        decision: Decision,
        batch: _BatchFacts,
        explanation: Explanation | None = None,
    ) -> None:
        try:
            intent = encode(
                build_intent(
                    accepted,
                    decision,
                    accepted.query.top_n or self._settings.top_n,
                    model=batch.model,
                    worker=self._settings.replica_id,
                    batch_started_ms=batch.started_ms,
                    embed_ms=batch.embed_ms,
                    search_ms=batch.search_ms,
                    explanation=explanation,
                )
            )
        # an intent that cannot be built (a decision the contract refuses) is that query's
        # failure alone: it is dead-lettered, the batch goes on
        except Exception as error:  # noqa: BLE001
            reason = f"routing failed: the routed intent cannot be built: {type(error).__name__}: {error}"
            self._reject(out, Rejected(accepted.record, ErrorCode.ROUTING_FAILED, reason))
            return
        headers = out.trace.headers(accepted, decision)
        out.intents.append(
            Outbound(
                self._settings.topic_intents,
                accepted.record.key,
                intent,
                headers,
                source=accepted.record,
                origin=accepted.record.topic_partition,
            )
        )
        out.routed_timestamps_ms.append(accepted.record.timestamp_ms)
        out.matched.append(decision.route is not None)


@dataclass(frozen=True, slots=True)
class _BatchFacts:
    model: str
    started_ms: float
    embed_ms: float
    search_ms: float
