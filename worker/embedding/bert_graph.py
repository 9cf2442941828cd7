"""A BERT encoder written as an ONNX graph from its numpy weights (no torch, no transformers).

The graph is the one a PyTorch (TorchScript) export of ``transformers.BertModel`` gives: word,
token-type and absolute position embeddings, then per layer ``MatMul + Add`` projections, scaled
dot-product attention with an additive mask, erf GELU and post-LayerNorm residuals, in plain ONNX
ops. ONNX Runtime fuses the bias + GELU and the scaled Q·K product itself when it loads the model;
the offline BERT optimizer of ``onnxruntime.transformers`` recognises the whole pattern (fused
Attention, SkipLayerNorm, EmbedLayerNorm), which measured no faster here on one intra-op thread,
so the plain graph is what ships. Inputs ``input_ids``, ``attention_mask`` and ``token_type_ids``
(int64, [batch, sequence]); output ``last_hidden_state`` (float32, [batch, sequence, hidden]).
Pooling and normalisation are left to the loader (fastembed).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17  # LayerNormalization is an ONNX op from 17 on; nothing here needs a newer one
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT = "last_hidden_state"


@dataclass(frozen=True, slots=True)
class BertConfig:
    """The shape of a BERT encoder, as its ``config.json`` gives it."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    layer_norm_eps: float
    max_position_embeddings: int
    vocab_size: int
    type_vocab_size: int

    @classmethod
    def from_json(cls, config: Mapping[str, Any]) -> BertConfig:
        """Read a Hugging Face BERT ``config.json``; refuse anything this graph does not model."""
        if config.get("model_type") != "bert":
            raise ValueError(f"not a BERT config: model_type={config.get('model_type')!r}")
        if config.get("hidden_act") != "gelu":
            raise ValueError(f"only exact (erf) GELU is modelled, not {config.get('hidden_act')!r}")
        if config.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("only absolute position embeddings are modelled")
        built = cls(
            hidden_size=int(config["hidden_size"]),
            num_hidden_layers=int(config["num_hidden_layers"]),
            num_attention_heads=int(config["num_attention_heads"]),
            intermediate_size=int(config["intermediate_size"]),
            layer_norm_eps=float(config["layer_norm_eps"]),
            max_position_embeddings=int(config["max_position_embeddings"]),
            vocab_size=int(config["vocab_size"]),
            type_vocab_size=int(config["type_vocab_size"]),
        )
        if built.hidden_size % built.num_attention_heads:
            raise ValueError("hidden_size is not a multiple of num_attention_heads")
        return built

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads


class _GraphBuilder:
    """Collects nodes and initializers; every name it hands out is unique."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def weight(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.array(array, order="C"), name))
        return name

    def ints(self, *values: int, scalar: bool = False) -> str:
        """An int64 constant: a 1-D tensor, or a 0-D one when ``scalar``."""
        array = np.array(values[0] if scalar else values, dtype=np.int64)
        return self.weight(self._name("ints"), array)

    def float_(self, value: float) -> str:
        """A float32 constant of shape [1] (broadcasts like a torch Python scalar)."""
        return self.weight(self._name("float"), np.array([value], dtype=np.float32))

    def op(self, op_type: str, *inputs: str, **attrs: Any) -> str:
        out = self._name(op_type)
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"


class _Bert:
    """Writes one BERT encoder into a ``_GraphBuilder``."""

    def __init__(self, weights: Mapping[str, np.ndarray], config: BertConfig) -> None:
        self.w = weights
        self.c = config
        self.g = _GraphBuilder()

    def param(self, name: str) -> str:
        return self.g.weight(name, np.asarray(self.w[name], dtype=np.float32))

    def linear(self, x: str, prefix: str) -> str:
        # torch's Linear exports as MatMul by the transposed weight, then Add of the bias
        kernel = self.g.weight(f"{prefix}.weight.T", np.asarray(self.w[f"{prefix}.weight"], np.float32).T)
        return self.g.op("Add", self.g.op("MatMul", x, kernel), self.param(f"{prefix}.bias"))

    def layer_norm(self, x: str, prefix: str) -> str:
        scale, bias = self.param(f"{prefix}.weight"), self.param(f"{prefix}.bias")
        return self.g.op("LayerNormalization", x, scale, bias, axis=-1, epsilon=self.c.layer_norm_eps)

    def embeddings(self) -> str:
        g = self.g
        words = g.op("Gather", self.param("embeddings.word_embeddings.weight"), "input_ids")
        types = g.op("Gather", self.param("embeddings.token_type_embeddings.weight"), "token_type_ids")
        # position ids 0..seq-1 sliced from a constant row, as BertEmbeddings' position_ids buffer
        table = g.weight(
            "embeddings.position_ids", np.arange(self.c.max_position_embeddings, dtype=np.int64)[None, :]
        )
        seq_len = g.op("Gather", g.op("Shape", "input_ids"), g.ints(1, scalar=True))
        positions = g.op("Slice", table, g.ints(0), g.op("Unsqueeze", seq_len, g.ints(0)), g.ints(1))
        position_rows = g.op("Gather", self.param("embeddings.position_embeddings.weight"), positions)
        summed = g.op("Add", g.op("Add", words, types), position_rows)
        return self.layer_norm(summed, "embeddings.LayerNorm")

    def extended_mask(self) -> str:
        # (1 - mask) * float32 min, broadcast over heads and query positions: padded keys get no weight
        g = self.g
        # two Unsqueeze nodes, as torch writes mask[:, None, None, :]: the mask pattern ORT's BERT
        # optimizer knows, should a later export want its fused Attention
        mask = g.op("Unsqueeze", g.op("Unsqueeze", "attention_mask", g.ints(1)), g.ints(2))
        inverted = g.op("Sub", g.float_(1.0), g.op("Cast", mask, to=TensorProto.FLOAT))
        return g.op("Mul", inverted, g.float_(float(np.finfo(np.float32).min)))

    def heads(self, x: str, perm: list[int]) -> str:
        shape = self.g.ints(0, 0, self.c.num_attention_heads, self.c.head_size)
        return self.g.op("Transpose", self.g.op("Reshape", x, shape), perm=perm)

    def attention(self, x: str, mask: str, prefix: str) -> str:
        g = self.g
        query = self.heads(self.linear(x, f"{prefix}.self.query"), [0, 2, 1, 3])
        key_t = self.heads(self.linear(x, f"{prefix}.self.key"), [0, 2, 3, 1])
        value = self.heads(self.linear(x, f"{prefix}.self.value"), [0, 2, 1, 3])
        scores = g.op("Div", g.op("MatMul", query, key_t), g.float_(math.sqrt(self.c.head_size)))
        probs = g.op("Softmax", g.op("Add", scores, mask), axis=-1)
        context = g.op("Transpose", g.op("MatMul", probs, value), perm=[0, 2, 1, 3])
        merged = g.op("Reshape", context, g.ints(0, 0, self.c.hidden_size))
        projected = self.linear(merged, f"{prefix}.output.dense")
        return self.layer_norm(g.op("Add", projected, x), f"{prefix}.output.LayerNorm")

    def gelu(self, x: str) -> str:
        # exact GELU, x * 0.5 * (1 + erf(x / sqrt(2))), in the node order ORT's GeluFusion matches
        g = self.g
        erf = g.op("Erf", g.op("Div", x, g.float_(math.sqrt(2.0))))
        return g.op("Mul", g.op("Mul", x, g.op("Add", erf, g.float_(1.0))), g.float_(0.5))

    def feed_forward(self, x: str, prefix: str) -> str:
        inner = self.gelu(self.linear(x, f"{prefix}.intermediate.dense"))
        out = self.linear(inner, f"{prefix}.output.dense")
        return self.layer_norm(self.g.op("Add", out, x), f"{prefix}.output.LayerNorm")

    def build(self) -> onnx.ModelProto:
        hidden = self.embeddings()
        mask = self.extended_mask()
        for i in range(self.c.num_hidden_layers):
            prefix = f"encoder.layer.{i}"
            hidden = self.feed_forward(self.attention(hidden, mask, f"{prefix}.attention"), prefix)
        self.g.nodes.append(helper.make_node("Identity", [hidden], [OUTPUT], name=OUTPUT))
        dims = ["batch", "sequence"]
        graph = helper.make_graph(
            self.g.nodes,
            "bert",
            [helper.make_tensor_value_info(name, TensorProto.INT64, dims) for name in INPUTS],
            [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, [*dims, self.c.hidden_size])],
            initializer=self.g.initializers,
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="routeworker"
        )
        model.ir_version = 8  # the IR version that goes with opset 17
        onnx.checker.check_model(model, full_check=True)
        return model


def bert_graph(weights: Mapping[str, np.ndarray], config: BertConfig) -> onnx.ModelProto:
    """The ONNX model of a BERT encoder with these weights (Hugging Face ``BertModel`` names)."""
    return _Bert(weights, config).build()
