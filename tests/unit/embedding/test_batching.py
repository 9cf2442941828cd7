"""Length-aware runs: every text once, runs in length order, within the budget, of least cost; and
shared among sessions: every text once, the busiest session near its fair share."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.embedding.batching import plan_runs, share_runs


def _cost(runs: list[list[int]], lengths: list[int], overhead: float) -> float:
    return sum(overhead + len(run) * max(lengths[i] for i in run) for run in runs)


@given(st.lists(st.integers(1, 300), max_size=200), st.integers(1, 5000), st.integers(0, 200))
def test_runs_cover_every_text_once_in_length_order_within_the_budget(
    lengths: list[int], budget: int, overhead: int
) -> None:
    runs = plan_runs(lengths, budget, overhead)
    flat = [i for run in runs for i in run]
    assert sorted(flat) == list(range(len(lengths)))
    assert [lengths[i] for i in flat] == sorted(lengths)  # ascending across and within runs
    for run in runs:
        assert run
        longest = lengths[run[-1]]
        assert len(run) * longest <= budget or len(run) == 1  # only a text past the budget exceeds it


@given(st.lists(st.integers(1, 60), min_size=1, max_size=9), st.integers(1, 400), st.integers(0, 100))
def test_no_cut_of_the_sorted_texts_costs_less(lengths: list[int], budget: int, overhead: int) -> None:
    runs = plan_runs(lengths, budget, overhead)
    order = [i for run in runs for i in run]
    best = float("inf")
    for cuts in itertools.product([False, True], repeat=len(order) - 1):
        candidate, run = [], [order[0]]
        for i, cut in zip(order[1:], cuts, strict=True):
            if cut:
                candidate.append(run)
                run = []
            run.append(i)
        candidate.append(run)
        if all(len(r) * lengths[r[-1]] <= budget or len(r) == 1 for r in candidate):
            best = min(best, _cost(candidate, lengths, overhead))
    assert _cost(runs, lengths, overhead) == best


def test_the_overhead_decides_between_padding_and_more_runs() -> None:
    lengths = [4, 4, 4, 40]
    assert plan_runs(lengths, 4096, overhead=10) == [[0, 1, 2], [3]]  # 10+12 + 10+40 < 10+160
    assert plan_runs(lengths, 4096, overhead=200) == [[0, 1, 2, 3]]  # one run: 200+160
    assert plan_runs([3, 3, 1, 3], 9, overhead=100) == [[2], [0, 1, 3]]  # four in one: 12 > 9
    assert plan_runs([], 10) == []
    with pytest.raises(ValueError, match="at least 1"):
        plan_runs([1], 0)


@given(st.lists(st.integers(1, 300), max_size=200), st.integers(1, 5000), st.integers(1, 8))
def test_shared_runs_cover_every_text_once_each_run_ascending(
    lengths: list[int], budget: int, sessions: int
) -> None:
    parts = share_runs(plan_runs(lengths, budget), lengths, sessions)
    assert len(parts) <= sessions
    runs = [run for part in parts for run in part]
    assert sorted(i for run in runs for i in run) == list(range(len(lengths)))
    for part in parts:
        assert part  # no session is handed nothing
    for run in runs:
        assert run
        assert [lengths[i] for i in run] == sorted(lengths[i] for i in run)


def test_a_call_is_cut_so_two_sessions_share_its_work() -> None:
    lengths = [12] * 32  # one run of 32 from plan_runs
    parts = share_runs(plan_runs(lengths, 4096), lengths, 2)
    assert sorted(len(run) for part in parts for run in part) == [16, 16]
    assert share_runs(plan_runs(lengths, 4096), lengths, 1) == [[list(range(32))]]  # one session: as planned
    assert share_runs([[0]], [7], 2) == [[[0]]]  # one text: one session
    assert share_runs([], [], 2) == []
    # uneven runs are dealt so the busiest session is within the slack of its fair share
    lengths = [5] * 20 + [40] * 6
    parts = share_runs(plan_runs(lengths, 4096), lengths, 2)
    loads = [sum(10 + len(run) * lengths[run[-1]] for run in part) for part in parts]
    assert max(loads) <= 1.1 * sum(loads) / 2
    with pytest.raises(ValueError, match="at least 1"):
        share_runs([[0]], [1], 0)
