"""Static int8: a graph whose every vector is independent of the other texts in its batch.

Each matmul by a weight becomes ``MatMulIntegerToFloat`` (ONNX Runtime's integer GEMM with a float
output) on an activation quantised with a scale and zero point fixed at export time, so a token's
integers, and hence its vector, depend on that token's own values only. Dynamic quantisation picks
the activation scale per batch instead, which is why its vectors move with the company they keep.

What the default does (every choice measured side by side in benchmarks/int8_recipes.py, figures
in benchmarks/results/int8_recipes.json and the README):

- SmoothQuant-style smoothing: BERT's LayerNorm and GELU outputs carry a few channels about 15x
  larger than the rest, which a per-tensor scale cannot resolve. Each input channel ``j`` is
  divided by ``s_j = max|x_j|^alpha / max|W_j|^(1-alpha)`` (one ``Mul`` before the quantiser) and
  the weight's row ``j`` multiplied by it: the product is unchanged, the outliers move into the
  per-channel weight scales. alpha 0.8; 0.5 and 0.65 were far worse.
- The activations of 30 of the 36 weight matmuls are quantised. Each layer's FFN output (the
  GELU activation's matmul) stays fp32: it is the most sensitive (layers 0 and 1 most of all), and
  keeping it fp32 halves the distance to fp32 vectors (mean cosine 0.9987 against 0.9969 with it
  quantised). The attention products (activation by activation), softmax, GELU and LayerNorm run
  in fp32; outputs stay float.
- Weights are per output channel, int8 within +-64, on ONNX Runtime's uint8 x int8 kernel. On x86
  without VNNI that kernel adds pairs of products in int16 with saturation: 2 * 255 * 64 = 32,640
  cannot saturate, so the integer sums are exact on AVX2, AVX-512 VNNI and ARM alike, and an int8
  vector is the same on each up to the fp32 parts of the graph. Full 8-bit weights saturate it
  (measurably less accurate); 8-bit weights stored as uint8 around 128 run the exact but slower
  uint8 x uint8 kernel (main's recipe before: 312 against 392 texts/s, every FFN output quantised in both).
- Activations are asymmetric uint8 from the shipped min/max ranges of the calibration corpus
  (per-channel quantile ranges and 7-bit activations with wider weights measured no better).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from worker.embedding.calibration import ChannelRanges, WeightInput, weight_inputs

MS_DOMAIN = "com.microsoft"
#: the FFN output projection of every layer (not ``attention.output.dense``)
FFN_OUTPUT = r"encoder\.layer\.\d+\.output\.dense\."


@dataclass(frozen=True, slots=True)
class StaticInt8:
    """How the static int8 graph is made (the defaults are the measured choice)."""

    #: SmoothQuant migration strength: 0 quantises activations as they are, 1 moves every
    #: channel's range into the weights
    alpha: float = 0.8
    #: weights are symmetric within +-(2^(bits-1) - 1). 8: stored as uint8 around 128, which runs
    #: the u8u8 kernel (exact); 7: int8, which keeps the faster u8s8 kernel's int16 pair sums exact
    weight_bits: int = 8
    #: activations are uint8 within [0, activation_max]; below 255 they leave room in the u8s8
    #: kernel's int16 pair sums for wider weights (2 * activation_max * weight limit <= 32767)
    activation_max: int = 255
    #: int8 weights within +-weight_limit on the u8s8 kernel (overrides ``weight_bits``; None: off).
    #: 64 keeps the pair sums exact on AVX2 (2 * 255 * 64 = 32,640) with 8-bit activations
    weight_limit: int | None = 64
    #: weight matmuls left in fp32: regular expressions matched at the start of the weight's name.
    #: The default keeps every layer's FFN output (the GELU activation's matmul, the most sensitive
    #: to quantisation: benchmarks/int8_recipes.py) in fp32
    fp32: tuple[str, ...] = (FFN_OUTPUT,)
    #: weight matmuls (regular expressions, as ``fp32``) whose input is quantised per token: each
    #: token's own scale, symmetric around 128, so still independent of the batch (measured: less
    #: accurate than fp32 FFN outputs and slower than calibrated scales, so not used by default)
    per_token: tuple[str, ...] = ()
    #: their weights: int8 within +-this on u8s8, or None for uint8 within 128 +-127 on u8u8
    per_token_weight_limit: int | None = 64

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError("alpha must be within [0, 1]")
        if self.weight_bits not in (7, 8):
            raise ValueError("weight_bits must be 7 or 8")
        if not 1 <= self.activation_max <= 255:
            raise ValueError("activation_max must be within [1, 255]")
        if self.weight_limit is not None and not 1 <= self.weight_limit <= 127:
            raise ValueError("weight_limit must be within [1, 127]")

    @property
    def signed_limit(self) -> int | None:
        """The int8 weights' limit on the u8s8 kernel, or None for uint8 weights (u8u8 kernel)."""
        if self.weight_limit is not None:
            return self.weight_limit
        return 63 if self.weight_bits == 7 else None

    @property
    def pair_sums_exact(self) -> bool:
        """Whether x86's u8s8 kernel without VNNI (int16 sums of product pairs) never saturates."""
        limit = self.signed_limit
        return limit is None or 2 * self.activation_max * limit <= 32767


@dataclass(frozen=True, slots=True)
class _Quantised:
    """One activation's quantiser: smoothing factors, scale and zero point of the smoothed values."""

    smoothing: np.ndarray  # float64, one per channel
    scale: float
    zero_point: int
    levels: int = 255  # the largest integer; below 255 a Clip keeps out-of-range values there


def quantise_static(
    model: onnx.ModelProto, ranges: ChannelRanges, config: StaticInt8 | None = None
) -> onnx.ModelProto:
    """The static int8 version of the fp32 ``model``, calibrated by ``ranges`` (a new model)."""
    config = config or StaticInt8()
    model = _copy(model)
    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    replaced: dict[str, list[onnx.NodeProto]] = {}  # node name -> nodes in its place
    dropped: set[str] = set()  # bias Adds folded into the integer matmul, float weights
    added: list[onnx.TensorProto] = []
    for item in weight_inputs(model):
        item = _without_fp32(item, config.fp32)
        if not item.matmuls:
            continue
        if item.name not in ranges.low:
            raise ValueError(f"the calibration ranges lack {item.name!r}: measure them again")
        floats = [numpy_helper.to_array(weights[m.input[1]]).astype(np.float64) for m in item.matmuls]
        quantiser = _quantiser(
            ranges.low[item.name], ranges.high[item.name], floats, config.alpha, config.activation_max
        )
        per_token = _named(item.matmuls[0].input[1], config.per_token)
        if per_token:
            source, front, tensors = _quantise_per_token(item, quantiser)
        else:
            source, front, tensors = _quantise_input(item, quantiser)
        added += tensors
        for i, (matmul, weight) in enumerate(zip(item.matmuls, floats, strict=True)):
            if per_token:
                matmul_nodes, tensors = _per_token_matmul(
                    matmul, weight, quantiser, source, config.per_token_weight_limit
                )
                added += tensors
                dropped.add(matmul.input[1])
                replaced[matmul.name] = (front if i == 0 else []) + matmul_nodes
                continue
            bias_add = _bias_add(matmul, readers, weights)
            node, tensors = _integer_matmul(matmul, weight, quantiser, source, config.signed_limit, bias_add)
            added += tensors
            dropped.add(matmul.input[1])
            if bias_add is not None:
                dropped.add(bias_add.name)
            replaced[matmul.name] = (front if i == 0 else []) + [node]
    nodes = []
    for node in graph.node:
        if node.name in dropped:
            continue
        nodes.extend(replaced.get(node.name, [node]))
    kept = [init for init in graph.initializer if init.name not in dropped]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept + added)
    model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    onnx.checker.check_model(model, full_check=True)
    return model


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def _named(weight: str, patterns: tuple[str, ...]) -> bool:
    return any(re.match(pattern, weight) for pattern in patterns)


def _without_fp32(item: WeightInput, fp32: tuple[str, ...]) -> WeightInput:
    """``item`` without the matmuls whose weights ``fp32`` names (their first reader names it)."""
    kept = tuple(m for m in item.matmuls if not _named(m.input[1], fp32))
    if kept == item.matmuls:
        return item
    # a shared input keeps the name of its first weight, so the shipped ranges still apply
    return WeightInput(item.tensor, item.name, kept)


def _quantiser(
    low: np.ndarray, high: np.ndarray, weights: list[np.ndarray], alpha: float, levels: int = 255
) -> _Quantised:
    low64, high64 = low.astype(np.float64), high.astype(np.float64)
    activation_max = np.maximum(np.maximum(-low64, high64), 1e-5)
    weight_max = np.maximum(np.max([np.abs(w).max(axis=1) for w in weights], axis=0), 1e-5)
    smoothing = activation_max**alpha / weight_max ** (1.0 - alpha)
    # dividing by a positive factor keeps each channel's extremes its extremes
    lowest = min(float((low64 / smoothing).min()), 0.0)
    highest = max(float((high64 / smoothing).max()), 0.0)
    scale = (highest - lowest) / levels
    if scale <= 0.0:
        raise ValueError("an activation that is always zero cannot be quantised")
    zero_point = int(np.clip(np.round(-lowest / scale), 0, levels))
    return _Quantised(smoothing, float(np.float32(scale)), zero_point, levels)


def _quantise_input(
    item: WeightInput, q: _Quantised
) -> tuple[str, list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Smoothing ``Mul`` and ``QuantizeLinear`` of one activation, named after its first reader."""
    base = item.name.removesuffix(".weight.T") + ".input"  # shared by the query, key and value
    tensors = [
        numpy_helper.from_array((1.0 / q.smoothing).astype(np.float32), f"{base}.smoothing"),
        numpy_helper.from_array(np.array(q.scale, np.float32), f"{base}.scale"),
        numpy_helper.from_array(np.array(q.zero_point, np.uint8), f"{base}.zero_point"),
    ]
    smoothed = f"{base}.smoothed"
    quantised = f"{base}.q" if q.levels == 255 else f"{base}.q.unclipped"
    nodes = [
        helper.make_node("Mul", [item.tensor, f"{base}.smoothing"], [smoothed], name=smoothed),
        helper.make_node(
            "QuantizeLinear",
            [smoothed, f"{base}.scale", f"{base}.zero_point"],
            [quantised],
            name=quantised,
        ),
    ]
    if q.levels < 255:  # a value past the calibrated range must not exceed the kernel's bound
        tensors += [
            numpy_helper.from_array(np.array(0, np.uint8), f"{base}.q.low"),
            numpy_helper.from_array(np.array(q.levels, np.uint8), f"{base}.q.high"),
        ]
        nodes.append(
            helper.make_node(
                "Clip", [quantised, f"{base}.q.low", f"{base}.q.high"], [f"{base}.q"], name=f"{base}.q"
            )
        )
    return base, nodes, tensors


PER_TOKEN_WEIGHT_LIMIT = 64  # 2 * 255 * 64 = 32,640: u8s8 pair sums stay within int16


def _quantise_per_token(
    item: WeightInput, q: _Quantised
) -> tuple[str, list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Smoothing, then each token's own symmetric scale: ``round(x / (max|x| / 127)) + 128``."""
    base = item.name.removesuffix(".weight.T") + ".input"
    tensors = [
        numpy_helper.from_array((1.0 / q.smoothing).astype(np.float32), f"{base}.smoothing"),
        numpy_helper.from_array(np.array(1e-8, np.float32), f"{base}.tiny"),
        numpy_helper.from_array(np.array(1.0 / 127.0, np.float32), f"{base}.per_level"),
        numpy_helper.from_array(np.array(1.0, np.float32), f"{base}.unit"),
        numpy_helper.from_array(np.array(128, np.uint8), f"{base}.zero_point"),
    ]
    b = base
    nodes = [
        helper.make_node("Mul", [item.tensor, f"{b}.smoothing"], [f"{b}.smoothed"], name=f"{b}.smoothed"),
        helper.make_node("Abs", [f"{b}.smoothed"], [f"{b}.abs"], name=f"{b}.abs"),
        helper.make_node("ReduceMax", [f"{b}.abs"], [f"{b}.max"], name=f"{b}.max", axes=[-1], keepdims=1),
        helper.make_node("Max", [f"{b}.max", f"{b}.tiny"], [f"{b}.max.nonzero"], name=f"{b}.max.nonzero"),
        helper.make_node(
            "Mul", [f"{b}.max.nonzero", f"{b}.per_level"], [f"{b}.row_scale"], name=f"{b}.row_scale"
        ),
        helper.make_node("Div", [f"{b}.smoothed", f"{b}.row_scale"], [f"{b}.levels"], name=f"{b}.levels"),
        helper.make_node(
            "QuantizeLinear", [f"{b}.levels", f"{b}.unit", f"{b}.zero_point"], [f"{b}.q"], name=f"{b}.q"
        ),
    ]
    return base, nodes, tensors


def _weight_tensors(
    matmul: onnx.NodeProto, weight: np.ndarray, q: _Quantised, signed_limit: int | None
) -> tuple[str, list[onnx.TensorProto]]:
    """The smoothed weight of ``matmul`` as per-column int8 (or uint8 around 128), scales, zero points."""
    name = matmul.input[1].removesuffix(".T")  # encoder.layer.0.attention.self.query.weight
    limit = 127 if signed_limit is None else signed_limit
    smoothed = weight * q.smoothing[:, None]
    scales = np.maximum(np.abs(smoothed).max(axis=0), 1e-12) / limit
    integers = np.clip(np.round(smoothed / scales), -limit, limit).astype(np.int8)
    zero_points = np.zeros(scales.shape, np.int8)
    if signed_limit is None:  # full-range int8 would saturate the u8s8 kernel on AVX2: shift into uint8
        integers = (integers.astype(np.int16) + 128).astype(np.uint8)
        zero_points = np.full(scales.shape, 128, np.uint8)
    return name, [
        numpy_helper.from_array(integers, f"{name}.int8"),
        numpy_helper.from_array(scales.astype(np.float32), f"{name}.scale"),
        numpy_helper.from_array(zero_points, f"{name}.zero_point"),
    ]


def _per_token_matmul(
    matmul: onnx.NodeProto, weight: np.ndarray, q: _Quantised, source: str, signed_limit: int | None
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """``matmul`` on a per-token quantised input: integer product, then times the token's scale."""
    name, tensors = _weight_tensors(matmul, weight, q, signed_limit)
    unscaled = f"{name}.unscaled"
    inputs = [f"{source}.q", f"{name}.int8", f"{source}.unit", f"{name}.scale", f"{source}.zero_point",
              f"{name}.zero_point"]  # fmt: skip
    nodes = [
        helper.make_node("MatMulIntegerToFloat", inputs, [unscaled], name=matmul.name, domain=MS_DOMAIN),
        helper.make_node(
            "Mul", [unscaled, f"{source}.row_scale"], [matmul.output[0]], name=f"{name}.rescaled"
        ),
    ]
    return nodes, tensors


def _bias_add(
    matmul: onnx.NodeProto, readers: dict[str, list[onnx.NodeProto]], weights: dict[str, onnx.TensorProto]
) -> onnx.NodeProto | None:
    """The ``Add`` of a constant bias that is the matmul's only reader, if there is one."""
    after = readers.get(matmul.output[0], [])
    if len(after) == 1 and after[0].op_type == "Add":
        other = [name for name in after[0].input if name != matmul.output[0]]
        if len(other) == 1 and other[0] in weights and len(weights[other[0]].dims) == 1:
            return after[0]
    return None


def _integer_matmul(
    matmul: onnx.NodeProto,
    weight: np.ndarray,
    q: _Quantised,
    source: str,
    signed_limit: int | None,
    bias_add: onnx.NodeProto | None,
) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    """``matmul`` (+ its bias) as an integer matmul reading the quantised input named ``source``."""
    name, tensors = _weight_tensors(matmul, weight, q, signed_limit)
    inputs = [
        f"{source}.q",
        f"{name}.int8",
        f"{source}.scale",
        f"{name}.scale",
        f"{source}.zero_point",
        f"{name}.zero_point",
    ]
    output = matmul.output[0]
    if bias_add is not None:
        inputs.append(next(n for n in bias_add.input if n != matmul.output[0]))
        output = bias_add.output[0]
    node = helper.make_node("MatMulIntegerToFloat", inputs, [output], name=matmul.name, domain=MS_DOMAIN)
    return node, tensors
