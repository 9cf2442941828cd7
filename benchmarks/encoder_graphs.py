"""Which graph optimisations make the encoder faster on one intra-op thread: measured, alternating.

    flock /work/.bench.lock .venv/bin/python benchmarks/encoder_graphs.py \
        [--datasets ../shared/datasets] [--texts 1000] [--repetitions 5] [--out benchmarks/results]

Every graph runs in ONE process on the same tokenised texts (Banking77 + CLINC150 test rows,
shuffled), in batches of 32 sorted by token count (what the encoder pool feeds it); repetitions
alternate the order of the graphs, so drift in the machine's load hits all of them alike. The
figure is texts per second of the calling thread's CPU time (ONNX Runtime runs a one-thread
session on the caller), median over repetitions, with wall-clock texts/s beside it; CPU time
leaves out the time other processes hold the core, wall time does not.

Graphs: the export as shipped (fp32, static int8), each loaded at ORT_ENABLE_ALL (as fastembed
loads it: ONNX Runtime fuses bias + GELU and the Q·K scale itself) and at ORT_ENABLE_BASIC; the
offline BERT optimizer of ``onnxruntime.transformers`` (fused Attention, SkipLayerNormalization,
EmbedLayerNormalization, BiasGelu), with and without its Attention; int8 quantised from the
optimizer's graph with the shipped ranges; int8 with GELU as ``FastGelu`` (tanh form); and
dynamic int8 (``quantize_dynamic``) for reference. Writes ``encoder_graphs.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

sys.path.insert(0, str(Path(__file__).resolve().parent))

from datasets import shuffled_test_texts
from machine import machine_info
from rich.console import Console

from worker.config import load_settings
from worker.embedding.calibration import ChannelRanges
from worker.embedding.prepare import prepare
from worker.embedding.quantize import MS_DOMAIN, StaticInt8, quantise_static
from worker.embedding.tokens import load_tokenizer

REPO = Path(__file__).resolve().parents[1]
BATCH = 32
console = Console(width=140)


def ort_optimised(fp32: Path, attention: bool) -> onnx.ModelProto:
    """The offline BERT optimizer's graph (needs sympy for its shape inference)."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    options.enable_attention = attention
    logging.disable(logging.WARNING)  # it warns that the producer is not "pytorch"
    try:
        optimised = optimize_model(
            str(fp32),
            model_type="bert",
            num_heads=12,
            hidden_size=384,
            opt_level=0,
            optimization_options=options,
        )
    finally:
        logging.disable(logging.NOTSET)
    model: onnx.ModelProto = optimised.model
    return model


def fast_gelu(model: onnx.ModelProto) -> onnx.ModelProto:
    """Each exact GELU (Div, Erf, Add, Mul, Mul) replaced by com.microsoft FastGelu (tanh form)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    producer = {out: node for node in graph.node for out in node.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    dropped: set[str] = set()
    replaced: dict[str, onnx.NodeProto] = {}
    for node in graph.node:
        if node.op_type != "Erf":
            continue
        divide = producer[node.input[0]]
        add_one = readers[node.output[0]][0]
        times_x = readers[add_one.output[0]][0]
        half = readers[times_x.output[0]][0]
        dropped |= {divide.name, node.name, add_one.name, times_x.name}
        replaced[half.name] = helper.make_node(
            "FastGelu", [divide.input[0]], list(half.output), name=half.name, domain=MS_DOMAIN
        )
    nodes = [replaced.get(n.name, n) for n in graph.node if n.name not in dropped]
    del graph.node[:]
    graph.node.extend(nodes)
    if not any(o.domain == MS_DOMAIN for o in copy.opset_import):
        copy.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return copy


def dynamic_int8(fp32: Path, target: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.disable(logging.INFO)
    try:
        quantize_dynamic(fp32, target, per_channel=True, weight_type=QuantType.QInt8)
    finally:
        logging.disable(logging.NOTSET)


def session(path: Path, level: ort.GraphOptimizationLevel) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = level
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


Batch = dict[str, np.ndarray]


def sorted_batches(ids: list[list[int]]) -> list[Batch]:
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    batches = []
    for start in range(0, len(order), BATCH):
        rows = [ids[i] for i in order[start : start + BATCH]]
        width = max(len(r) for r in rows)
        matrix = np.array([r + [0] * (width - len(r)) for r in rows], dtype=np.int64)
        mask = np.array([[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype=np.int64)
        batches.append({"input_ids": matrix, "attention_mask": mask, "token_type_ids": np.zeros_like(matrix)})
    return batches


def steal_jiffies() -> int:
    """Time the hypervisor gave this VM's CPUs to others (the 8th field of /proc/stat's cpu line)."""
    with open("/proc/stat") as fh:
        return int(fh.readline().split()[8])


def measure(
    graphs: dict[str, Callable[[], ort.InferenceSession]], batches: list[Batch], repetitions: int
) -> dict[str, Any]:
    sessions = {name: make() for name, make in graphs.items()}
    for s in sessions.values():
        s.run(None, batches[0])  # warm-up: first-run allocations
    texts = sum(len(b["input_ids"]) for b in batches)
    cpu: dict[str, list[float]] = {name: [] for name in sessions}
    wall: dict[str, list[float]] = {name: [] for name in sessions}
    names = list(sessions)
    for rep in range(repetitions):
        for name in names if rep % 2 == 0 else names[::-1]:
            started_cpu, started_wall = time.thread_time(), time.perf_counter()
            for batch in batches:
                sessions[name].run(None, batch)
            cpu[name].append(texts / (time.thread_time() - started_cpu))
            wall[name].append(texts / (time.perf_counter() - started_wall))
            console.print(f"  {name}: {cpu[name][-1]:.0f} texts/s (CPU), {wall[name][-1]:.0f} (wall)")
    return {
        name: {
            "cpu_texts_per_s_median": round(statistics.median(cpu[name]), 1),
            "cpu_texts_per_s": [round(x, 1) for x in cpu[name]],
            "wall_texts_per_s_median": round(statistics.median(wall[name]), 1),
            "wall_texts_per_s": [round(x, 1) for x in wall[name]],
        }
        for name in names
    }


#: a fusion is kept when it makes the graph at least this much faster (CPU time): less is noise
KEEP_ABOVE = 1.03
#: (what is decided, the graph with it, the graph without it)
DECISIONS = [
    ("ORT_ENABLE_ALL session fusions, fp32", "fp32 export, ORT_ENABLE_ALL", "fp32 export, ORT_ENABLE_BASIC"),
    ("ORT_ENABLE_ALL session fusions, int8",
     "int8 static export, ORT_ENABLE_ALL", "int8 static export, ORT_ENABLE_BASIC"),
    ("offline BERT optimizer with Attention, fp32",
     "fp32 ORT optimizer (Attention, SkipLN, EmbedLN, BiasGelu)", "fp32 export, ORT_ENABLE_ALL"),
    ("offline BERT optimizer without Attention, fp32",
     "fp32 ORT optimizer without Attention", "fp32 export, ORT_ENABLE_ALL"),
    ("offline BERT optimizer without Attention, int8",
     "int8 static from ORT optimizer without Attention", "int8 static export, ORT_ENABLE_ALL"),
    ("FastGelu (tanh GELU, changes the model's numerics), int8",
     "int8 static, FastGelu", "int8 static export, ORT_ENABLE_ALL"),
]  # fmt: skip


def decisions(figures: dict[str, Any]) -> dict[str, Any]:
    """Speed-up of each fusion (median CPU texts/s with ÷ without) and whether it is kept."""
    out = {}
    for what, with_it, without in DECISIONS:
        ratio = figures[with_it]["cpu_texts_per_s_median"] / figures[without]["cpu_texts_per_s_median"]
        out[what] = {"speedup": round(ratio, 3), "kept": ratio >= KEEP_ABOVE and "FastGelu" not in what}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--texts", type=int, default=1000)
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()

    prepared = prepare(load_settings().cache_dir)
    fp32, int8 = prepared.variant_dir("fp32") / "model.onnx", prepared.variant_dir("int8") / "model.onnx"
    texts = shuffled_test_texts(args.datasets)
    tokenizer = load_tokenizer(prepared.variant_dir("fp32"))
    # encode_batch pads to the longest of the call; each row keeps its own tokens only
    ids = [e.ids[: sum(e.attention_mask)] for e in tokenizer.encode_batch(texts[: args.texts])]
    batches = sorted_batches(ids)
    tokens = sum(len(r) for r in ids)
    padded = sum(b["input_ids"].size for b in batches)

    ALL, BASIC = ort.GraphOptimizationLevel.ORT_ENABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    ranges = ChannelRanges.load()
    with tempfile.TemporaryDirectory(prefix="routeworker-graphs-") as scratch:
        work = Path(scratch)
        fused = ort_optimised(fp32, attention=True)
        fused_no_attention = ort_optimised(fp32, attention=False)
        onnx.save_model(fused, str(work / "fp32-fused.onnx"))
        onnx.save_model(fused_no_attention, str(work / "fp32-fused-no-attention.onnx"))
        onnx.save_model(
            quantise_static(fused_no_attention, ranges, StaticInt8()),
            str(work / "int8-fused-no-attention.onnx"),
        )
        onnx.save_model(fast_gelu(onnx.load(str(int8))), str(work / "int8-fastgelu.onnx"))
        dynamic_int8(fp32, work / "int8-dynamic.onnx")
        graphs: dict[str, Callable[[], ort.InferenceSession]] = {
            "fp32 export, ORT_ENABLE_ALL": lambda: session(fp32, ALL),
            "fp32 export, ORT_ENABLE_BASIC": lambda: session(fp32, BASIC),
            "fp32 ORT optimizer (Attention, SkipLN, EmbedLN, BiasGelu)": lambda: session(
                work / "fp32-fused.onnx", ALL
            ),
            "fp32 ORT optimizer without Attention": lambda: session(
                work / "fp32-fused-no-attention.onnx", ALL
            ),
            "int8 static export, ORT_ENABLE_ALL": lambda: session(int8, ALL),
            "int8 static export, ORT_ENABLE_BASIC": lambda: session(int8, BASIC),
            "int8 static from ORT optimizer without Attention": lambda: session(
                work / "int8-fused-no-attention.onnx", ALL
            ),
            "int8 static, FastGelu": lambda: session(work / "int8-fastgelu.onnx", ALL),
            "int8 dynamic (reference)": lambda: session(work / "int8-dynamic.onnx", ALL),
        }
        load_before, steal_before, started = os.getloadavg(), steal_jiffies(), time.perf_counter()
        figures = measure(graphs, batches, args.repetitions)
        seconds = time.perf_counter() - started
        steal = (steal_jiffies() - steal_before) / os.sysconf("SC_CLK_TCK")
    doc = {
        "benchmark": "encoder_graphs",
        "command": "python benchmarks/encoder_graphs.py " + " ".join(sys.argv[1:]),
        "machine": machine_info(),
        "noise": {
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "steal_share": round(steal / (seconds * (os.cpu_count() or 1)), 4),
        },
        "settings": {
            "texts": len(ids),
            "tokens": tokens,
            "padded_tokens": padded,
            "batch": f"{BATCH}, sorted by token count",
            "repetitions": args.repetitions,
            "intra_op_threads": 1,
            "int8": asdict(StaticInt8()),
        },
        "graphs": figures,
        "decisions": {"keep_above": KEEP_ABOVE, "fusions": decisions(figures)},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "encoder_graphs.json").write_text(json.dumps(doc, indent=2) + "\n")
    for name, f in figures.items():
        console.print(
            f"{name:58s} {f['cpu_texts_per_s_median']:7.1f} CPU  {f['wall_texts_per_s_median']:7.1f} wall"
        )
    for what, d in doc["decisions"]["fusions"].items():
        console.print(f"{what}: x{d['speedup']} -> {'kept' if d['kept'] else 'not applied'}")
    console.print(f"wrote {args.out / 'encoder_graphs.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
