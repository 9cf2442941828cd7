"""The layer rules hold, and the aiokafka stubs mypy reads match the installed aiokafka."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from importlinter import api as importlinter_api

ROOT = Path(__file__).resolve().parents[2]


def test_the_layer_contracts_hold() -> None:
    # the same check as `make lint`: layers of pyproject.toml's [tool.importlinter]
    done = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports")), "--config", str(ROOT / "pyproject.toml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_every_package_of_worker_has_a_layer() -> None:
    configuration = importlinter_api.read_configuration(str(ROOT / "pyproject.toml"))
    (layers,) = [c for c in configuration["contracts_options"] if c["type"] == "layers"]
    named = {name.strip() for layer in layers["layers"] for name in layer.replace(":", "|").split("|")}
    packages = {
        f"worker.{path.stem if path.is_file() else path.name}"
        for path in (ROOT / "worker").iterdir()
        if (path.suffix == ".py" and path.stem != "__init__") or (path / "__init__.py").is_file()
    }
    assert packages == named, f"without a layer: {sorted(packages - named)}; gone: {sorted(named - packages)}"


def test_the_aiokafka_stubs_match_the_installed_library() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy.stubtest",
            "aiokafka",
            "--ignore-missing-stub",
            "--allowlist",
            str(ROOT / "stubs" / "aiokafka" / "stubtest-allowlist.txt"),
        ],
        cwd=ROOT,
        env={**os.environ, "MYPYPATH": str(ROOT / "stubs")},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
