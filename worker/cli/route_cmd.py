"""`routeworker route "text" ... [--file F]`: ask the running replicas, wait, print their answers.

Exit status: 0 when every query was answered, 1 when any timed out or was dead-lettered (or the
broker could not be reached), 2 for a configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import orjson
from aiokafka.errors import KafkaError

from worker.cli.console import console, err_console, table
from worker.client import QueryRejected, RouteClient, RouteClientError, RouteTimeout
from worker.config import Settings, load_settings
from worker.contracts import Explanation, RoutedIntent

Answer = tuple[RoutedIntent | RouteClientError, float]


def _texts(args: argparse.Namespace) -> list[str]:
    texts = list(args.texts)
    if args.file is not None:
        source = sys.stdin if str(args.file) == "-" else args.file.open(encoding="utf-8")
        with source:
            texts += [line.strip() for line in source if line.strip()]
    return texts


def _route(args: argparse.Namespace) -> int:
    settings = load_settings()
    texts = _texts(args)
    if not texts:
        err_console.print("[red]routeworker route:[/red] give texts to route, or --file")
        return 2
    try:
        answers = asyncio.run(_ask(settings, texts, args))
    except (KafkaError, RouteClientError, OSError) as error:
        err_console.print(
            f"[red]routeworker route:[/red] {' '.join(str(error).split()) or type(error).__name__}"
        )
        return 1
    if args.json:
        for text, (answer, latency_ms) in zip(texts, answers, strict=True):
            sys.stdout.write(orjson.dumps(_as_json(text, answer, latency_ms)).decode() + "\n")
    else:
        console.print(_table(texts, answers, settings))
        for text, (answer, _) in zip(texts, answers, strict=True):
            if isinstance(answer, RoutedIntent) and answer.explanation is not None:
                console.print(_why(text, answer.explanation))
    return 0 if all(isinstance(answer, RoutedIntent) for answer, _ in answers) else 1


async def _ask(settings: Settings, texts: list[str], args: argparse.Namespace) -> list[Answer]:
    async with RouteClient(settings, timeout_s=args.timeout) as client:

        async def one(text: str) -> Answer:
            started = time.perf_counter()
            try:
                answer: RoutedIntent | RouteClientError = await client.route(
                    text, top_n=args.top_n, explain=args.explain
                )
            except RouteClientError as error:
                answer = error
            return answer, (time.perf_counter() - started) * 1000

        return list(await asyncio.gather(*(one(text) for text in texts)))


def _table(texts: list[str], answers: list[Answer], settings: Settings) -> object:
    rows = []
    for text, (answer, latency_ms) in zip(texts, answers, strict=True):
        if isinstance(answer, RoutedIntent):
            candidates = ", ".join(f"{c.route} {c.score:.3f}" for c in answer.candidates)
            route = answer.route or "∅ no match"
            rows.append((text, route, f"{answer.score:.3f}", candidates, answer.worker, f"{latency_ms:.0f}"))
        else:
            rows.append((text, _failure(answer), "", "", "", f"{latency_ms:.0f}"))
    columns = ("query", "route", "score", "candidates", "replica", "latency ms")
    return table(f"routed through {settings.topic_queries} → {settings.topic_intents}", columns, rows)


def _why(text: str, why: Explanation) -> object:
    """One query's explanation: the rule that decided, then each route's score and nearest utterances."""
    verdict = {
        "matched": "matched: the best route passed its threshold and the margin",
        "below_threshold": "no match: the best route's score is below its threshold",
        "within_margin": "no match: the best route does not beat the runner-up by the margin",
        "no_candidates": "no match: no route among the nearest utterances",
    }[why.rule]
    gap = "" if why.gap_to_runner_up is None else f", gap to runner-up {why.gap_to_runner_up:.3f}"
    threshold = "" if why.threshold is None else f"threshold {why.threshold:.3f}, "
    rows = []
    for reason in why.routes:
        head = "" if reason.head_probability is None else f"{reason.head_probability:.3f}"
        share = "" if reason.head_share is None else f"{reason.head_share:.0%}"
        nearest = "; ".join(f"{n.utterance} ({n.similarity:.3f})" for n in reason.nearest)
        rows.append((reason.route, f"{reason.score:.3f}", f"{reason.knn_score:.3f}", head, share,
                     f"{reason.threshold:.3f}", nearest))  # fmt: skip
    title = (
        f"why: {text!r}: {verdict} ({threshold}margin {why.margin:.3f}{gap}, head weight {why.head_weight:g})"
    )
    columns = ("route", "score", "knn", "head p", "head share", "threshold", "nearest utterances")
    return table(title, columns, rows)


def _failure(error: RouteClientError) -> str:
    if isinstance(error, RouteTimeout):
        return f"timeout ({error.timeout_s:g} s)"
    if isinstance(error, QueryRejected):
        return f"dead-lettered: {error.code}"
    return f"error: {error}"


def _as_json(text: str, answer: RoutedIntent | RouteClientError, latency_ms: float) -> dict[str, object]:
    if isinstance(answer, RoutedIntent):
        return {"query": text, "intent": answer.model_dump(mode="json"), "latency_ms": round(latency_ms, 1)}
    return {
        "query": text,
        "error": _failure(answer),
        "detail": str(answer),
        "latency_ms": round(latency_ms, 1),
    }


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("route", help="ask the running replicas to route texts; print their answers")
    parser.add_argument("texts", nargs="*", metavar="TEXT", help="texts to route")
    parser.add_argument("--file", type=Path, default=None, help="more texts, one per line ('-': stdin)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each answer")
    parser.add_argument("--top-n", type=int, default=None, help="candidates per answer")
    parser.add_argument("--explain", action="store_true", help="ask the replicas why they decided")
    parser.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    parser.set_defaults(handler=_route)
