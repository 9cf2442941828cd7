"""The shipped int8 calibration ranges are what the shipped corpus gives on the fp32 export."""

from __future__ import annotations

import numpy as np
import pytest

from worker.embedding.calibration import ChannelRanges, corpus_texts, measure_ranges
from worker.embedding.model import ModelSpec
from worker.embedding.tokens import load_tokenizer

pytestmark = pytest.mark.integration


def test_the_shipped_ranges_match_a_fresh_measurement(model_spec: ModelSpec) -> None:
    assert model_spec.path is not None
    shipped = ChannelRanges.load()
    fresh = measure_ranges(model_spec.path / "model.onnx", load_tokenizer(model_spec.path), corpus_texts())
    assert fresh.low.keys() == shipped.low.keys()
    assert len(shipped.low) == 24  # 6 layers x (query/key/value, attention output, intermediate, output)
    for name in shipped.low:
        # fp32 kernels differ between CPUs in the last bits; a changed model or corpus moves far more.
        # On a failure: benchmarks/calibrate.py --ranges, then commit calibration/ranges.npz
        np.testing.assert_allclose(fresh.low[name], shipped.low[name], rtol=1e-4, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(fresh.high[name], shipped.high[name], rtol=1e-4, atol=1e-5, err_msg=name)


def test_the_corpus_reaches_past_the_token_limit(model_spec: ModelSpec) -> None:
    assert model_spec.path is not None
    tokenizer = load_tokenizer(model_spec.path)
    lengths = [len(tokenizer.encode(text).ids) for text in corpus_texts()]
    assert len(lengths) >= 500
    assert min(lengths) <= 3  # one character plus [CLS] and [SEP]
    assert max(lengths) == 256  # truncated: the ranges cover the longest sequences the encoder sees
