"""Logging of the command line: one format for every command, the level from the settings."""

from __future__ import annotations

import argparse
import logging

from worker.config import Settings

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure(verbose: bool) -> None:
    """Log to stderr: DEBUG with ``--verbose``, else INFO until a command has read its settings."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=FORMAT)


def use_log_level(settings: Settings, args: argparse.Namespace) -> None:
    """Long-running commands log at ``settings.log_level`` unless ``--verbose`` was given."""
    if not getattr(args, "verbose", False):
        logging.getLogger().setLevel(settings.log_level)
