"""What a model run costs, and which run plan embeds real texts fastest: the defaults of batching.py.

    flock /work/.bench.lock .venv/bin/python benchmarks/encoder_runs.py \
        [--datasets ../shared/datasets] [--texts 1024] [--repetitions 3] [--out benchmarks/results]

1. Run cost: per variant, the ONNX session (:class:`worker.embedding.OnnxSession`, one thread)
   on padded shapes of 1 to 64 rows x 8 to 64 tokens; a least-squares fit of CPU seconds to
   ``a + b x positions`` (relative errors) gives the fixed cost of a run in token positions
   (``a / b``). Where the fixed cost goes: ONNX Runtime's own profile of runs of one token, by
   operator type, beside the bytes of the weight matrices every run reads (a run of one token
   reads each once, and they are far larger than a core's caches).
2. Plans: per variant, Banking77 + CLINC150 test texts (shuffled, seed 0) tokenised once and
   embedded in calls of 32 and 256 texts, each call planned by :func:`plan_runs` with several
   overheads and budgets, and in arrival order (one run per call, the naive plan); texts per CPU
   second (median over repetitions that alternate the order of the plans).

Writes ``encoder_runs.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from datasets import shuffled_test_texts
from machine import machine_info
from rich.console import Console

from worker.config import load_settings
from worker.embedding import OnnxSession, resolve_model
from worker.embedding.batching import plan_runs

REPO = Path(__file__).resolve().parents[1]
SHAPES = [(rows, width) for rows in (1, 4, 16, 64) for width in (8, 16, 32, 64)]
CALLS = (32, 256)
#: (name, overhead, budget); None: the call in arrival order, one run
PLANS: list[tuple[str, float | None, int]] = [
    ("arrival order, one run a call", None, 1 << 20),
    ("sorted, one run a call", 1e9, 1 << 20),
    ("overhead 10", 10, 4096),
    ("overhead 40", 40, 4096),
    ("overhead 100", 100, 4096),
    ("overhead 40, budget 2048", 40, 2048),
]
console = Console(width=140)


def run_cost(session: OnnxSession, repetitions: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    seconds: dict[tuple[int, int], list[float]] = {shape: [] for shape in SHAPES}
    for _ in range(repetitions):
        for rows, width in SHAPES:
            batch = [rng.integers(1000, 20000, width, dtype=np.int64) for _ in range(rows)]
            session.embed_tokens(batch)  # warm this shape
            started = time.thread_time()
            for _ in range(3):
                session.embed_tokens(batch)
            seconds[(rows, width)].append((time.thread_time() - started) / 3)
    positions = np.array([r * w for r, w in SHAPES], dtype=np.float64)
    median = np.array([statistics.median(seconds[s]) for s in SHAPES])
    # relative errors: the small shapes, where the fixed cost shows, weigh as much as the large
    slope, intercept = np.polyfit(positions, median, 1, w=1 / median)
    return {
        "fixed_ms": round(1000 * intercept, 3),
        "per_position_us": round(1e6 * slope, 3),
        "overhead_positions": round(intercept / slope, 1),
        "shapes_ms": {f"{r}x{w}": round(1000 * statistics.median(seconds[(r, w)]), 3) for r, w in SHAPES},
    }


#: the operators whose second input is a weight matrix (fp32, and the static int8 graph's)
WEIGHT_OPS = {"MatMul", "MatMulIntegerToFloat", "MatMulInteger", "FusedMatMul", "Gemm"}


def one_token_profile(model: Path, runs: int = 40) -> dict[str, Any]:
    """ONNX Runtime's profile of ``runs`` runs of one token (after 10 unprofiled-in-the-figures
    warm-up runs): the median run, the kernels' time by operator type, and the weight bytes."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    graph = onnx.load(str(model)).graph
    initializers = {t.name: t for t in graph.initializer}
    weight_bytes = sum(
        numpy_helper.to_array(initializers[node.input[1]]).nbytes
        for node in graph.node
        if node.op_type in WEIGHT_OPS and len(node.input) > 1 and node.input[1] in initializers
    )
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as folder:
        options.profile_file_prefix = str(Path(folder) / "run")
        session = ort.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])
        names = {i.name for i in session.get_inputs()}
        ids = np.full((1, 1), 1037, dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        for _ in range(10 + runs):
            session.run(None, {k: v for k, v in feed.items() if k in names})
        events = json.loads(Path(session.end_profiling()).read_text())
    timed = [e for e in events if e.get("name") == "model_run"][10:]
    first, last = timed[0]["ts"], timed[-1]["ts"] + timed[-1]["dur"]
    by_op: dict[str, float] = {}
    for event in events:
        if (
            event.get("cat") == "Node"
            and event["name"].endswith("_kernel_time")
            and first <= event["ts"] <= last
        ):
            op = event["args"].get("op_name", "?")
            by_op[op] = by_op.get(op, 0.0) + event["dur"] / len(timed)
    kernels = sum(by_op.values())
    return {
        "runs": len(timed),
        "run_us_median": statistics.median(e["dur"] for e in timed),
        "kernels_us": round(kernels, 1),
        "outside_kernels_us": round(statistics.median(e["dur"] for e in timed) - kernels, 1),
        "by_op_us": {op: round(us, 1) for op, us in sorted(by_op.items(), key=lambda kv: -kv[1])},
        "weight_matrices_mb": round(weight_bytes / 1e6, 1),
    }


def embed_planned(
    session: OnnxSession, ids: list[Any], call: int, overhead: float | None, budget: int
) -> int:
    padded = 0
    for start in range(0, len(ids), call):
        rows = ids[start : start + call]
        if overhead is None:
            runs = [list(range(len(rows)))]
        else:
            runs = plan_runs([len(r) for r in rows], budget, overhead)
        for run in runs:
            session.embed_tokens([rows[i] for i in run])
            padded += len(run) * max(len(rows[i]) for i in run)
    return padded


def plans(session: OnnxSession, ids: list[Any], repetitions: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    tokens = sum(len(r) for r in ids)
    for call in CALLS:
        cpu: dict[str, list[float]] = {name: [] for name, _, _ in PLANS}
        padded: dict[str, int] = {}
        for rep in range(repetitions):
            for name, overhead, budget in PLANS if rep % 2 == 0 else PLANS[::-1]:
                started = time.thread_time()
                padded[name] = embed_planned(session, ids, call, overhead, budget)
                cpu[name].append(len(ids) / (time.thread_time() - started))
        out[str(call)] = {
            name: {
                "cpu_texts_per_s_median": round(statistics.median(cpu[name]), 1),
                "cpu_texts_per_s": [round(x, 1) for x in cpu[name]],
                "padding_share": round(1 - tokens / padded[name], 4),
            }
            for name, _, _ in PLANS
        }
        for name, figures in out[str(call)].items():
            console.print(f"  calls of {call}, {name}: {figures['cpu_texts_per_s_median']} texts/CPU s")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--texts", type=int, default=1024)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=["fp32", "int8"])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    texts = shuffled_test_texts(args.datasets)
    load_before, started = os.getloadavg(), time.perf_counter()
    variants: dict[str, Any] = {}
    for variant in args.variants:
        spec = resolve_model(load_settings(model_variant=variant))
        assert spec.path is not None
        session = OnnxSession(spec.path)
        ids = session.tokenize(texts[: args.texts])
        cost = run_cost(session, args.repetitions)
        console.print(
            f"{variant}: a run costs {cost['fixed_ms']} ms + {cost['per_position_us']} us a position "
            f"(overhead {cost['overhead_positions']} positions)"
        )
        profile = one_token_profile(spec.path / "model.onnx")
        weights = profile["weight_matrices_mb"]
        matmuls = sum(us for op, us in profile["by_op_us"].items() if op in WEIGHT_OPS)
        console.print(
            f"  a run of one token: {profile['run_us_median']:.0f} us, {matmuls:.0f} us of it in the "
            f"weight matmuls ({weights} MB of weights), "
            f"{profile['outside_kernels_us']:.0f} us outside kernels"
        )
        variants[variant] = {
            "run_cost": cost,
            "one_token_profile": profile,
            "plans": plans(session, ids, args.repetitions),
        }
    doc = {
        "benchmark": "encoder_runs",
        "command": "python benchmarks/encoder_runs.py " + " ".join(sys.argv[1:]),
        "machine": machine_info(),
        "noise": {
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "seconds": round(time.perf_counter() - started, 1),
        },
        "settings": {"texts": args.texts, "repetitions": args.repetitions, "intra_op_threads": 1},
        "variants": variants,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "encoder_runs.json").write_text(json.dumps(doc, indent=2) + "\n")
    console.print(f"wrote {args.out / 'encoder_runs.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
