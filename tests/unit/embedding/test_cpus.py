"""The default number of encoder sessions: the CPUs the process may use, capped by its cgroup quota."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from worker.embedding import cpus


def test_a_cgroup_v2_quota_is_quota_over_period(tmp_path: Path) -> None:
    v2 = tmp_path / "cpu.max"
    v2.write_text("150000 100000\n")
    assert cpus.cgroup_quota(v2, tmp_path / "none") == 1.5
    v2.write_text("max 100000\n")
    assert cpus.cgroup_quota(v2, tmp_path / "none") is None


def test_a_cgroup_v1_quota_is_read_when_there_is_no_v2(tmp_path: Path) -> None:
    v1 = tmp_path / "cpu"
    v1.mkdir()
    (v1 / "cpu.cfs_quota_us").write_text("250000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert cpus.cgroup_quota(tmp_path / "absent", v1) == 2.5
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")  # unlimited
    assert cpus.cgroup_quota(tmp_path / "absent", v1) is None
    assert cpus.cgroup_quota(tmp_path / "absent", tmp_path / "absent") is None


@pytest.mark.parametrize(("quota", "want"), [(None, 4), (1.5, 1), (0.5, 1), (2.0, 2), (8.0, 4)])
def test_sessions_are_the_affinity_capped_by_the_quota_and_at_least_one(
    monkeypatch: pytest.MonkeyPatch, quota: float | None, want: int
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(cpus, "cgroup_quota", lambda: quota)
    assert cpus.available_cpus() == want


def test_the_settings_default_to_the_available_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.config import Settings

    monkeypatch.setattr(cpus, "cgroup_quota", lambda: None)
    monkeypatch.delenv("ROUTEWORKER_ENCODER_THREADS", raising=False)
    assert Settings().encoder_threads == len(os.sched_getaffinity(0))
    monkeypatch.setenv("ROUTEWORKER_ENCODER_THREADS", "1")
    assert Settings().encoder_threads == 1
