"""Static int8 recipes against the accuracy gate and the clock: which one may be served by default.

    flock /work/.bench.lock .venv/bin/python benchmarks/int8_recipes.py \
        [--recipes NAME ...] [--gate] [--speed] [--datasets ../shared/datasets] [--out benchmarks/results]

Every recipe is a :class:`~worker.embedding.quantize.StaticInt8` applied to the prepared fp32 export
with the shipped calibration ranges. ``--gate`` embeds every Banking77 and CLINC150 text with it
(through :class:`~worker.embedding.session.OnnxSession`, as a replica would; vectors cached per graph
under ``<cache_dir>/bench-vectors/recipes``) and runs the accuracy gate of benchmarks/variants.py
(served self-fit router, both datasets, full and 10/route) against the fp32 vectors. It also gives
each recipe's worst and mean cosine to fp32 over every text. ``--speed`` times fp32, dynamic int8
and every recipe in one process, alternating, on the same length-sorted batches
(benchmarks/encoder_graphs.py's method: texts per CPU second, median). Writes
``int8_recipes.json``, merging into the figures already there, so recipes can be measured a few at a
time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))

from datasets import banking77, clinc150, shuffled_test_texts
from encoder_graphs import dynamic_int8, measure, session, sorted_batches, steal_jiffies
from machine import machine_info
from rich.console import Console
from variants import GATE_POINTS, ROUTERS, per_route_rows, router_accuracy
from vectors import VectorCache

from worker.config import load_settings
from worker.embedding import EncoderPool, resolve_model
from worker.embedding.calibration import ChannelRanges
from worker.embedding.export import MODEL_FILE
from worker.embedding.prepare import prepare
from worker.embedding.quantize import FFN_OUTPUT, StaticInt8, quantise_static
from worker.embedding.session import OnnxSession
from worker.embedding.tokens import load_tokenizer

REPO = Path(__file__).resolve().parents[1]
LAYERS = 6
console = Console(width=150)


def _layers(suffix: str, layers: Sequence[int] = range(LAYERS)) -> tuple[str, ...]:
    """Patterns of StaticInt8.fp32 / per_token naming ``suffix``'s weight in each of ``layers``."""
    return tuple(re.escape(f"encoder.layer.{i}.{suffix}.") for i in layers)


#: main's recipe before this benchmark: the knobs each recipe below changes start from it
BEFORE = StaticInt8(weight_limit=None, fp32=())


def _recipe(**changes: Any) -> StaticInt8:
    return replace(BEFORE, **changes)


RECIPES: dict[str, StaticInt8] = {
    "u8u8 w8 a8 (main)": _recipe(),
    "u8s8 w7 a8": _recipe(weight_bits=7),
    "u8s8 w8 a8 (saturating)": _recipe(weight_limit=127),
    "u8s8 w8 a7": _recipe(weight_limit=127, activation_max=127),
    "u8s8 w90 a181": _recipe(weight_limit=90, activation_max=181),
    "u8s8 w64 a255": _recipe(weight_limit=64),
    "u8s8 w90 a181, FFN out fp32": _recipe(weight_limit=90, activation_max=181, fp32=_layers("output.dense")),
    "u8s8 w64 a255, FFN out fp32": _recipe(weight_limit=64, fp32=(FFN_OUTPUT,)),  # the default
    "u8s8 w64 a255, FFN out per token": _recipe(weight_limit=64, per_token=_layers("output.dense")),
    "u8s8 w64 a255, FFN in+out per token": _recipe(
        weight_limit=64, per_token=_layers("output.dense") + _layers("intermediate.dense")
    ),
    "u8s8 w64, all per token": _recipe(weight_limit=64, per_token=(re.escape("encoder."),)),
    "u8s8 w64 a255, FFN out per token u8u8": _recipe(
        weight_limit=64, per_token=_layers("output.dense"), per_token_weight_limit=None
    ),
    "u8u8 w8 a8, FFN out per token u8u8": _recipe(
        per_token=_layers("output.dense"), per_token_weight_limit=None
    ),
    "u8u8 w8 a8, all per token u8u8": _recipe(
        per_token=(re.escape("encoder."),), per_token_weight_limit=None
    ),
    "u8u8 w8 a8, all per token u8u8, alpha 0.5": _recipe(
        alpha=0.5, per_token=(re.escape("encoder."),), per_token_weight_limit=None
    ),
    "u8u8 w8 a8, FFN out fp32": _recipe(fp32=_layers("output.dense")),
    "u8s8 w64 a255, FFN out per token u8u8, alpha 0.5": _recipe(
        alpha=0.5, weight_limit=64, per_token=_layers("output.dense"), per_token_weight_limit=None
    ),
    "u8s8 w90 a181, last layer fp32": _recipe(
        weight_limit=90, activation_max=181, fp32=(re.escape("encoder.layer.5."),)
    ),
    "u8s8 w90 a181, alpha 0.5": _recipe(alpha=0.5, weight_limit=90, activation_max=181),
    "u8s8 w90 a181, alpha 0.65": _recipe(alpha=0.65, weight_limit=90, activation_max=181),
}


#: recipes calibrated on per-channel quantiles of the shipped corpus instead of its min/max
QUANTILE_RECIPES: dict[str, tuple[StaticInt8, float]] = {
    "u8s8 w90 a181, q1e-4": (_recipe(weight_limit=90, activation_max=181), 1e-4),
    "u8s8 w90 a181, q1e-3": (_recipe(weight_limit=90, activation_max=181), 1e-3),
    "u8u8 w8 a8, q1e-3": (_recipe(), 1e-3),
}


def quantile_ranges(model_path: Path, tokenizer_dir: Path, share: float) -> ChannelRanges:
    """Each channel's ``share`` and ``1 - share`` quantiles over every token of the shipped corpus."""
    from worker.embedding.calibration import corpus_texts, weight_input_activations

    tokenizer = load_tokenizer(tokenizer_dir)
    tokenizer.no_padding()
    _, inputs, activations = weight_input_activations(model_path, tokenizer, corpus_texts())
    rows: dict[str, list[np.ndarray]] = {item.name: [] for item in inputs}
    for values in activations:
        for item, value in zip(inputs, values, strict=True):
            rows[item.name].append(value)
    low, high = {}, {}
    for name, parts in rows.items():
        table = np.concatenate(parts)
        low[name] = np.quantile(table, share, axis=0).astype(np.float32)
        high[name] = np.quantile(table, 1.0 - share, axis=0).astype(np.float32)
    return ChannelRanges(low, high)


# which layers' FFN output matters most (one or a few left in fp32)
RECIPES |= {
    f"u8u8 w8 a8, FFN out fp32 in layers {','.join(map(str, layers))}": _recipe(
        fp32=_layers("output.dense", layers)
    )
    for layers in ((0,), (1,), (2,), (3,), (4,), (5,), (0, 1, 2), (3, 4, 5))
}


def graph_bytes(fp32: onnx.ModelProto, ranges: ChannelRanges, recipe: StaticInt8) -> bytes:
    return quantise_static(fp32, ranges, recipe).SerializeToString()


class GraphVectors:
    """``VectorCache``'s ``embed`` for one graph: every text embedded once, looked up by text."""

    def __init__(self, table: dict[str, np.ndarray]) -> None:
        self._table = table

    def embed(self, texts: Sequence[str], label: str) -> np.ndarray:
        return np.stack([self._table[t] for t in texts])


def embed_all(model: bytes, tokenizer_dir: Path, texts: list[str], cache: Path) -> np.ndarray:
    """Vectors of ``texts`` (sorted, unique) from the graph ``model``, cached by graph and texts."""
    key = hashlib.sha256(model + "\n".join(texts).encode()).hexdigest()[:16]
    path = cache / f"{key}.npy"
    if path.is_file():
        return np.load(path)
    with tempfile.TemporaryDirectory(prefix="routeworker-recipe-") as scratch:
        folder = Path(scratch)
        for item in tokenizer_dir.iterdir():
            if item.is_file() and item.name != MODEL_FILE:
                shutil.copy(item, folder / item.name)
        (folder / MODEL_FILE).write_bytes(model)
        encoder = OnnxSession(folder)
        ids = encoder.tokenize(texts)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out = np.zeros((len(texts), 384), np.float32)
        started = time.perf_counter()
        for start in range(0, len(order), 32):
            rows = order[start : start + 32]
            out[rows] = encoder.embed_tokens([ids[i] for i in rows])
        if len(texts) > 5000:
            console.print(f"  embedded {len(texts)} texts in {time.perf_counter() - started:.0f} s")
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path.with_suffix(".tmp.npy"), out)
    path.with_suffix(".tmp.npy").rename(path)
    return out


def fp32_vectors(datasets: list[Any]) -> dict[str, np.ndarray]:
    """The served fp32 vectors (variants.py's cache, so the baseline is the gate's own)."""
    settings = load_settings(model_variant="fp32")
    encoder = EncoderPool(resolve_model(settings), pool_size=1)
    cache = VectorCache(encoder, settings.cache_dir / "bench-vectors")
    table: dict[str, np.ndarray] = {}
    for ds in datasets:
        for label, split in (("routes", ds.routes), ("test", ds.test)):
            vectors = cache.embed(split.texts, f"{ds.name}-{label}")
            table.update(zip(split.texts, vectors, strict=True))
    encoder.close()
    return table


CELLS = ("banking77 full", "banking77 10/route", "clinc150 full", "clinc150 10/route")
SEEDS = (0, 1, 2)


def accuracy(
    vectors: dict[str, np.ndarray], datasets: list[Any], cells: Sequence[str]
) -> dict[str, dict[str, float]]:
    """variants.py's figures (served, uncalibrated, nearest) of the gate's ``cells``, by cell."""
    lookup = GraphVectors(vectors)
    out = {}
    for ds in datasets:
        test = lookup.embed(ds.test.texts, "test")
        routes = lookup.embed(ds.routes.texts, "routes")
        if f"{ds.name} full" in cells:
            out[f"{ds.name} full"] = router_accuracy(ds.routes, routes, ds.test, test, "recipe")
        if f"{ds.name} 10/route" in cells:
            by_seed = []
            for seed in SEEDS:
                rows = per_route_rows(ds.routes.labels, 10, seed)
                by_seed.append(router_accuracy(ds.routes.take(rows), routes[rows], ds.test, test, "recipe"))
            out[f"{ds.name} 10/route"] = {r: float(np.mean([f[r] for f in by_seed])) for r in ROUTERS}
    return out


def gate(figures: dict[str, dict[str, float]], base: dict[str, dict[str, float]]) -> dict[str, Any]:
    deltas = {
        cell: {r: round(100 * (figures[cell][r] - base[cell][r]), 3) for r in ROUTERS} for cell in figures
    }
    served = {cell: d[ROUTERS[2]] for cell, d in deltas.items()}
    return {
        "delta_points_vs_fp32": deltas,
        "served_deltas": served,
        "passed": len(served) == len(CELLS) and all(abs(d) <= GATE_POINTS for d in served.values()),
    }


def cosines(vectors: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> dict[str, float]:
    texts = sorted(reference)
    ours = np.stack([vectors[t] for t in texts]).astype(np.float64)
    theirs = np.stack([reference[t] for t in texts]).astype(np.float64)
    cos = np.sum(ours * theirs, axis=1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
    return {
        "min": round(float(cos.min()), 5),
        "p1": round(float(np.quantile(cos, 0.01)), 5),
        "mean": round(float(cos.mean()), 6),
    }


def speed(
    fp32: Path, models: dict[str, bytes], batches: list[dict[str, np.ndarray]], repetitions: int
) -> dict[str, Any]:
    ALL = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    with tempfile.TemporaryDirectory(prefix="routeworker-recipes-") as scratch:
        work = Path(scratch)
        dynamic_int8(fp32, work / "dynamic.onnx")
        graphs: dict[str, Callable[[], ort.InferenceSession]] = {
            "fp32": lambda: session(fp32, ALL),
            "dynamic int8 (reference, not deterministic)": lambda: session(work / "dynamic.onnx", ALL),
        }
        for i, (name, model) in enumerate(models.items()):
            path = work / f"recipe-{i}.onnx"
            path.write_bytes(model)
            graphs[name] = lambda path=path: session(path, ALL)  # type: ignore[misc]
        load_before, steal_before, started = os.getloadavg(), steal_jiffies(), time.perf_counter()
        figures = measure(graphs, batches, repetitions)
        seconds = time.perf_counter() - started
        steal = (steal_jiffies() - steal_before) / os.sysconf("SC_CLK_TCK")
    base = figures["fp32"]["cpu_texts_per_s_median"]
    dynamic = figures["dynamic int8 (reference, not deterministic)"]["cpu_texts_per_s_median"]
    for f in figures.values():
        f["vs_fp32"] = round(f["cpu_texts_per_s_median"] / base, 3)
        f["vs_dynamic"] = round(f["cpu_texts_per_s_median"] / dynamic, 3)
    return {
        "graphs": figures,
        "noise": {
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "steal_share": round(steal / (seconds * (os.cpu_count() or 1)), 4),
        },
    }


def save(path: Path, doc: dict[str, Any], names: Sequence[str]) -> None:
    """Write ``doc``, keeping what other runs wrote meanwhile for recipes this run did not touch."""
    stored: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    recipes = stored.get("recipes", {}) | {name: doc["recipes"][name] for name in names}
    path.write_text(json.dumps(stored | doc | {"recipes": recipes}, indent=2) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    names = [*RECIPES, *QUANTILE_RECIPES]
    parser.add_argument("--recipes", nargs="+", default=names, choices=names)
    parser.add_argument("--gate", action="store_true", help="run the accuracy gate")
    parser.add_argument("--cells", nargs="+", default=list(CELLS), choices=CELLS, help="gate cells")
    parser.add_argument("--fidelity", type=int, default=0, help="cosine to fp32 on N test texts only")
    parser.add_argument(
        "--noise-control",
        type=float,
        nargs="*",
        default=None,
        help="gate cells of the fp32 vectors plus seeded Gaussian noise of these per-component sigmas",
    )
    parser.add_argument("--speed", action="store_true", help="time fp32, dynamic int8 and the recipes")
    parser.add_argument("--texts", type=int, default=512, help="texts timed per repetition")
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--datasets", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()

    settings = load_settings()
    prepared = prepare(settings.cache_dir)
    fp32_path = prepared.variant_dir("fp32") / MODEL_FILE
    fp32 = onnx.load(str(fp32_path))
    ranges = ChannelRanges.load()
    models = {name: graph_bytes(fp32, ranges, RECIPES[name]) for name in args.recipes if name in RECIPES}
    quantiles: dict[float, ChannelRanges] = {}
    for name in args.recipes:
        if name in QUANTILE_RECIPES:
            recipe, share = QUANTILE_RECIPES[name]
            if share not in quantiles:
                quantiles[share] = quantile_ranges(fp32_path, prepared.variant_dir("fp32"), share)
            models[name] = graph_bytes(fp32, quantiles[share], recipe)
    out_path = args.out / "int8_recipes.json"
    doc: dict[str, Any] = json.loads(out_path.read_text()) if out_path.is_file() else {}
    shipped = next(name for name, recipe in RECIPES.items() if recipe == StaticInt8())
    doc.update(benchmark="int8_recipes", machine=machine_info(), shipped=shipped)
    recipes = doc.setdefault("recipes", {})
    for name in args.recipes:
        recipe, share = QUANTILE_RECIPES.get(name, (RECIPES.get(name, StaticInt8()), 0.0))
        recipes.setdefault(name, {})["config"] = asdict(recipe) | {"range_quantile": share}
        recipes[name]["pair_sums_exact_on_avx2"] = recipe.pair_sums_exact
        graph = hashlib.sha256(models[name]).hexdigest()[:12]
        if recipes[name].get("graph") != graph:  # figures of another graph under this name
            recipes[name] = {k: v for k, v in recipes[name].items() if k not in ("accuracy", "gate", "speed")}
        recipes[name]["graph"] = graph

    if args.fidelity:
        sample = banking77(args.datasets).test.texts + clinc150(args.datasets).test.texts
        random.Random(1).shuffle(sample)
        sample = sorted(set(sample[: args.fidelity]))
        cache = settings.cache_dir / "bench-vectors" / "recipes"
        want = embed_all(fp32_path.read_bytes(), prepared.variant_dir("fp32"), sample, cache)
        reference = dict(zip(sample, want, strict=True))
        for name in args.recipes:
            got = embed_all(models[name], prepared.variant_dir("fp32"), sample, cache)
            cos = cosines(dict(zip(sample, got, strict=True)), reference)
            recipes[name]["fidelity"] = {"texts": len(sample), "cosine_to_fp32": cos}
            console.print(f"{name:50s} cos min {cos['min']:.4f} mean {cos['mean']:.6f}")

    if args.gate:
        loaded = [banking77(args.datasets), clinc150(args.datasets)]
        reference = fp32_vectors(loaded)
        texts = sorted(reference)
        # the fp32 figures cost minutes of self-fit: kept in the JSON, per fp32 graph
        fp32_key = hashlib.sha256(fp32_path.read_bytes()).hexdigest()[:12]
        base = doc.setdefault("fp32", {}).setdefault(fp32_key, {})
        missing = [cell for cell in args.cells if cell not in base]
        base.update(accuracy(reference, loaded, missing) if missing else {})
        cache = settings.cache_dir / "bench-vectors" / "recipes"
        for name in args.recipes:
            console.print(f"[bold]{name}[/]")
            table = embed_all(models[name], prepared.variant_dir("fp32"), texts, cache)
            vectors = dict(zip(texts, table, strict=True))
            figures = recipes[name].setdefault("accuracy", {})
            figures.update(accuracy(vectors, loaded, [c for c in args.cells if c not in figures]))
            result = gate(figures, base) | {"cosine_to_fp32": cosines(vectors, reference)}
            recipes[name]["gate"] = result
            console.print(f"  served Δ {result['served_deltas']} cos {result['cosine_to_fp32']}")
            save(out_path, doc, args.recipes)  # a long run keeps what it measured
        doc["gate_command"] = "python benchmarks/int8_recipes.py --gate " + " ".join(args.recipes)

    if args.noise_control:
        # how far the served router moves for a perturbation as large as int8's, but random
        loaded = [banking77(args.datasets), clinc150(args.datasets)]
        reference = fp32_vectors(loaded)
        fp32_key = hashlib.sha256(fp32_path.read_bytes()).hexdigest()[:12]
        base = doc.setdefault("fp32", {}).setdefault(fp32_key, {})
        missing = [cell for cell in args.cells if cell not in base]
        base.update(accuracy(reference, loaded, missing) if missing else {})
        texts = sorted(reference)
        controls = doc.setdefault("noise_controls", {})
        for sigma in args.noise_control:
            table = np.stack([reference[t] for t in texts])
            noisy = table + np.random.default_rng(0).normal(0.0, sigma, table.shape).astype(np.float32)
            noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
            vectors = dict(zip(texts, noisy, strict=True))
            result = gate(accuracy(vectors, loaded, args.cells), base)
            controls[f"sigma {sigma}"] = result | {"cosine_to_fp32": cosines(vectors, reference)}
            console.print(
                f"noise sigma {sigma}: served Δ {result['served_deltas']} {cosines(vectors, reference)}"
            )

    if args.speed:
        all_texts = shuffled_test_texts(args.datasets)
        tokenizer = load_tokenizer(prepared.variant_dir("fp32"))
        ids = [e.ids[: sum(e.attention_mask)] for e in tokenizer.encode_batch(all_texts[: args.texts])]
        measured = speed(fp32_path, models, sorted_batches(ids), args.repetitions)
        for name in args.recipes:
            recipes[name]["speed"] = measured["graphs"][name] | {"noise": measured["noise"]}
        doc["speed_reference"] = {k: v for k, v in measured["graphs"].items() if k not in models}
        doc["speed_reference"]["noise"] = measured["noise"]
        doc["speed_command"] = (
            f"python benchmarks/int8_recipes.py --speed --texts {args.texts} "
            f"--repetitions {args.repetitions} (recipes timed together)"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    save(out_path, doc, args.recipes)
    console.print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
