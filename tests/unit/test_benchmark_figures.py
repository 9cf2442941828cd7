"""The benchmarks' figures are drawn from their JSON, and every figure the README shows exists."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import mutations  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


def test_the_publish_to_live_figure_is_drawn_from_the_saved_samples(tmp_path: Path) -> None:
    results = json.loads((ROOT / "benchmarks/results/mutations.json").read_text())
    for key in ("shipped", "embedded_on_replica"):
        figures = results["publish_to_live"][key]
        assert len(figures["live_on_all_samples_ms"]) == figures["live_on_all"]["n"]
    figure = tmp_path / "figure.png"
    mutations.plot(results, figure)
    assert figure.read_bytes().startswith(PNG)


def test_every_image_the_readme_shows_is_in_the_repository() -> None:
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (ROOT / "README.md").read_text())
    assert images, "the README shows the benchmarks' figures"
    for image in images:
        assert (ROOT / image).read_bytes().startswith(PNG), image
