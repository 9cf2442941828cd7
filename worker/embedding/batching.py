"""Length-aware runs: the texts of a batch sorted by token count and cut by a token budget.

A run is padded to its longest text, so a run of texts of similar lengths wastes little work on
padding; each run costs a fixed overhead too (some 200 ONNX nodes are dispatched), so runs should
be as large as the budget allows. Sorting ascending and cutting a run when one more text would
take its padded size (texts x longest) past ``max_tokens`` does both. A text longer than the
budget runs alone. The order of the texts within and across runs does not change any vector: a
text's vector is bit-identical whatever it shares a run with (fp32 and static int8).
"""

from __future__ import annotations

from collections.abc import Sequence

#: default of ``Settings.encoder_run_tokens`` (measured: benchmarks/pipeline.py, encoder runs)
DEFAULT_RUN_TOKENS = 2048


def plan_runs(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Indices of ``lengths`` grouped into runs: each run ascending by length, padded size within
    ``max_tokens`` (except a text longer than that, alone); every index exactly once."""
    if max_tokens < 1:
        raise ValueError("max_tokens must be at least 1")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])  # stable: ties keep their order
    runs: list[list[int]] = []
    run: list[int] = []
    for i in order:
        # ascending, so the newcomer is the run's longest text
        if run and (len(run) + 1) * lengths[i] > max_tokens:
            runs.append(run)
            run = []
        run.append(i)
    if run:
        runs.append(run)
    return runs
