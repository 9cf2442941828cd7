"""The offline model: loads with no hub and no network, embeds, and is deterministic across processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from worker.embedding.model import ModelSpec

pytestmark = pytest.mark.integration

TEXTS = [
    "I lost my card, can you block it?",
    "what is the exchange rate for euros",
    "a",
    "Why was I charged twice for the same coffee this morning at the airport? " * 20,  # > 256 tokens
]

# Runs in a fresh interpreter: sockets cannot connect, and the hub is told to stay offline.
CHILD = """
import socket, sys
def _no_network(*args, **kwargs):
    raise OSError("network is disabled in this test")
socket.socket.connect = _no_network
socket.create_connection = _no_network
import numpy as np
from fastembed import TextEmbedding
texts = {texts!r}
model = TextEmbedding(model_name=sys.argv[1], specific_model_path=sys.argv[2], threads=1)
batched = np.stack(list(model.embed(texts, batch_size=4)))
alone = np.stack([next(iter(model.embed([t]))) for t in texts])
assert np.array_equal(batched, alone), "fp32 vectors depend on batch composition"
sys.stdout.buffer.write(batched.astype("<f4").tobytes())
"""


def _embed_in_child(spec: ModelSpec) -> np.ndarray:
    assert spec.path is not None
    argv = [sys.executable, "-c", CHILD.format(texts=TEXTS), spec.name, str(spec.path)]
    # Where the kernel allows it, also take the network away for real.
    if shutil.which("unshare") and subprocess.run(["unshare", "-n", "true"], check=False).returncode == 0:
        argv = ["unshare", "-n", *argv]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": "/nonexistent-hf-home"}
    out = subprocess.run(argv, env=env, capture_output=True, check=False, timeout=300)
    assert out.returncode == 0, out.stderr.decode(errors="replace")[-2000:]
    return np.frombuffer(out.stdout, dtype="<f4").reshape(len(TEXTS), -1)


def test_offline_model_embeds_bit_identically_in_two_processes(model_spec: ModelSpec) -> None:
    first = _embed_in_child(model_spec)
    second = _embed_in_child(model_spec)
    assert first.shape == (len(TEXTS), 384)
    assert first.tobytes() == second.tobytes()
    norms = np.linalg.norm(first, axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    # semantically close texts are closer than unrelated ones
    assert float(first[0] @ first[3]) < 0.9
    assert model_spec.fingerprint.startswith("sentence-transformers/all-MiniLM-L6-v2@fp32:")
