"""Banking77 and CLINC150 as (texts, labels) splits, read from a configurable folder.

Banking77: Casanueva et al. 2020, CC BY 4.0. CLINC150: Larson et al. 2019, CC BY 3.0. The files
are read unchanged from ``--datasets`` (default ``../shared/datasets``); checksums go into every
result manifest so a figure names the exact data behind it.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

OOS = "oos"  # CLINC150's out-of-scope label; routed as "no match"


@dataclass(frozen=True)
class Split:
    """Texts with their labels; a label of None means "no route should match"."""

    texts: list[str]
    labels: list[str | None]

    def __len__(self) -> int:
        return len(self.texts)

    def take(self, rows: list[int]) -> Split:
        return Split([self.texts[i] for i in rows], [self.labels[i] for i in rows])

    def __add__(self, other: Split) -> Split:
        return Split(self.texts + other.texts, self.labels + other.labels)


@dataclass(frozen=True)
class Dataset:
    """Route utterances (``routes``), examples to fit on, and the test set."""

    name: str
    routes: Split
    fit: Split
    test: Split
    checksums: dict[str, str]
    protocol: str
    #: route rows that are fit examples too: left out of the routes while fitting, so a fit
    #: example never matches itself at similarity 1.0
    held_out_route_rows: tuple[int, ...] = ()

    def fitting_routes(self) -> Split:
        """The routes to fit against: all of them minus the held-out rows."""
        held = set(self.held_out_route_rows)
        return self.routes.take([i for i in range(len(self.routes)) if i not in held])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stratified_slice(labels: list[str | None], share: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (taken, rest): ``share`` of every label's rows, at least one, chosen reproducibly."""
    by_label: dict[str | None, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        by_label[label].append(i)
    rng = np.random.default_rng(seed)
    taken: list[int] = []
    for label in sorted(by_label, key=str):
        rows = by_label[label]
        count = max(1, round(len(rows) * share))
        taken += [rows[i] for i in rng.permutation(len(rows))[:count]]
    chosen = set(taken)
    return sorted(taken), [i for i in range(len(labels)) if i not in chosen]


def _read_csv(path: Path) -> Split:
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return Split([r["text"] for r in rows], [r["category"] for r in rows])


def banking77(root: Path, fit_share: float = 0.1, seed: int = 0) -> Dataset:
    """Routes = the train split; fit on a stratified slice of train (held out of the routes while
    fitting, see accuracy.py); report on the 3,080 test rows."""
    folder = root / "banking77"
    train, test = _read_csv(folder / "train.csv"), _read_csv(folder / "test.csv")
    fit_rows, _ = stratified_slice(train.labels, fit_share, seed)
    return Dataset(
        name="banking77",
        routes=train,
        fit=train.take(fit_rows),
        test=test,
        checksums={f"banking77/{p.name}": sha256(p) for p in (folder / "train.csv", folder / "test.csv")},
        protocol=f"routes=train (10,003); fit=stratified {fit_share:.0%} of train, seed {seed}, "
        "held out of the routes while fitting; test=test (3,080)",
        held_out_route_rows=tuple(fit_rows),
    )


def clinc150(root: Path) -> Dataset:
    """Routes = in-scope train; fit on val + oos_val; report on test + oos_test (oos = no match)."""
    path = root / "clinc150" / "data_full.json"
    data = json.loads(path.read_text(encoding="utf-8"))

    def split(*names: str) -> Split:
        rows = [row for name in names for row in data[name]]
        return Split([t for t, _ in rows], [None if label == OOS else label for _, label in rows])

    return Dataset(
        name="clinc150",
        routes=split("train"),
        fit=split("val", "oos_val"),
        test=split("test", "oos_test"),
        checksums={"clinc150/data_full.json": sha256(path)},
        protocol="routes=in-scope train (15,000); fit=val+oos_val (3,100); test=test+oos_test (5,500)",
    )


def shuffled_test_texts(root: Path) -> list[str]:
    """Every Banking77 and CLINC150 test text (8,580), shuffled with seed 0: the encoder benchmarks'
    workload of real texts."""
    texts = banking77(root).test.texts + clinc150(root).test.texts
    random.Random(0).shuffle(texts)
    return texts
