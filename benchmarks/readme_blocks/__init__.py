"""Renderers of the README's generated blocks, one module per block.

To add a block: write ``benchmarks/readme_blocks/<anything>.py`` with a function decorated
``@block("my-block")`` that takes the results directory and returns markdown, put
``<!-- my-block:begin ... -->`` / ``<!-- my-block:end -->`` in the README, and run
``python benchmarks/readme.py``. Modules here are found and imported automatically.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

Renderer = Callable[[Path], str]

RENDERERS: dict[str, Renderer] = {}


def block(name: str) -> Callable[[Renderer], Renderer]:
    """Register ``render(results_dir) -> markdown`` for the README block ``name``."""

    def register(render: Renderer) -> Renderer:
        if name in RENDERERS:
            raise ValueError(f"two renderers for the README block {name!r}")
        RENDERERS[name] = render
        return render

    return register


def load(results: Path, name: str) -> dict[str, Any]:
    """One benchmark's JSON from the results directory."""
    loaded: dict[str, Any] = json.loads((results / name).read_text(encoding="utf-8"))
    return loaded


def markdown_table(columns: list[str], rows: list[list[str]], align: str = "") -> str:
    """A markdown table; ``align`` holds one character per column (``l`` or ``r``, default ``l``)."""
    rules = ["---:" if (align[i:i + 1] == "r") else "---" for i in range(len(columns))]  # fmt: skip
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(rules) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def cpu_name(machine: dict[str, Any]) -> str:
    """The CPU a result was measured on and the instruction sets that set the encoder's speed
    (int8's above all: VNNI); results from before they were recorded say so."""
    features = machine.get("cpu_features")
    if not isinstance(features, list):
        return f"{machine['cpu']} (instruction sets not recorded)"
    vnni = "with VNNI" if {"avx512_vnni", "avx_vnni"} & set(features) else "without VNNI"
    return f"{machine['cpu']} ({', '.join(features)}: {vnni})"


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
