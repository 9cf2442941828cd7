"""Length-aware runs: the texts of a batch sorted by token count and cut where it saves work.

A model run is padded to its longest text, and each run also costs a fixed overhead (every weight
matrix read from memory once, some 200 ONNX nodes dispatched): one run of 32 texts of 5 to 40
tokens computes 1,280 token positions for 700 real tokens, while 32 runs of one text each pay the
overhead 32 times.
:func:`plan_runs` sorts the texts by token count and cuts the sorted sequence where the cost
``overhead + texts x longest`` (in token positions) summed over the runs is least, an exact
dynamic programme over the cut points; no run's padded size passes ``max_tokens`` (which bounds
the memory of one run) unless a text alone is longer. The order of the texts within and across
runs does not change any vector: a text's vector is bit-identical whatever it shares a run with
(fp32 and static int8; tests/integration/test_encoder.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: default of ``Settings.encoder_run_tokens``: most padded token positions of one run
DEFAULT_RUN_TOKENS = 4096
#: the fixed cost of one model run, in token positions: benchmarks/encoder_runs.py measured 9.4
#: (fp32) and 6.2 (int8) on an AVX2 core, where planning with 10 embedded real texts in calls of 32
#: about 11% faster than with 40; on an AVX-512 core a position costs 2.4-2.7x less, the fixed cost
#: is 17-21 positions (it is mostly reading the weight matrices: 42.5 MB a run in fp32), and 10 and
#: 40 plan within 2.5% of each other (encoder_runs.json)
DEFAULT_RUN_OVERHEAD = 10


def plan_runs(
    lengths: Sequence[int], max_tokens: int, overhead: float = DEFAULT_RUN_OVERHEAD
) -> list[list[int]]:
    """Indices of ``lengths`` grouped into runs of least total cost (see the module docstring).

    Each run is ascending by length and padded within ``max_tokens`` (a longer text runs alone);
    runs come shortest first; every index is in exactly one run; equal lengths keep their order.
    """
    if max_tokens < 1:
        raise ValueError("max_tokens must be at least 1")
    if overhead < 0:
        raise ValueError("overhead must not be negative")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])  # stable: ties keep their order
    n = len(order)
    if n == 0:
        return []
    sorted_lengths = np.array([lengths[i] for i in order], dtype=np.float64)
    # best[j]: least cost of the first j sorted texts; start[j]: where the last of its runs starts
    best = np.zeros(n + 1)
    start = np.zeros(n + 1, dtype=np.int64)
    for j in range(1, n + 1):
        longest = sorted_lengths[j - 1]  # ascending: the run's last text is its longest
        most = max(1, int(max_tokens // longest))  # texts a run ending here may hold
        first = max(0, j - most)
        candidates = best[first:j] + overhead + (j - np.arange(first, j)) * longest
        pick = int(np.argmin(candidates))
        best[j], start[j] = candidates[pick], first + pick
    runs: list[list[int]] = []
    j = n
    while j > 0:
        runs.append(order[start[j] : j])
        j = int(start[j])
    return runs[::-1]


def share_runs(
    runs: Sequence[Sequence[int]],
    lengths: Sequence[int],
    sessions: int,
    overhead: float = DEFAULT_RUN_OVERHEAD,
    slack: float = 0.1,
) -> list[list[list[int]]]:
    """``runs`` (of :func:`plan_runs`) dealt to at most ``sessions`` sessions that run at once, so the
    batch is done when its busiest session is.

    The runs go, costliest first, to the least loaded session. While the busiest session has more
    than ``1 + slack`` times its fair share of the work, and at most four runs a session so far,
    the costliest run is cut in two where the larger half costs least (a run is ascending by length,
    so each half stays ascending) and the runs are dealt again. Each returned part is one session's
    runs; every index is in exactly one run. A cut adds one run's overhead of work, on a session
    that would otherwise wait: a call of 32 texts is embedded in little more than half the time on
    two sessions.
    """
    if sessions < 1:
        raise ValueError("sessions must be at least 1")

    def cost(run: Sequence[int]) -> float:
        return overhead + len(run) * lengths[run[-1]]

    pieces = [list(run) for run in runs if run]
    while True:
        parts: list[list[list[int]]] = [[] for _ in range(min(sessions, len(pieces)))]
        loads = [0.0] * len(parts)
        for piece in sorted(pieces, key=cost, reverse=True):
            least = loads.index(min(loads))
            parts[least].append(piece)
            loads[least] += cost(piece)
        fair = sum(loads) / sessions
        cuttable = [i for i, piece in enumerate(pieces) if len(piece) > 1]
        if not cuttable or max(loads) <= fair * (1 + slack) or len(pieces) >= 4 * sessions:
            return parts
        costliest = max(cuttable, key=lambda i: cost(pieces[i]))
        run = pieces[costliest]
        cut = min(range(1, len(run)), key=lambda k: max(cost(run[:k]), cost(run[k:])))
        pieces[costliest : costliest + 1] = [run[:cut], run[cut:]]
