"""How the main index is built and searched: exact or approximate, lists, recall, threads, priority."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

IndexKind = Literal["flat", "ivf"]
#: how an IVF index's lists hold the vectors: raw float32; float16 codes re-scored exactly; or 4-bit
#: product-quantizer codes of the residuals, scanned with SIMD look-up tables (faiss "fast scan"),
#: whose candidates are ranked by 8-bit codes of every row and then re-scored exactly
IvfCodes = Literal["float32", "float16", "pq4"]


@dataclass(frozen=True)
class IndexSettings:
    """How the main index is built and searched, and when the overlay is folded into it."""

    #: above this many utterance vectors the main index is IVF (approximate) instead of exact.
    #: Exact search of 32 queries over 50k vectors took 0.35-1.6x the time of embedding them
    #: (benchmarks/engine.py, loaded 2-vCPU machine), so larger tables go approximate.
    approximate_above: int = 32_768
    #: vectors per inverted list: an IVF index has ``rows / list_rows`` lists (a power of two, at
    #: most ``max_lists``), so a search scans about ``probe_lists * list_rows`` vectors up to
    #: ``list_rows * max_lists`` rows, and proportionally more beyond.
    list_rows: int = 64
    #: inverted lists scanned per query, at least (each build calibrates its own count upwards from
    #: here, see ``recall_target``). 4 of 512 lists is the same share of a table as 16 of 2048 was.
    #: (Before ``max_lists`` was 512: 16 of 4096 lists at 250k vectors gave recall@10 1.00 on the
    #: clustered benchmark data; real MiniLM vectors are harder, 0.96 at 16 lists.)
    probe_lists: int = 4
    #: each IVF build measures recall@10 against exact search on a sample of its own vectors used
    #: as queries (each one left out of its own answer) and scans more lists until it reaches this
    #: (at most ``max_probe_lists``). Deterministic: every replica picks the same count. Stored
    #: utterances are easier queries than new text: on Banking77 + CLINC150 MiniLM vectors (25k,
    #: 512 lists) this leave-one-out recall was 0.991 / 0.996 / 0.998 / 0.999 at 16 / 32 / 64 / 128
    #: lists where their test queries got 0.964 / 0.979 / 0.989 / 0.995 (benchmarks/engine.py,
    #: real_vectors_recall), hence 0.999 for 0.99 on real queries.
    recall_target: float = 0.999
    max_probe_lists: int = 256
    #: at most this many lists: k-means and the list assignment of every row cost rows x lists,
    #: so past ``list_rows * max_lists`` rows the lists grow longer instead of more numerous. A
    #: 1M-vector table has 512 lists of ~1950 rows: assigning its rows to them is 0.4 TFLOP, 2048
    #: lists were 1.6 TFLOP and most of a 56 s build (benchmarks/million.py). A search scans the
    #: same share of the table for the same recall either way.
    max_lists: int = 512
    #: what the lists hold. At 1M vectors, 32 queries scanning 11 of 512 lists took 73 ms over
    #: float16 codes (114 over float32 rows) and no less over 8-bit ones (decoding, not memory, is
    #: their limit), ~10 ms over 4-bit PQ codes of 2 dimensions each, 96 bytes a row, scanned with
    #: SIMD look-up tables (benchmarks/ivf_codes.py). Those rank too coarsely to be re-scored
    #: directly (the best 64 held 0.73 of the top 32), so "pq4" keeps 8-bit codes of every row
    #: beside them (mapped from the index file like the lists, read for candidates only) to rank
    #: the PQ candidates (``worker.routing.index.pq_candidates``) first: 18 ms, top 32 at 0.988
    #: (0.992 from float16 lists); float16 codes there ranked no better and took twice the bytes.
    #: Every shortlist is re-scored exactly from the routes' float32 vectors: the similarities
    #: served are exact. "pq4" costs the build its PQ encoding: 1M vectors took 21 s to add
    #: instead of 9.5 s, and their index build + install in benchmarks/million.py 43 s instead of
    #: 25 s. float32 keeps raw vectors in the lists.
    ivf_codes: IvfCodes = "pq4"
    #: dimensions per 4-bit code of "pq4" lists (float16 lists where it does not divide the vector
    #: dimension): 2 gives a 384-dim vector 192 codes. 1 ranked as well as float16 but took 66 s
    #: to build at 1M vectors; 4 ranked so coarsely that 256 candidates held 85% of the top 10.
    pq_dims: int = 2
    #: "pq4" lists learn 16 centroids per code from the table's rows: fewer rows than this get
    #: float16 lists (real IVF tables have ``approximate_above`` rows; small ones are tests)
    pq_min_rows: int = 64
    #: k-means learns the lists from at most this many sampled vectors per list (faiss's seeded sample)
    train_rows_per_list: int = 16
    #: k-means iterations of an IVF build (faiss's default is 25): the lists only need to be
    #: reasonable, the recall calibration below scans more of them if they are not
    kmeans_iterations: int = 10
    #: the overlay is folded into the main index in the background once it holds this many vectors
    overlay_rebuild_rows: int = 2_048
    #: the overlay's bound: while it holds this many vectors, live mutations wait for a rebuild to
    #: fold it in (the replica's apply waits; searches never do). Every search scans the overlay by
    #: brute force: 16k vectors cost 32 queries about 5 ms on this machine, half an embedding.
    overlay_max_rows: int = 16_384
    #: a failed background rebuild is retried after this long, doubling up to ``rebuild_retry_max_s``
    rebuild_retry_s: float = 1.0
    rebuild_retry_max_s: float = 60.0
    #: OpenMP threads of each faiss search (set in every searching thread: OpenMP keeps the count per
    #: thread); None keeps faiss's. 1 because searches already run in parallel threads and OpenMP
    #: waits collapse when cores are busy: a 32-query search over 1k vectors took 1.0 ms (1 thread)
    #: vs 40 ms (2 threads, median) on a loaded 2-vCPU machine, and a searching thread with 2 waited
    #: a 4 ms scheduler tick per batch beside a busy process. Builds always use one thread.
    faiss_threads: int | None = 1
    #: faiss's exact searches (flat indexes, the IVF list assignment, k-means) use BLAS matrix
    #: products for batches of at least this many queries, PROCESS-WIDE (applied when a RouteTable
    #: is made, and in the build process); None keeps faiss's (128000 in faiss 1.15). Assigning 32
    #: queries to 4096 lists took 1.25 ms with BLAS vs 2.61 ms without; 32 over 32k rows 11.5 vs 64.
    blas_min_queries: int | None = 16
    #: niceness of the background rebuild thread and of the build process it starts: searches
    #: sharing a CPU with them keep ~90% of it, and a build still gets ~10% of a saturated CPU (at
    #: 19 it got ~1% and a 250k rebuild did not finish beside one busy search thread). Blocking
    #: rebuilds run at the caller's priority.
    build_niceness: int = 10
    #: seconds the build process first runs in the idle scheduling class (Linux): only on a CPU
    #: nothing else wants, so searches never wait for it (beside a niced build they waited up to
    #: 24 ms). A build not done by then (no CPU came free: 250k vectors take ~30 s of one CPU)
    #: continues at ``build_niceness``. None: never idle.
    build_idle_s: float | None = 90.0
    #: OpenMP threads the build process adds the rows with, once the index is trained (training
    #: always uses one: k-means with more is not reproducible). Adding assigns each row to its list
    #: on its own and fills each list in row order whatever the threads, so the index is the same
    #: bytes (1M vectors: 17.4 s with 1, 9.5 s with 2, one index file). 1 for rebuilds beside the
    #: searches; a fresh replica's first build (nothing to serve yet) uses the machine's CPUs.
    add_threads: int = 1

    def kind_for(self, rows: int) -> IndexKind:
        """The index kind used for ``rows`` vectors."""
        return "ivf" if rows > self.approximate_above else "flat"

    def list_factory(self, rows: int, dim: int) -> str:
        """The faiss factory string of an IVF index over ``rows`` vectors of ``dim`` dimensions."""
        lists = self.lists_for(rows)
        codes = self.codes_label(dim, rows)
        if codes == "float32":
            return f"IVF{lists},Flat"
        if codes == "float16":
            return f"IVF{lists},SQfp16"
        return f"IVF{lists},PQ{dim // self.pq_dims}x4fsr,Refine(SQ8)"

    def codes_label(self, dim: int, rows: int) -> str:
        """What the lists of an IVF index over ``rows`` vectors of ``dim`` dimensions hold, as index
        manifests name it: "float32", "float16" or "pq4xM" (M codes a row). "pq4" lists hold
        float16 codes where ``pq_dims`` does not divide ``dim`` or there are fewer than
        ``pq_min_rows`` rows."""
        if self.ivf_codes != "pq4":
            return self.ivf_codes
        if self.pq_dims < 1 or dim % self.pq_dims or rows < self.pq_min_rows:
            return "float16"
        return f"pq4x{dim // self.pq_dims}"

    def lists_for(self, rows: int) -> int:
        """Inverted lists of an IVF index over ``rows`` vectors (a power of two, at most ``rows``)."""
        wanted = max(rows / max(self.list_rows, 1), 1.0)
        return max(1, min(rows, self.max_lists, 1 << round(math.log2(wanted))))
