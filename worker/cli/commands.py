"""The list of sub-commands; each module adds its parser with `register(subparsers)`."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from worker.cli import (
    config_cmd,
    demo_cmd,
    dev_cmd,
    fit_cmd,
    model_cmd,
    route_cmd,
    routes_cmd,
    run_cmd,
    schemas_cmd,
    topics_cmd,
)

Register = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]

REGISTRY: list[Register] = [
    demo_cmd.register,
    dev_cmd.register,
    config_cmd.register,
    fit_cmd.register,
    model_cmd.register,
    run_cmd.register,
    route_cmd.register,
    schemas_cmd.register,
    routes_cmd.register,
    topics_cmd.register,
]
