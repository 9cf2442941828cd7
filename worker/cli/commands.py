"""The list of sub-commands; each module adds its parser with `register(subparsers)`."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from worker.cli import config_cmd, model_cmd, schemas_cmd

Register = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]

REGISTRY: list[Register] = [
    config_cmd.register,
    model_cmd.register,
    schemas_cmd.register,
]
