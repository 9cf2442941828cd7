"""`routeworker schemas export|check`: JSON Schema of every topic's messages."""

from __future__ import annotations

import argparse
from pathlib import Path

from worker.cli.console import console, err_console
from worker.contracts.schemas import export_schemas, render_schemas


def _export(args: argparse.Namespace) -> int:
    for path in export_schemas(Path(args.dir)):
        console.print(f"wrote {path}")
    return 0


def _check(args: argparse.Namespace) -> int:
    stale = [
        name for name, body in render_schemas().items()
        if not (Path(args.dir) / name).is_file() or (Path(args.dir) / name).read_bytes() != body
    ]  # fmt: skip
    for name in stale:
        err_console.print(f"{args.dir}/{name} differs from the models: run `routeworker schemas export`")
    return 1 if stale else 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("schemas", help="export or check the JSON Schema of every topic's messages")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, handler, text in (
        ("export", _export, "write schemas/*.schema.json"),
        ("check", _check, "fail if schemas/ differs from the models"),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("--dir", default="schemas", help="target directory (default: schemas)")
        action.set_defaults(handler=handler)
