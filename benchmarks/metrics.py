"""Classification figures for routers, where None means "no match" (CLINC150's out-of-scope)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

NO_MATCH = "<no match>"


def macro_f1(predicted: Sequence[str | None], truth: Sequence[str | None]) -> float:
    """Unweighted mean F1 over the true classes; "no match" is a class when the truth has it."""
    pred = np.array([NO_MATCH if p is None else p for p in predicted], dtype=object)
    true = np.array([NO_MATCH if t is None else t for t in truth], dtype=object)
    scores = []
    for label in sorted(set(true.tolist())):
        tp = float(np.sum((pred == label) & (true == label)))
        fp = float(np.sum((pred == label) & (true != label)))
        fn = float(np.sum((pred != label) & (true == label)))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def report(predicted: Sequence[str | None], truth: Sequence[str | None]) -> dict[str, float | int]:
    """Accuracy over all rows (no match is a class), in-scope accuracy, no-match recall/precision, F1."""
    p = list(predicted)
    t = list(truth)
    right = np.array([a == b for a, b in zip(p, t, strict=True)])
    scoped = np.array([b is not None for b in t])
    said_none = np.array([a is None for a in p])
    out: dict[str, float | int] = {
        "rows": len(t),
        "accuracy": float(right.mean()),
        "in_scope_accuracy": float(right[scoped].mean()) if scoped.any() else float("nan"),
        "macro_f1": macro_f1(p, t),
        "no_match_rate": float(said_none.mean()),
    }
    if (~scoped).any():
        out["oos_recall"] = float(said_none[~scoped].mean())
        out["oos_precision"] = float((~scoped)[said_none].mean()) if said_none.any() else 0.0
    return out
