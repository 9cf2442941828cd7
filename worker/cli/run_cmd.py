"""`routeworker run`: one replica, routing queries until SIGTERM/SIGINT.

Exit status: 0 after a graceful stop, 1 when anything failed or the grace period ran out, 2 for a
configuration error (see :mod:`worker.app.run`). A second SIGTERM/SIGINT stops at once.
"""

from __future__ import annotations

import argparse
import asyncio

from worker.app import run_worker
from worker.cli.logs import use_log_level
from worker.config import load_settings


def _run(args: argparse.Namespace) -> int:
    settings = load_settings()
    use_log_level(settings, args)
    return asyncio.run(run_worker(settings))


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("run", help="route queries from Kafka to routed intents until SIGTERM")
    parser.set_defaults(handler=_run)
