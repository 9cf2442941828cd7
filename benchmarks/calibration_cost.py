"""What a calibration costs: self-fit seconds, record size, and a replica's decode time.

    .venv/bin/python benchmarks/calibration_cost.py [--out benchmarks/results]

Route tables of 10 utterances per route (clustered synthetic unit vectors, dim 384: the cost
depends on the sizes, not on the text) are self-fitted as `routeworker routes apply` does, with the
default head, and without one (``ROUTING_HEAD=false`` or above ``ROUTING_HEAD_MAX_ROUTES``). For
each: the seconds of the cross-validation and of the served head, the calibration record's size on
the mutation log, and the seconds a replica spends decoding it (in its background thread). One
BLAS thread, as every routeworker process runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import machine_info
from rich.console import Console
from rich.table import Table

from worker.contracts import Limits, decode_calibration, encode
from worker.replication import calibration_of, calibration_record
from worker.routing import Route, RouteVectors, ScoringConfig, l2_normalise
from worker.routing.head import HeadConfig, train_head
from worker.routing.self_fit import SelfFitConfig, held_out_answers, self_fit

REPO = Path(__file__).resolve().parents[1]
DIM = 384
console = Console(width=140)


def routes(count: int, per_route: int = 10, seed: int = 0) -> list[RouteVectors]:
    rng = np.random.default_rng(seed)
    centres = l2_normalise(rng.normal(size=(count, DIM)))
    empty = np.zeros((0, DIM), np.float32)
    return [
        RouteVectors(
            Route(f"route-{i:05d}", tuple(f"route {i} utterance {j}" for j in range(per_route))),
            l2_normalise(c + 1.2 * rng.normal(size=(per_route, DIM)) / np.sqrt(DIM)),
            empty,
            "synthetic-384",
        )
        for i, c in enumerate(centres)
    ]


def measure(count: int, head: HeadConfig | None) -> dict[str, object]:
    table = routes(count)
    config = SelfFitConfig(head=head)
    ordered = sorted(table, key=lambda rv: rv.name)
    weights = config.head_weights if head is not None else (0.0,)
    started = time.perf_counter()
    answers = held_out_answers(ordered, ScoringConfig(), config, head, tuple(sorted(set(weights))))
    cross_validation_s = time.perf_counter() - started
    started = time.perf_counter()
    if head is not None:
        train_head(ordered, head)
    head_s = time.perf_counter() - started
    started = time.perf_counter()
    calibration = self_fit(table, ScoringConfig(), config)
    total_s = time.perf_counter() - started
    started = time.perf_counter()
    raw = encode(calibration_record(calibration, DIM))
    encode_s = time.perf_counter() - started
    started = time.perf_counter()
    calibration_of(decode_calibration(raw, Limits(max_mutation_bytes=64 << 20)))
    decode_s = time.perf_counter() - started
    return {
        "routes": count,
        "utterances": count * 10,
        "head": head is not None,
        "folds_run": answers.folds,
        "held_out": answers.examples,
        "cross_validation_s": cross_validation_s,
        "served_head_s": head_s,
        "self_fit_total_s": total_s,
        "record_bytes": len(raw),
        "record_encode_s": encode_s,
        "replica_decode_s": decode_s,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--sizes", type=int, nargs="*", default=[100, 1000, 2000])
    args = parser.parse_args()
    rows = [measure(count, HeadConfig()) for count in args.sizes]
    rows += [measure(count, None) for count in args.sizes]
    table = Table(title="calibration cost (self-fit, 10 utterances per route)")
    columns = ["routes", "head", "folds_run", "cross_validation_s", "served_head_s", "self_fit_total_s",
               "record_bytes", "replica_decode_s"]  # fmt: skip
    for name in columns:
        table.add_column(name, justify="right")
    for row in rows:
        table.add_row(*(f"{row[c]:.2f}" if isinstance(row[c], float) else str(row[c]) for c in columns))
    console.print(table)
    manifest = {
        "benchmark": "calibration_cost",
        "command": "python benchmarks/calibration_cost.py " + " ".join(sys.argv[1:]),
        "machine": machine_info(),
        "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
        "head": HeadConfig().__dict__,
        "self_fit": {k: v for k, v in SelfFitConfig().__dict__.items() if k != "head"},
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "calibration_cost.json").write_text(json.dumps(manifest, indent=2, default=str))
    console.print(f"wrote {args.out / 'calibration_cost.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
