"""Cache keys: the model fingerprint plus a hash of the normalised text."""

from __future__ import annotations

import hashlib
import unicodedata

KEY_PREFIX = "rw:emb:"


def normalise_text(text: str) -> str:
    """NFC, surrounding white space stripped, inner runs of white space collapsed to one space.

    The pipeline embeds the normalised text itself, so a cached vector is exactly what embedding
    that key's text gives: texts that differ only in white space share one entry.
    """
    return " ".join(unicodedata.normalize("NFC", text).split())


def model_namespace(fingerprint: str) -> str:
    """A short, key-safe id of the model: vectors of different models never share a key."""
    return hashlib.sha256(fingerprint.encode("utf-8")).hexdigest()[:16]


def cache_key(namespace: str, normalised: str) -> str:
    """``rw:emb:<model>:<sha256 of the text>``."""
    digest = hashlib.sha256(normalised.encode("utf-8")).hexdigest()
    return f"{KEY_PREFIX}{namespace}:{digest}"
