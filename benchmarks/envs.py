"""Separate virtualenvs for competitors whose pins may clash with ours (cached, created once)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import venv
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset

from worker.config import load_settings

SEMANTIC_ROUTER = "semantic-router==1.1.1"
HERE = Path(__file__).resolve().parent


def ensure_env(name: str, requirements: list[str]) -> Path:
    """A virtualenv with ``requirements`` under the routeworker cache; returns its python."""
    folder = load_settings().cache_dir / "bench-envs" / name
    python = folder / "bin" / "python"
    if not (folder / ".complete").is_file():
        venv.EnvBuilder(with_pip=True, clear=True).create(folder)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *requirements],
            check=True,
        )
        (folder / ".complete").write_text("\n".join(requirements))
    return python


def run_semantic_router(
    ds: Dataset, vec: dict[str, np.ndarray], runs: list[dict[str, Any]], tmp: Path
) -> dict[str, Any]:
    """Run benchmarks/sr_runner.py in semantic-router's env on routeworker's vectors.

    ``runs``: ``{"name", "route_rows", "fit_excluded_rows"}`` each, rows into ``ds.routes``.
    Returns ``{"version", "runs": {name: {"default", "fitted", "fit_report"}}, "seconds"}``.
    """
    python = ensure_env("semantic-router-1.1.1", [SEMANTIC_ROUTER])
    meta = {
        "routes_texts": ds.routes.texts,
        "routes_labels": ds.routes.labels,
        "fit_texts": ds.fit.texts,
        "fit_labels": ds.fit.labels,
        "test_texts": ds.test.texts,
        "runs": runs,
    }
    np.savez(
        tmp / "input.npz",
        meta=np.array(json.dumps(meta)),
        routes_vectors=vec["routes"],
        fit_vectors=vec["fit"],
        test_vectors=vec["test"],
    )
    started = time.perf_counter()
    subprocess.run([str(python), str(HERE / "sr_runner.py"), str(tmp / "input.npz"), str(tmp / "out.json")],
                   check=True, stdout=sys.stderr)  # fmt: skip
    out: dict[str, Any] = json.loads((tmp / "out.json").read_text())
    out["seconds"] = time.perf_counter() - started
    return out


PLOTTING = "matplotlib==3.10.3"


def run_plot(results: Path, out: Path) -> None:
    """Draw benchmarks/plot_accuracy.py's figure from ``results`` (accuracy.json) into ``out``."""
    python = ensure_env("plot-matplotlib-3.10.3", [PLOTTING])
    subprocess.run([str(python), str(HERE / "plot_accuracy.py"), str(results), str(out)], check=True)
