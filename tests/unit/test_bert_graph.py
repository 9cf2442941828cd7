"""The BERT ONNX graph on a tiny random encoder: matches a float64 forward pass, keeps the interface."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from bert_float64 import token_embeddings
from tiny_bert import CONFIG, random_weights

from worker.embedding.bert_graph import INPUTS, OPSET, OUTPUT, BertConfig, bert_graph


@pytest.fixture(scope="module")
def config() -> BertConfig:
    return BertConfig.from_json(CONFIG)


@pytest.fixture(scope="module")
def weights(config: BertConfig) -> dict[str, np.ndarray]:
    return random_weights(config)


@pytest.fixture(scope="module")
def model(config: BertConfig, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    return bert_graph(weights, config)


@pytest.fixture(scope="module")
def session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # as fastembed loads it
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _run(session: ort.InferenceSession, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    out: np.ndarray = session.run([OUTPUT], feeds)[0]
    return out


def test_interface_is_dynamic_int64_in_and_last_hidden_state_out(model: onnx.ModelProto) -> None:
    assert [(o.domain, o.version) for o in model.opset_import] == [("", OPSET)]
    inputs = {i.name: i.type.tensor_type for i in model.graph.input}
    assert list(inputs) == list(INPUTS)
    for tensor in inputs.values():
        assert tensor.elem_type == onnx.TensorProto.INT64
        assert [d.dim_param for d in tensor.shape.dim] == ["batch", "sequence"]
    (output,) = model.graph.output
    assert output.name == "last_hidden_state"
    dims = output.type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", "sequence", 16]


def test_padded_batch_matches_a_float64_forward_pass(
    session: ort.InferenceSession, config: BertConfig, weights: dict[str, np.ndarray]
) -> None:
    rng = np.random.default_rng(1)
    ids = rng.integers(0, config.vocab_size, (3, 9), dtype=np.int64)
    lengths = [9, 4, 1]
    mask = np.array([[1] * n + [0] * (9 - n) for n in lengths], dtype=np.int64)
    got = _run(session, ids, mask)
    assert got.dtype == np.float32
    assert got.shape == (3, 9, config.hidden_size)
    for row, n in enumerate(lengths):
        # each text alone in float64: what the padded batch must reproduce on its real tokens
        want = token_embeddings(weights, config, ids[row : row + 1, :n], mask[row : row + 1, :n])[0]
        np.testing.assert_allclose(got[row, :n], want, atol=2e-5, rtol=0)


def test_a_text_gets_the_same_bits_alone_and_padded_in_a_batch(
    session: ort.InferenceSession, config: BertConfig
) -> None:
    rng = np.random.default_rng(2)
    text = rng.integers(0, config.vocab_size, (1, 5), dtype=np.int64)
    alone = _run(session, text, np.ones_like(text))[0]
    for width, neighbours in ((8, 1), (17, 3)):
        batch = rng.integers(0, config.vocab_size, (neighbours + 1, width), dtype=np.int64)
        batch[1, :5] = text[0]
        mask = np.ones_like(batch)
        mask[1, 5:] = 0
        assert np.array_equal(_run(session, batch, mask)[1, :5], alone)


def test_the_same_weights_give_the_same_bytes(
    config: BertConfig, weights: dict[str, np.ndarray], model: onnx.ModelProto
) -> None:
    # the model's fingerprint hashes model.onnx: two exports of one source must share vectors
    assert bert_graph(weights, config).SerializeToString() == model.SerializeToString()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_type": "roberta"}, "not a BERT config"),
        ({"hidden_act": "gelu_new"}, "erf"),
        ({"position_embedding_type": "relative_key"}, "absolute"),
        ({"num_attention_heads": 5}, "multiple"),
    ],
)
def test_configs_the_graph_does_not_model_are_refused(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BertConfig.from_json({**CONFIG, **change})
