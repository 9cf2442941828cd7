"""The model's tokenizer, configured exactly as fastembed configures it (truncation, padding)."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer


def load_tokenizer(model_dir: Path) -> Tokenizer:
    """``tokenizer.json`` of ``model_dir`` with fastembed's truncation and padding settings.

    fastembed's own loader is used, so a text gives the same ids here as inside
    ``TextEmbedding.embed``.
    """
    from fastembed.common.preprocessor_utils import load_tokenizer as fastembed_tokenizer

    tokenizer, _ = fastembed_tokenizer(model_dir)
    return tokenizer
