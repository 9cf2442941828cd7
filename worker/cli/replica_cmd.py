"""`routeworker routes replica`: run only a route replica (status file on SIGUSR1), for tests and demos."""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

from worker.app import serve_replica
from worker.cli.logs import use_log_level
from worker.config import load_settings
from worker.embedding import encoder_pool, hashing_pool

logger = logging.getLogger(__name__)


def _replica(args: argparse.Namespace) -> int:
    settings = load_settings()
    use_log_level(settings, args)
    probes = args.probes.read_text().splitlines() if args.probes else []
    encoder = hashing_pool(args.hashing_dim) if args.encoder == "hashing" else encoder_pool(settings)
    try:
        asyncio.run(serve_replica(settings, encoder, store=args.store, status=args.status, probes=probes))
    except Exception:  # the task boundary of the process: log it all, exit non-zero
        logger.exception("route replica failed")
        return 1
    finally:
        encoder.close()
    return 0


def register_action(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``replica`` to the ``routes`` actions."""
    parser = actions.add_parser("replica", help="run only a route replica (status file on SIGUSR1)")
    parser.add_argument("--store", type=Path, help="SQLite store (default: the store_path setting)")
    parser.add_argument("--status", type=Path, help="status file written when ready and on SIGUSR1")
    parser.add_argument("--probes", type=Path, help="file of probe queries, one per line")
    parser.add_argument(
        "--encoder",
        choices=("model", "hashing"),
        default="model",
        help="the configured model, or a deterministic hashing stand-in (tests, demos)",
    )
    parser.add_argument("--hashing-dim", type=int, default=64, help="dimension of the hashing encoder")
    parser.set_defaults(handler=_replica)
