"""Does a second encoder session pay on this machine? One session against a pool of sessions that
share every call, on real texts, and the same pool held to one CPU.

    flock /work/.bench.lock .venv/bin/python benchmarks/encoder_sessions.py \
        [--datasets ../shared/datasets] [--texts 1024] [--repetitions 3] [--sessions 2] \
        [--calls 1 2 8 32 256] [--variants fp32 int8] [--out benchmarks/results]

Per variant, the Banking77 + CLINC150 test texts (shuffled, seed 0) are embedded through
:meth:`EncoderPool.embed`, one call at a time in calls of each size (as the pipeline hands its
batches over), by three set-ups in alternating order:

1. one session (one intra-op thread);
2. ``--sessions`` sessions sharing each call (:func:`~worker.embedding.batching.share_runs`);
3. the same pool with the process held to one CPU (``sched_setaffinity``): if the machine's CPUs
   were hyperthreads of one core, (2) would gain about as little as (3).

Reported: texts per second of wall time and the median wall time of a call (its latency), the
median over repetitions; the CPU topology the kernel reports (``thread_siblings_list``). Writes
``encoder_sessions.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from datasets import shuffled_test_texts
from machine import machine_info
from rich.console import Console
from rich.table import Table

from worker.config import load_settings
from worker.embedding import resolve_model
from worker.embedding.pool import EncoderPool

REPO = Path(__file__).resolve().parents[1]
console = Console(width=140)


def topology() -> dict[str, Any]:
    """The CPUs this process may use and, per CPU, the CPUs sharing its core (the kernel's view)."""
    cpus = sorted(os.sched_getaffinity(0))
    siblings = {}
    for cpu in cpus:
        path = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        siblings[str(cpu)] = path.read_text().strip() if path.exists() else "unknown"
    return {"cpus": cpus, "thread_siblings": siblings}


@contextlib.contextmanager
def one_cpu(held: bool) -> Iterator[None]:
    """Hold this process (every thread, the pool's included) to its first CPU while inside."""
    if not held:
        yield
        return
    everything = os.sched_getaffinity(0)
    cpu = min(everything)
    tids = [int(t) for t in os.listdir("/proc/self/task")]
    for tid in tids:
        os.sched_setaffinity(tid, {cpu})
    try:
        yield
    finally:
        for tid in (int(t) for t in os.listdir("/proc/self/task")):  # threads started inside too
            with contextlib.suppress(OSError):  # a thread that has ended meanwhile
                os.sched_setaffinity(tid, everything)


async def embed_in_calls(pool: EncoderPool, texts: list[str], call: int) -> dict[str, float]:
    latencies = []
    started = time.perf_counter()
    for start in range(0, len(texts), call):
        begun = time.perf_counter()
        await pool.embed(texts[start : start + call])
        latencies.append(time.perf_counter() - begun)
    wall = time.perf_counter() - started
    return {"texts_per_s": len(texts) / wall, "call_ms": statistics.median(latencies) * 1000}


def measure(variant: str, texts: list[str], args: argparse.Namespace) -> dict[str, Any]:
    spec = resolve_model(load_settings(model_variant=variant))
    pools = {
        "one session": EncoderPool(spec, 1),
        f"{args.sessions} sessions": EncoderPool(spec, args.sessions),
    }
    setups = [
        ("one session", "one session", False),
        (f"{args.sessions} sessions", f"{args.sessions} sessions", False),
        (f"{args.sessions} sessions held to one CPU", f"{args.sessions} sessions", True),
    ]
    runs: dict[str, dict[int, list[dict[str, float]]]] = {
        name: {c: [] for c in args.calls} for name, _, _ in setups
    }
    try:
        for pool in pools.values():  # warm: the first runs of a session allocate its buffers
            asyncio.run(embed_in_calls(pool, texts[:64], 32))
        for repetition in range(args.repetitions):
            order = setups if repetition % 2 == 0 else setups[::-1]
            for call in args.calls:
                for name, pool_name, held in order:
                    with one_cpu(held):
                        runs[name][call].append(asyncio.run(embed_in_calls(pools[pool_name], texts, call)))
    finally:
        for pool in pools.values():
            pool.close()
    out: dict[str, Any] = {}
    for name, by_call in runs.items():
        out[name] = {
            str(call): {
                "texts_per_s_median": round(statistics.median(r["texts_per_s"] for r in rs), 1),
                "texts_per_s": [round(r["texts_per_s"], 1) for r in rs],
                "call_ms_median": round(statistics.median(r["call_ms"] for r in rs), 2),
            }
            for call, rs in by_call.items()
        }
    base = out["one session"]
    for name in out:
        for call, cell in out[name].items():
            cell["vs_one_session"] = round(cell["texts_per_s_median"] / base[call]["texts_per_s_median"], 3)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--texts", type=int, default=1024)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--sessions", type=int, default=2)
    parser.add_argument("--calls", nargs="+", type=int, default=[1, 2, 8, 32, 256])
    parser.add_argument("--variants", nargs="+", default=["fp32", "int8"])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    texts = shuffled_test_texts(args.datasets)
    texts = texts[: args.texts]
    load_before, started = os.getloadavg(), time.perf_counter()
    variants = {variant: measure(variant, texts, args) for variant in args.variants}
    doc = {
        "benchmark": "encoder_sessions",
        "command": "python benchmarks/encoder_sessions.py " + " ".join(sys.argv[1:]),
        "machine": {**machine_info(), "topology": topology()},
        "noise": {
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "seconds": round(time.perf_counter() - started, 1),
        },
        "settings": {
            "texts": len(texts),
            "repetitions": args.repetitions,
            "sessions": args.sessions,
            "calls": args.calls,
            "intra_op_threads": 1,
            "workload": "Banking77 test + CLINC150 test, shuffled (seed 0)",
        },
        "variants": variants,
    }
    for variant, setups in variants.items():
        table = Table(title=f"{variant}: texts/s (call ms), one call at a time")
        table.add_column("set-up")
        for call in args.calls:
            table.add_column(f"calls of {call}", justify="right")
        for name, cells in setups.items():
            table.add_row(
                name,
                *(
                    f"{c['texts_per_s_median']} ({c['call_ms_median']} ms) {c['vs_one_session']:.2f}x"
                    for c in cells.values()
                ),
            )
        console.print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "encoder_sessions.json").write_text(json.dumps(doc, indent=2) + "\n")
    console.print(f"wrote {args.out / 'encoder_sessions.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
