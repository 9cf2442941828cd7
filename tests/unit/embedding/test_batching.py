"""Length-aware runs: every text once, runs in length order, padded size within the budget."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.embedding.batching import plan_runs


@given(st.lists(st.integers(1, 300), max_size=200), st.integers(1, 5000))
def test_runs_cover_every_text_once_in_length_order_within_the_budget(
    lengths: list[int], budget: int
) -> None:
    runs = plan_runs(lengths, budget)
    flat = [i for run in runs for i in run]
    assert sorted(flat) == list(range(len(lengths)))
    assert [lengths[i] for i in flat] == sorted(lengths)  # ascending across and within runs
    for run in runs:
        assert run
        longest = lengths[run[-1]]
        assert len(run) * longest <= budget or len(run) == 1  # only a text past the budget exceeds it


@given(st.lists(st.integers(1, 300), min_size=2, max_size=200), st.integers(1, 5000))
def test_no_run_could_have_taken_the_next_text(lengths: list[int], budget: int) -> None:
    runs = plan_runs(lengths, budget)
    for run, following in itertools.pairwise(runs):
        assert (len(run) + 1) * lengths[following[0]] > budget


def test_equal_lengths_keep_their_order_and_a_bad_budget_is_refused() -> None:
    assert plan_runs([3, 3, 1, 3], 9) == [[2, 0, 1], [3]]
    assert plan_runs([], 10) == []
    with pytest.raises(ValueError, match="at least 1"):
        plan_runs([1], 0)
