"""The README's generated blocks match their renderers, and the block markers are well formed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
sys.path.insert(0, str(ROOT / "benchmarks"))

import readme  # noqa: E402
from readme_blocks import RENDERERS  # noqa: E402

from worker.config_docs import settings_rows, settings_table  # noqa: E402


def test_no_generated_block_drifts_from_its_renderer() -> None:
    stale = readme.drifted(README.read_text())
    assert not stale, f"README blocks {stale} are stale: run `python benchmarks/readme.py`"


def test_every_registered_block_appears_exactly_once() -> None:
    blocks = readme.find_blocks(README.read_text(), set(RENDERERS))
    assert sorted(b.name for b in blocks) == sorted(RENDERERS)
    for name in ("settings-table", "accuracy-table", "engine-table", "pipeline-table", "mutations-table"):
        assert name in RENDERERS


def test_the_settings_table_is_the_models_and_config_docs_prints_it_with_its_markers() -> None:
    text = README.read_text()
    assert settings_rows() in text
    assert text.count("<!-- settings-table:begin") == 1
    assert text.count("<!-- settings-table:end -->") == 1
    assert settings_table().splitlines()[0].startswith("<!-- settings-table:begin")


def test_regenerating_replaces_only_what_lies_between_the_markers() -> None:
    text = (
        "intro\n<!-- settings-table:begin (from the model) -->\nold rows\n"
        "<!-- settings-table:end -->\nafter\n"
    )
    with pytest.raises(readme.BlockError, match="missing from the README"):
        readme.regenerate(text)  # the other registered blocks are absent
    blocks = readme.find_blocks(text, set(RENDERERS))
    assert [(b.name, b.begin, b.end) for b in blocks] == [("settings-table", 1, 3)]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("<!-- a:begin -->\n<!-- a:begin -->\n<!-- a:end -->\n", "a: 2 begin markers"),
        ("<!-- a:begin -->\nx\n<!-- a:end -->\n<!-- a:end -->\n", "a: 2 end markers"),
        ("<!-- a:begin -->\nx\n", "a begin marker without an end marker"),
        ("x\n<!-- a:end -->\n", "an end marker without a begin marker"),
        ("<!-- a:end -->\n<!-- a:begin -->\n", "ends where it did not begin"),
        ("<!-- a:begin -->\n<!-- b:begin -->\n<!-- b:end -->\n<!-- a:end -->\n", "begins inside a"),
    ],
)
def test_malformed_markers_are_refused(text: str, problem: str) -> None:
    with pytest.raises(readme.BlockError, match=problem):
        readme.find_blocks(text)


def test_a_block_without_a_renderer_is_refused() -> None:
    with pytest.raises(readme.BlockError, match="no renderer for unknown-table"):
        readme.find_blocks("<!-- unknown-table:begin -->\n<!-- unknown-table:end -->\n", set(RENDERERS))


def test_the_readme_names_settings_by_their_environment_variables() -> None:
    from worker.config import Settings

    text = README.read_text()
    # variables the code reads under their own name (the demo's KAFKA_BOOTSTRAP) are not settings
    sources = " ".join(path.read_text() for path in (ROOT / "worker").rglob("*.py"))
    for name in Settings.model_fields:
        bare = name.upper()
        if f'"{bare}"' in sources:
            continue
        for line in text.splitlines():
            if f"`{bare}`" in line or f"`{bare}=" in line:
                raise AssertionError(f"README names {bare} without its ROUTEWORKER_ prefix: {line.strip()}")
