"""semantic-router side of the accuracy benchmark; runs in semantic-router's own environment.

``python sr_runner.py IN.npz OUT.json``: the input holds the route utterances, the fit and test
examples and their vectors, all made by routeworker's encoder, so semantic-router routes with
exactly the same embeddings, and a list of runs: which route rows each run's routes are, and which
of them to leave out while fitting. Its public API only: ``IndexedRouter`` with default settings,
then its own ``fit`` (Platt calibration) on the fit examples and the confidence threshold its
README recommends (0.5). One process serves every run of a dataset (the import is the slow part).
"""

from __future__ import annotations

import asyncio
import json
import sys

import numpy as np
import semantic_router
from semantic_router import IndexedRouter, Route
from semantic_router.encoders import DenseEncoder


class PrecomputedEncoder(DenseEncoder):
    """Looks vectors up by text: every text the benchmark uses was embedded beforehand."""

    name: str = "routeworker-precomputed"
    type: str = "precomputed"
    table: dict[str, list[float]] = {}  # noqa: RUF012 - pydantic copies field defaults

    def __call__(self, docs: list[str]) -> list[list[float]]:
        return [self.table[d] for d in docs]

    async def acall(self, docs: list[str]) -> list[list[float]]:
        return self(docs)


def build(encoder: PrecomputedEncoder, texts: list[str], labels: list[str]) -> IndexedRouter:
    grouped: dict[str, list[str]] = {}
    for text, label in zip(texts, labels, strict=True):
        grouped.setdefault(label, []).append(text)
    return IndexedRouter(encoder=encoder, routes=[Route(name=n, utterances=u) for n, u in grouped.items()])


async def predict(router: IndexedRouter, texts: list[str]) -> list[str | None]:
    out = []
    for text in texts:
        choice = await router.acall(text)
        out.append(choice.name)
    return out


def run(encoder: PrecomputedEncoder, meta: dict, spec: dict) -> dict:
    texts = [meta["routes_texts"][i] for i in spec["route_rows"]]
    labels = [meta["routes_labels"][i] for i in spec["route_rows"]]
    routes = build(encoder, texts, labels)
    result: dict[str, object] = {"default": asyncio.run(predict(routes, meta["test_texts"]))}
    # fit with the rows that are fit examples too left out of the routes (never match themselves)
    held = set(spec["fit_excluded_rows"])
    keep = [i for i in spec["route_rows"] if i not in held]
    fitting = build(
        encoder, [meta["routes_texts"][i] for i in keep], [meta["routes_labels"][i] for i in keep]
    )
    report = fitting.fit(meta["fit_texts"], meta["fit_labels"])
    routes.calibrator = fitting.calibrator
    routes.confidence_threshold = 0.5
    result["fitted"] = asyncio.run(predict(routes, meta["test_texts"]))
    result["fit_report"] = {
        "method": report.method,
        "n": report.n,
        "accuracy": report.accuracy,
        "ece": report.ece,
    }
    return result


def main() -> int:
    data = np.load(sys.argv[1], allow_pickle=False)
    meta = json.loads(str(data["meta"]))
    encoder = PrecomputedEncoder()
    for key in ("routes", "fit", "test"):
        for text, vec in zip(meta[f"{key}_texts"], data[f"{key}_vectors"], strict=True):
            encoder.table[text] = vec.tolist()
    results = {spec["name"]: run(encoder, meta, spec) for spec in meta["runs"]}
    with open(sys.argv[2], "w") as fh:
        json.dump({"version": semantic_router.__version__, "runs": results}, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
