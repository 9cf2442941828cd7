"""The benchmarks' figures are drawn from their JSON, and every figure the README shows exists."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from types import SimpleNamespace

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


def test_the_latency_breakdown_adds_up_to_produce_to_consumer() -> None:
    import pipeline_kit

    # produced at 1000 ms; its batch started 12 ms later, embedding 5, search 2, built at 1021;
    # handed to the producer at 1023 (the intent's timestamp), read at 1030.5
    reader = SimpleNamespace(
        seen={"q": (1023, 1030.5)},
        timings={"q": {"queue_ms": 12.0, "embed_ms": 5.0, "search_ms": 2.0, "total_ms": 21.0}},
    )
    found = pipeline_kit.breakdown(reader, {"q": 1000})  # type: ignore[arg-type]
    parts = {k: v["p50"] for k, v in found.items()}
    expected = {"to_batch": 12, "embed": 5, "search": 2, "build": 2, "to_send": 2, "to_reader": 7.5}
    assert parts == expected
    assert sum(parts.values()) == 1030.5 - 1000
