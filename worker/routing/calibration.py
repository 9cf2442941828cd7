"""IVF recall calibration: each approximate build scans as many lists as its own data needs.

Deterministic (a seeded sample, one faiss thread): every replica picks the same count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from worker.routing.index import holds_raw_vectors, shortlist, shortlist_size
from worker.routing.index_settings import IndexKind, IndexSettings
from worker.routing.native import faiss
from worker.routing.types import Int64s, Vectors

#: queries of a recall calibration (sampled utterances) and the neighbours compared per query.
#: Their exact answers are the calibration's cost (queries x rows x dim): 1024 of them took 0.8
#: TFLOP at 1M vectors, a quarter of the build; 256 still resolve recall to 1/2560.
CALIBRATION_QUERIES = 256

RECALL_AT = 10


@dataclass(frozen=True)
class Calibration:
    """The lists an IVF index scans per query, and the recall@10 measured at each count tried."""

    probe_lists: int
    recalls: tuple[tuple[int, float], ...]


#: a calibration stops scanning more lists after this many steps that did not raise recall: the
#: codes, not the lists, limit it then (lossy codes whose shortlist misses a neighbour however many
#: lists are scanned), and it takes the fewest lists that gave the best recall
_FLAT_STEPS = 2


def calibrate_probes(index: Any, vectors: Vectors, settings: IndexSettings) -> Calibration:
    """The fewest lists (from ``settings.probe_lists`` up, ~x1.4 a step) giving recall@10 of at
    least ``settings.recall_target`` against exact search, on a seeded sample of ``vectors`` used
    as queries, each left out of its own answer (a stored utterance is not a query's best match).

    When more lists stop raising recall below the target, the fewest lists giving the best recall."""
    probes = settings.probe_lists
    sample = LeaveOneOut.of(vectors)
    if sample is None:
        return Calibration(probes, ())
    ceiling = max(settings.max_probe_lists, probes)
    lists = int(faiss.extract_index_ivf(index).nlist)
    tried: list[tuple[int, float]] = []
    while True:
        tried.append((probes, sample.recall(index, probes)))
        if tried[-1][1] >= settings.recall_target or probes >= min(ceiling, lists):
            return Calibration(probes, tuple(tried))
        best = max(recall for _, recall in tried)
        first_best = next(at for at, (_, recall) in enumerate(tried) if recall == best)
        if len(tried) - 1 - first_best >= _FLAT_STEPS:
            return Calibration(tried[first_best][0], tuple(tried))
        probes = min(max(probes + 1, round(probes * 1.41)), ceiling, lists)


@dataclass(frozen=True, eq=False)
class LeaveOneOut:
    """A seeded sample of stored vectors used as queries, with their exact top-``k`` rows other
    than their own: what an IVF build calibrates its recall on."""

    rows: Int64s
    queries: Vectors
    truth: Int64s
    k: int
    #: the sampled vectors' table: a float16-coded index's shortlist is re-scored from it, as
    #: :meth:`worker.routing.index.MainIndex.search_rows` does
    vectors: Vectors

    @classmethod
    def of(cls, vectors: Vectors) -> LeaveOneOut | None:
        """The sample of ``vectors`` (None when there are too few for a neighbour)."""
        count = vectors.shape[0]
        k = min(RECALL_AT, count - 1)
        if k < 1:
            return None
        rows = np.sort(np.random.default_rng(0).choice(count, min(CALIBRATION_QUERIES, count), replace=False))
        queries = np.ascontiguousarray(vectors[rows], dtype=np.float32)
        _, exact = faiss.knn(queries, vectors, k + 1, metric=faiss.METRIC_INNER_PRODUCT)
        return cls(rows, queries, without_self(exact, rows, k, pad=-2), k, vectors)

    def recall(self, index: Any, probes: int) -> float:
        """Recall@k of IVF ``index`` scanning ``probes`` lists per query (shortlist re-scored
        exactly when its lists hold codes)."""
        if holds_raw_vectors(index):
            _, found = shortlist(index, self.queries, self.k + 1, probes)
        else:
            _, found = shortlist(index, self.queries, shortlist_size(self.k + 1, index.ntotal), probes)
            exact = np.einsum("qd,qsd->qs", self.queries, self.vectors[np.maximum(found, 0)])
            exact = np.where(found >= 0, exact, -np.inf)
            best = np.argsort(-exact, axis=1, kind="stable")[:, : self.k + 1]
            found = np.take_along_axis(found, best, axis=1)
        answers = without_self(found, self.rows, self.k, pad=-3)
        hits = sum(np.intersect1d(t, f).size for t, f in zip(self.truth, answers, strict=True))
        return hits / self.truth.size


def without_self(rows: Int64s, own: Int64s, k: int, pad: int) -> Int64s:
    """The first ``k`` rows of each answer other than the query's own row, padded with ``pad``."""
    keep = (rows != own[:, None]) & (rows >= 0)
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    picked: Int64s = np.where(
        np.take_along_axis(keep, order, axis=1), np.take_along_axis(rows, order, axis=1), pad
    )
    return picked


def searched_lists(index: Any, kind: IndexKind, settings: IndexSettings) -> int:
    """Lists a search of ``index`` scans: what its build calibrated (IVF), else the setting."""
    if kind == "ivf" and index is not None:
        return int(faiss.extract_index_ivf(index).nprobe)
    return settings.probe_lists
