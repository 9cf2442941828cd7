"""Accuracy of routeworker's router vs semantic-router on Banking77 and CLINC150, same vectors.

    .venv/bin/python benchmarks/accuracy.py [--datasets ../shared/datasets] [--out benchmarks/results]

Two protocols, every router on the same vectors (all-MiniLM-L6-v2 fp32 by default; semantic-router
1.1.1 runs in its own virtualenv):

- **few-shot**: k = 5, 10, 20 utterances per intent drawn from the route pool (Banking77: train
  without the fit slice; CLINC150: in-scope train), 5 seeds each, mean ± std over the seeds;
- **full**: routes = every train utterance, as before.

Each is run with no labelled data (routeworker's served defaults: the self-fit calibration that
`routeworker routes apply` publishes) and with the fit split (routeworker fitted, semantic-router's
own fit). Test = the full test split (CLINC150: with its 1,000 out-of-scope queries). Nothing is
chosen on test data. Writes ``accuracy.json`` (checksums, model, versions, machine, every figure,
every calibration's choices and cross-validated estimates), ``accuracy.md`` (the tables) and
``accuracy.png`` (accuracy against k, drawn from the JSON by ``plot_accuracy.py``), and replaces
the README's accuracy tables (between ``<!-- accuracy-table:begin -->`` and ``...:end -->``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy_report import render_markdown, summarise
from accuracy_runs import SERVED, SR_DEFAULT, SR_FITTED, evaluate_run, sample_rows
from datasets import Dataset, banking77, clinc150
from envs import run_plot, run_semantic_router
from machine import machine_info
from metrics import report
from readme import regenerate
from rich.console import Console
from vectors import VectorCache

from worker.config import load_settings
from worker.embedding import EncoderPool
from worker.embedding.model import resolve_model

REPO = Path(__file__).resolve().parents[1]
console = Console(width=150)
SHOTS = (5, 10, 20)
SEEDS = (0, 1, 2, 3, 4)


def run_specs(ds: Dataset, shots: tuple[int, ...], seeds: tuple[int, ...]) -> list[dict[str, object]]:
    """Every run of a dataset: few-shot (k, seed) route sets, then the full route set."""
    held = set(ds.held_out_route_rows)
    pool = [i for i in range(len(ds.routes)) if i not in held]
    specs: list[dict[str, object]] = [
        {"name": f"k{k}-seed{seed}", "k": k, "seed": seed,
         "route_rows": sample_rows(ds.routes.labels, pool, k, seed), "fit_excluded_rows": []}
        for k in shots for seed in seeds
    ]  # fmt: skip
    specs.append(
        {"name": "full", "k": None, "seed": None, "route_rows": list(range(len(ds.routes))),
         "fit_excluded_rows": sorted(held)}
    )  # fmt: skip
    return specs


def evaluate(
    ds: Dataset,
    cache: VectorCache,
    fingerprint: str,
    *,
    shots: tuple[int, ...],
    seeds: tuple[int, ...],
    with_sr: bool,
    reused_sr: dict[str, Any] | None = None,
    reused_served: dict[str, Any] | None = None,
) -> dict[str, object]:
    vec = {
        "routes": cache.embed(ds.routes.texts, f"{ds.name}-routes"),
        "fit": cache.embed(ds.fit.texts, f"{ds.name}-fit"),
        "test": cache.embed(ds.test.texts, f"{ds.name}-test"),
    }
    specs = run_specs(ds, shots, seeds)
    runs: dict[str, dict[str, object]] = {}
    for spec in specs:
        started = time.perf_counter()
        served_from = None
        if reused_served is not None and spec["k"] is not None:
            served_from = reused_served["runs"][spec["name"]]
            # the same rows (older results did not record them: sampling is seeded and deterministic)
            assert served_from["route_rows_digest"] in (None, _rows_digest(spec["route_rows"])), spec["name"]  # type: ignore[arg-type]
        body = evaluate_run(ds, spec["route_rows"], vec, fingerprint,  # type: ignore[arg-type]
                            fit_excluded_rows=spec["fit_excluded_rows"],  # type: ignore[arg-type]
                            served_from=served_from)  # fmt: skip
        body.update(k=spec["k"], seed=spec["seed"], seconds=time.perf_counter() - started)
        body["route_rows_digest"] = _rows_digest(spec["route_rows"])  # type: ignore[arg-type]
        runs[str(spec["name"])] = body
        served = body["results"]["routeworker served defaults (self-fit, no labels)"]  # type: ignore[index]
        console.print(f"{ds.name} {spec['name']}: served defaults accuracy {served['accuracy']:.4f} "
                      f"({body['seconds']:.0f}s)")  # fmt: skip
    sr_info: dict[str, object] = {}
    if reused_sr is not None:
        # semantic-router's answers from an earlier run of the same protocol on the same vectors
        for name, body in runs.items():
            previous = reused_sr["runs"][name]
            # the same rows (older results did not record them: sampling is seeded and deterministic)
            assert previous["route_rows_digest"] in (None, body["route_rows_digest"]), name
            body["results"].update(previous["results"])  # type: ignore[union-attr]
            body["semantic_router_fit_report"] = previous["fit_report"]
        sr_info = {**reused_sr["info"], "reused": True}
    elif with_sr:
        wanted = [{k: spec[k] for k in ("name", "route_rows", "fit_excluded_rows")} for spec in specs]
        with tempfile.TemporaryDirectory() as tmp:
            sr = run_semantic_router(ds, vec, wanted, Path(tmp))
        for name, out in sr["runs"].items():
            results = runs[name]["results"]
            results[SR_DEFAULT] = report(out["default"], ds.test.labels)  # type: ignore[index]
            results[SR_FITTED] = report(out["fitted"], ds.test.labels)  # type: ignore[index]
            runs[name]["semantic_router_fit_report"] = out["fit_report"]
        sr_info = {"version": sr["version"], "seconds": sr["seconds"]}
    return {
        "protocol": ds.protocol,
        "few_shot_protocol": f"k in {list(shots)} utterances per intent from the route pool (routes minus "
        f"rows held out for fitting), seeds {list(seeds)}; test = the full test split",
        "checksums": ds.checksums,
        "runs": runs,
        "summary": summarise(runs),
        "semantic_router": sr_info,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--no-semantic-router", action="store_true", help="skip the comparison")
    parser.add_argument("--only", choices=["banking77", "clinc150"], default=None)
    parser.add_argument(
        "--shots", type=int, nargs="*", default=list(SHOTS), help="k values (default 5 10 20)"
    )
    parser.add_argument("--seeds", type=int, default=len(SEEDS), help="seeds per k (default 5)")
    parser.add_argument("--no-readme", action="store_true", help="leave README.md alone")
    parser.add_argument(
        "--from-json",
        action="store_true",
        help="only redraw accuracy.md, accuracy.png and the README from --out",
    )
    parser.add_argument(
        "--reuse-served-few-shot",
        action="store_true",
        help="take the served defaults' few-shot figures from --out/accuracy.json (same runs, same "
        "vectors; only when the self-fit did not change: the full-data runs are self-fitted again)",
    )
    parser.add_argument(
        "--reuse-semantic-router",
        action="store_true",
        help="take semantic-router's answers from --out/accuracy.json (same runs, same vectors)",
    )
    args = parser.parse_args()
    if args.from_json:
        publish(args.out, readme=not args.no_readme)
        return 0

    settings = load_settings()
    spec = resolve_model(settings)
    encoder = EncoderPool(spec, pool_size=1)
    cache = VectorCache(encoder, settings.cache_dir / "bench-vectors")
    loaders = {"banking77": lambda: banking77(args.datasets), "clinc150": lambda: clinc150(args.datasets)}
    shots, seeds = tuple(args.shots), tuple(range(args.seeds))
    reused = _semantic_router_answers(args.out / "accuracy.json") if args.reuse_semantic_router else {}
    served = _served_answers(args.out / "accuracy.json") if args.reuse_served_few_shot else {}
    results = {
        name: evaluate(load(), cache, encoder.fingerprint, shots=shots, seeds=seeds,
                       with_sr=not args.no_semantic_router, reused_sr=reused.get(name),
                       reused_served=served.get(name))
        for name, load in loaders.items()
        if args.only in (None, name)
    }  # fmt: skip
    manifest = {
        "benchmark": "accuracy",
        "command": "python benchmarks/accuracy.py " + " ".join(sys.argv[1:]),
        "model": encoder.fingerprint,
        "machine": machine_info(),
        "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "unset (OpenBLAS default: one per CPU)"),
        "datasets": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "accuracy.json").write_text(json.dumps(manifest, indent=1, default=_plain))
    publish(args.out, readme=not args.no_readme)
    return 0


def publish(out: Path, *, readme: bool) -> None:
    """accuracy.md, accuracy.png and the README's accuracy block, all from accuracy.json."""
    json_path = out / "accuracy.json"
    markdown = render_markdown(json.loads(json_path.read_text()))
    (out / "accuracy.md").write_text(markdown)
    run_plot(json_path, out / "accuracy.png")
    if readme:
        readme_file = REPO / "README.md"
        readme_file.write_text(regenerate(readme_file.read_text()))
    console.print(markdown)
    console.print(f"wrote {out / 'accuracy.md'} and {out / 'accuracy.png'} from {json_path}")


def _rows_digest(rows: list[int]) -> str:
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def _semantic_router_answers(path: Path) -> dict[str, dict[str, Any]]:
    """Per dataset: semantic-router's figures of every run in an earlier accuracy.json."""
    manifest = json.loads(path.read_text())
    out: dict[str, dict[str, Any]] = {}
    for dataset, body in manifest["datasets"].items():
        runs = {
            name: {
                "route_rows_digest": run.get("route_rows_digest"),
                "results": {k: v for k, v in run["results"].items() if k in (SR_DEFAULT, SR_FITTED)},
                "fit_report": run.get("semantic_router_fit_report"),
            }
            for name, run in body["runs"].items()
        }
        out[dataset] = {"runs": runs, "info": body["semantic_router"]}
    return out


def _served_answers(path: Path) -> dict[str, dict[str, Any]]:
    """Per dataset: the served defaults' figures and choices of every run in an earlier accuracy.json."""
    manifest = json.loads(path.read_text())
    return {
        dataset: {
            "runs": {
                name: {
                    "route_rows_digest": run.get("route_rows_digest"),
                    "results": {SERVED: run["results"][SERVED]},
                    "calibrations": {SERVED: run["calibrations"][SERVED]},
                }
                for name, run in body["runs"].items()
            }
        }
        for dataset, body in manifest["datasets"].items()
    }


def _plain(value: object) -> object:
    if isinstance(value, np.floating | np.integer):
        return value.item()
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
