"""What static int8 is calibrated on: per-channel activation ranges of the fp32 export on a fixed corpus.

The corpus (``calibration/texts.json``: Banking77 and CLINC150 train rows, edge cases, long texts;
see its ``about``) and the ranges measured on it (``calibration/ranges.npz``) are both shipped. The
export reads the shipped ranges, never measures them: fp32 activations differ in their last bits
between CPUs (AVX2, AVX-512, ARM kernels), and scales measured on each machine would give each a
different int8 graph, so a different fingerprint. ``benchmarks/calibrate.py --ranges`` measures them
again after a change to the model or the corpus; a test checks the shipped file against a fresh
measurement.

A quantised activation is named by the first weight that reads it (``encoder.layer.0.attention.
self.query.weight.T`` names the input of the query, key and value projections), so the names stay
the same whatever the graph's node names are.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent / "calibration"
CORPUS = HERE / "texts.json"
RANGES = HERE / "ranges.npz"


def corpus_texts(path: Path = CORPUS) -> list[str]:
    """The shipped calibration texts."""
    texts = json.loads(path.read_text(encoding="utf-8"))["texts"]
    if not isinstance(texts, list) or not all(isinstance(t, str) and t for t in texts):
        raise ValueError(f"{path}: 'texts' must be a list of non-empty strings")
    return texts


@dataclass(frozen=True)
class WeightInput:
    """An activation read by matmuls with constant weights: the tensor, its name, its readers."""

    tensor: str
    name: str
    matmuls: tuple[onnx.NodeProto, ...]


def weight_inputs(model: onnx.ModelProto) -> list[WeightInput]:
    """Every activation that is the left operand of a MatMul by an initializer, in graph order."""
    initializers = {init.name for init in model.graph.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1] in initializers:
            readers.setdefault(node.input[0], []).append(node)
    return [WeightInput(tensor, nodes[0].input[1], tuple(nodes)) for tensor, nodes in readers.items()]


@dataclass(frozen=True)
class ChannelRanges:
    """Per quantised activation (by :attr:`WeightInput.name`): the lowest and highest value of
    each channel (last axis) over every token of the corpus."""

    low: Mapping[str, np.ndarray]
    high: Mapping[str, np.ndarray]

    def save(self, path: Path) -> None:
        arrays = {f"{name}|low": self.low[name] for name in self.low}
        arrays |= {f"{name}|high": self.high[name] for name in self.high}
        np.savez_compressed(path, **arrays)  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: Path = RANGES) -> ChannelRanges:
        low: dict[str, np.ndarray] = {}
        high: dict[str, np.ndarray] = {}
        with np.load(path) as stored:
            for key in stored.files:
                name, _, side = key.rpartition("|")
                (low if side == "low" else high)[name] = stored[key].astype(np.float32)
        if low.keys() != high.keys():
            raise ValueError(f"{path}: every activation needs both a low and a high row")
        return cls(low, high)


class TokenIds(Protocol):
    """One text's encoding (``tokenizers.Encoding``)."""

    @property
    def ids(self) -> list[int]: ...


class Tokenizer(Protocol):
    """What the measurement needs of a tokenizer (``tokenizers.Tokenizer`` has it)."""

    def encode(self, sequence: str) -> TokenIds: ...


def weight_input_activations(
    model_path: Path, tokenizer: Tokenizer, texts: Iterable[str]
) -> tuple[onnx.ModelProto, list[WeightInput], Iterator[list[npt.NDArray[np.float32]]]]:
    """The fp32 graph's weight inputs and, lazily, their activations (tokens x channels) per text.

    Each text runs alone (no padding rows) on one thread.
    """
    import onnxruntime as ort

    model = onnx.load(str(model_path))
    inputs = weight_inputs(model)
    instrumented = onnx.ModelProto()
    instrumented.CopyFrom(model)
    for item in inputs:
        instrumented.graph.output.append(helper.make_tensor_value_info(item.tensor, TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        instrumented.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
    )
    names = [item.tensor for item in inputs]

    def activations() -> Iterator[list[npt.NDArray[np.float32]]]:
        for text in texts:
            ids = np.array([tokenizer.encode(text).ids], dtype=np.int64)
            feed = {
                "input_ids": ids,
                "attention_mask": np.ones_like(ids),
                "token_type_ids": np.zeros_like(ids),
            }
            yield [
                np.asarray(value, np.float32).reshape(-1, value.shape[-1])
                for value in session.run(names, feed)
            ]

    return model, inputs, activations()


def measure_ranges(model_path: Path, tokenizer: Tokenizer, texts: Iterable[str]) -> ChannelRanges:
    """Run the fp32 graph on each text alone (no padding rows) and keep each channel's extremes."""
    model, inputs, activations = weight_input_activations(model_path, tokenizer, texts)
    low = {item.name: np.full(_width(model, item), np.inf, np.float32) for item in inputs}
    high = {item.name: np.full(_width(model, item), -np.inf, np.float32) for item in inputs}
    count = 0
    for values in activations:
        for item, rows in zip(inputs, values, strict=True):
            np.minimum(low[item.name], rows.min(axis=0), out=low[item.name])
            np.maximum(high[item.name], rows.max(axis=0), out=high[item.name])
        count += 1
    logger.info("measured %d activation ranges on %d texts", len(inputs), count)
    return ChannelRanges(low, high)


def _width(model: onnx.ModelProto, item: WeightInput) -> int:
    weight = next(init for init in model.graph.initializer if init.name == item.matmuls[0].input[1])
    return int(weight.dims[0])
