"""`routeworker config show`: the effective settings, secrets masked."""

from __future__ import annotations

import argparse

from worker.cli.console import console, table
from worker.config import ENV_PREFIX, load_settings
from worker.config_docs import settings_table


def _show(args: argparse.Namespace) -> int:
    settings = load_settings()
    rows = [(f"{ENV_PREFIX}{k.upper()}", "" if v is None else v) for k, v in settings.redacted().items()]
    console.print(table("effective settings", ["setting", "value"], rows))
    return 0


def _docs(args: argparse.Namespace) -> int:
    print(settings_table())
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("config", help="show the effective configuration (secrets masked)")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = actions.add_parser("show", help="print every setting and its value")
    show.set_defaults(handler=_show)
    docs = actions.add_parser("docs", help="print the settings as the README's markdown table")
    docs.set_defaults(handler=_docs)
