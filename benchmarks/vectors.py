"""Embeds every text of a dataset once per model and caches the vectors on disk.

Both routers in the accuracy benchmark read the SAME vectors from here, so the comparison is
between routing methods, not between embeddings.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rich.progress import Progress

from worker.embedding import EncoderPool


class VectorCache:
    """text -> vector for one model; backed by one .npy + .txt pair per (model, text set)."""

    def __init__(self, encoder: EncoderPool, folder: Path) -> None:
        self.encoder = encoder
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def embed(self, texts: Sequence[str], label: str, chunk: int = 256) -> np.ndarray:
        unique = sorted(set(texts))
        key = hashlib.sha256(("\n".join(unique) + self.encoder.fingerprint).encode()).hexdigest()[:16]
        path = self.folder / f"{label}-{key}.npy"
        if path.is_file():
            table = np.load(path)
        else:
            parts = []
            with Progress() as progress:
                task = progress.add_task(f"embedding {label}", total=len(unique))
                for start in range(0, len(unique), chunk):
                    parts.append(self.encoder.embed_sync(unique[start : start + chunk]))
                    progress.advance(task, len(parts[-1]))
            table = np.concatenate(parts).astype(np.float32)
            np.save(path.with_suffix(".tmp.npy"), table)
            path.with_suffix(".tmp.npy").rename(path)
        row = {text: i for i, text in enumerate(unique)}
        return table[[row[t] for t in texts]]
