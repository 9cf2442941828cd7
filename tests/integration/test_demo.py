"""`routeworker demo` finishes by itself with a non-empty summary and leaves no process behind."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def _processes_with(marker: bytes) -> list[int]:
    """Pids whose environment carries ``marker``: every process the demo started inherits it."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_demo_runs_to_a_summary_and_cleans_up() -> None:
    marker = f"DEMO_TEST_MARKER={uuid.uuid4().hex}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTEWORKER_") and k != "KAFKA_BOOTSTRAP"}
    env["HF_HUB_OFFLINE"] = "1"
    env["DEMO_TEST_MARKER"] = marker.split("=", 1)[1]
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli.main", "demo", "--queries", "60", "--rate", "30"],
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    for line in ("demo summary", "queries produced", "routed", "dead-lettered", "p99 latency ms"):
        assert line in out
    # 60 queries with every 20th malformed: three dead letters, each with its code
    for code in ("invalid_json", "empty_text", "schema"):
        assert code in out
    assert _processes_with(marker.encode()) == [], "the demo left processes behind"
