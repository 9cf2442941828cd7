"""Static int8 on a tiny random BERT: batch-independent bits, exact integer sums, close to fp32."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from tiny_bert import CONFIG, random_weights

from worker.embedding.bert_graph import OUTPUT, BertConfig, bert_graph
from worker.embedding.calibration import ChannelRanges, measure_ranges, weight_inputs
from worker.embedding.quantize import StaticInt8, quantise_static


@dataclass
class _Encoding:
    ids: list[int]


class _Tokenizer:
    """Each 'text' is a comma-separated list of token ids."""

    def encode(self, sequence: str) -> _Encoding:
        return _Encoding([int(part) for part in sequence.split(",")])


def _texts(count: int, seed: int, vocab: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [",".join(map(str, rng.integers(0, vocab, rng.integers(1, 12)))) for _ in range(count)]


@pytest.fixture(scope="module")
def fp32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = BertConfig.from_json(CONFIG)
    path = tmp_path_factory.mktemp("tiny") / "model.onnx"
    onnx.save_model(bert_graph(random_weights(config), config), str(path))
    return path


@pytest.fixture(scope="module")
def ranges(fp32: Path) -> ChannelRanges:
    return measure_ranges(fp32, _Tokenizer(), _texts(64, seed=0, vocab=CONFIG["vocab_size"]))


@pytest.fixture(scope="module")
def int8(fp32: Path, ranges: ChannelRanges) -> onnx.ModelProto:
    return quantise_static(onnx.load(str(fp32)), ranges)


def _session(model: onnx.ModelProto | Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _pooled(session: ort.InferenceSession, rows: list[list[int]]) -> np.ndarray:
    """Mean-pooled token embeddings of each row, padded to the longest."""
    width = max(len(r) for r in rows)
    ids = np.array([r + [0] * (width - len(r)) for r in rows], dtype=np.int64)
    mask = np.array([[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype=np.int64)
    hidden = session.run([OUTPUT], {"input_ids": ids, "attention_mask": mask, "token_type_ids": 0 * ids})[0]
    summed = np.sum(hidden, axis=1, where=mask[:, :, None].astype(bool), dtype=np.float64)
    return summed / mask.sum(axis=1, keepdims=True)


def test_every_weight_matmul_but_the_ffn_outputs_becomes_an_integer_matmul(
    fp32: Path, int8: onnx.ModelProto
) -> None:
    ops = Counter(node.op_type for node in int8.graph.node)
    layers = CONFIG["num_hidden_layers"]
    assert ops["MatMulIntegerToFloat"] == 5 * layers  # query, key, value, attention output, intermediate
    assert ops["QuantizeLinear"] == 3 * layers  # query/key/value share their input's quantiser
    assert ops["MatMul"] == 3 * layers  # the attention products and the FFN output stay fp32
    left = [item.matmuls[0].input[1] for item in weight_inputs(int8)]
    assert left == [f"encoder.layer.{i}.output.dense.weight.T" for i in range(layers)]
    # the bias Adds of the integer matmuls went into them
    assert ops["Add"] == Counter(n.op_type for n in onnx.load(str(fp32)).graph.node)["Add"] - 5 * layers


def test_every_matmul_can_be_quantised(fp32: Path, ranges: ChannelRanges) -> None:
    int8 = quantise_static(onnx.load(str(fp32)), ranges, StaticInt8(fp32=()))
    ops = Counter(node.op_type for node in int8.graph.node)
    assert ops["MatMulIntegerToFloat"] == 6 * CONFIG["num_hidden_layers"]
    assert not weight_inputs(int8)


def _integer_weights(model: onnx.ModelProto) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    tensors = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    names = [name.removesuffix(".int8") for name in tensors if name.endswith(".int8")]
    return {name: (tensors[f"{name}.int8"], tensors[f"{name}.zero_point"]) for name in names}


def test_weights_are_int8_within_64_so_avx2_int16_pair_sums_never_saturate(int8: onnx.ModelProto) -> None:
    weights = _integer_weights(int8)
    assert len(weights) == 5 * CONFIG["num_hidden_layers"]
    for integers, zero_point in weights.values():
        assert integers.dtype == zero_point.dtype == np.int8
        assert not zero_point.any()
    # 2 * 255 * 64 = 32,640 fits int16; 2 * 255 * 127 would not
    assert max(int(np.abs(w).max()) for w, _ in weights.values()) == 64
    assert StaticInt8().pair_sums_exact
    assert not StaticInt8(weight_limit=127).pair_sums_exact
    assert StaticInt8(weight_limit=127, activation_max=127).pair_sums_exact


def test_without_a_signed_limit_weights_are_uint8_around_128_on_the_exact_u8u8_kernel(
    fp32: Path, ranges: ChannelRanges
) -> None:
    int8 = quantise_static(onnx.load(str(fp32)), ranges, StaticInt8(weight_limit=None))
    for integers, zero_point in _integer_weights(int8).values():
        assert integers.dtype == zero_point.dtype == np.uint8
        assert (zero_point == 128).all()
        assert int(integers.min()) >= 1  # +-127 around 128, symmetric: 0 (-128) never occurs


def test_7_bit_activations_are_clipped_to_their_bound(fp32: Path, ranges: ChannelRanges) -> None:
    int8 = quantise_static(onnx.load(str(fp32)), ranges, StaticInt8(weight_limit=127, activation_max=127))
    clips = [node for node in int8.graph.node if node.op_type == "Clip"]
    assert len(clips) == 3 * CONFIG["num_hidden_layers"]  # one per quantised activation
    tensors = {i.name: numpy_helper.to_array(i) for i in int8.graph.initializer}
    assert all(int(tensors[clip.input[2]]) == 127 for clip in clips)


def test_a_sequence_gets_the_same_bits_alone_and_in_any_batch(int8: onnx.ModelProto) -> None:
    session = _session(int8)
    rng = np.random.default_rng(3)
    text = [int(i) for i in rng.integers(0, CONFIG["vocab_size"], 6)]
    alone = _pooled(session, [text])[0]
    for companions in (1, 4, 9):
        others = [
            list(map(int, rng.integers(0, CONFIG["vocab_size"], rng.integers(1, 15))))
            for _ in range(companions)
        ]
        batch = [*others[: companions // 2], text, *others[companions // 2 :]]
        assert np.array_equal(_pooled(session, batch)[companions // 2], alone)


def test_int8_stays_close_to_fp32(fp32: Path, int8: onnx.ModelProto) -> None:
    rows = [[int(i) for i in t.split(",")] for t in _texts(32, seed=1, vocab=CONFIG["vocab_size"])]
    want = _pooled(_session(fp32), rows)
    got = _pooled(_session(int8), rows)
    cosines = np.sum(want * got, axis=1) / np.linalg.norm(want, axis=1) / np.linalg.norm(got, axis=1)
    assert float(cosines.min()) >= 0.99


def test_the_same_ranges_give_the_same_bytes(
    fp32: Path, ranges: ChannelRanges, int8: onnx.ModelProto
) -> None:
    # the int8 fingerprint hashes model.onnx: every machine preparing it must write the same bytes
    assert quantise_static(onnx.load(str(fp32)), ranges).SerializeToString() == int8.SerializeToString()


def test_ranges_survive_a_round_trip(ranges: ChannelRanges, tmp_path: Path) -> None:
    ranges.save(tmp_path / "ranges.npz")
    loaded = ChannelRanges.load(tmp_path / "ranges.npz")
    assert loaded.low.keys() == ranges.low.keys()
    for name in ranges.low:
        assert np.array_equal(loaded.low[name], ranges.low[name])
        assert np.array_equal(loaded.high[name], ranges.high[name])


def test_missing_ranges_and_bad_settings_are_refused(fp32: Path, ranges: ChannelRanges) -> None:
    partial = ChannelRanges(dict(list(ranges.low.items())[1:]), dict(list(ranges.high.items())[1:]))
    with pytest.raises(ValueError, match="measure them again"):
        quantise_static(onnx.load(str(fp32)), partial)
    with pytest.raises(ValueError, match="alpha"):
        StaticInt8(alpha=1.5)
