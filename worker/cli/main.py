"""`routeworker` command line: one sub-command per job, each a small module."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from worker import __version__
from worker.cli import commands, logs
from worker.errors import ConfigError
from worker.kafka_access import KafkaAccessError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="routeworker",
        description="Kafka-native semantic router: queries in, routed intents out.",
    )
    parser.add_argument("--version", action="version", version=f"routeworker {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in commands.REGISTRY:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    args = build_parser().parse_args(argv)
    logs.configure(args.verbose)
    try:
        code: int = args.handler(args)
    except ConfigError as exc:
        print(f"routeworker: configuration error: {exc}", file=sys.stderr)
        return 2
    except KafkaAccessError as exc:  # TLS, SASL or a missing ACL: one line naming it
        print(f"routeworker: Kafka refuses access: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
