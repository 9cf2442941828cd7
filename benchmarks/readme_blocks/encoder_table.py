"""Which graph optimisations the encoder keeps, from encoder_graphs.json."""

from __future__ import annotations

from pathlib import Path

from readme_blocks import block, cpu_name, load, markdown_table

#: (what is decided, the graph with it, the graph without it), as benchmarks/encoder_graphs.py;
#: whether the encoder uses it is read from the figures (>= KEEP_ABOVE faster), except that the
#: session fusions are one setting for both variants and FastGelu would change the model
PAIRS = [
    ("ONNX Runtime session fusions (ORT_ENABLE_ALL over BASIC), fp32",
     "fp32 export, ORT_ENABLE_ALL", "fp32 export, ORT_ENABLE_BASIC"),
    ("ONNX Runtime session fusions (ORT_ENABLE_ALL over BASIC), int8",
     "int8 static export, ORT_ENABLE_ALL", "int8 static export, ORT_ENABLE_BASIC"),
    ("offline BERT optimizer (Attention, SkipLayerNorm, EmbedLayerNorm, BiasGelu), fp32",
     "fp32 ORT optimizer (Attention, SkipLN, EmbedLN, BiasGelu)", "fp32 export, ORT_ENABLE_ALL"),
    ("offline BERT optimizer without Attention, fp32",
     "fp32 ORT optimizer without Attention", "fp32 export, ORT_ENABLE_ALL"),
    ("offline BERT optimizer without Attention, int8",
     "int8 static from ORT optimizer without Attention", "int8 static export, ORT_ENABLE_ALL"),
    ("FastGelu (tanh approximation: a different model), int8",
     "int8 static, FastGelu", "int8 static export, ORT_ENABLE_ALL"),
]  # fmt: skip
KEEP_ABOVE = 1.03


@block("encoder-table")
def encoder(results: Path) -> str:
    data = load(results, "encoder_graphs.json")
    graphs = data["graphs"]
    rows = []
    for what, with_it, without in PAIRS:
        ratio = graphs[with_it]["cpu_texts_per_s_median"] / graphs[without]["cpu_texts_per_s_median"]
        if "session fusions" in what:
            kept = "in use (one setting for both variants)"
        else:
            kept = "in use" if ratio >= KEEP_ABOVE and "FastGelu" not in what else "not used"
        faster, slower = graphs[with_it]["cpu_texts_per_s_median"], graphs[without]["cpu_texts_per_s_median"]
        rows.append([
            what,
            f"{faster:.0f} vs {slower:.0f}",
            f"{ratio:.2f}×",
            kept,
        ])  # fmt: skip
    load_before = data["noise"]["load_average_before"][0]
    # runs before encoder_graphs.py recorded the int8 settings measured the 7-bit weights
    int8 = data["settings"].get("int8", {})
    if int8.get("weight_limit") is not None:
        weights = f"int8 with weights within ±{int8['weight_limit']}" + (
            " and FFN outputs in fp32" if int8.get("fp32") else ""
        )
    else:
        weights = f"int8 with {int8.get('weight_bits', 7)}-bit weights"
    return (
        markdown_table(
            ["optimisation", "texts per CPU second (with vs without)", "speed-up", ""], rows, "lrrl"
        )
        + f"\n\n{data['settings']['texts']:,} texts in batches of 32 sorted by length, one thread on "
        f"{cpu_name(data['machine'])}, "
        f"{weights}, "
        f"median of {data['settings']['repetitions']} alternating repetitions; load average "
        f"{load_before:.1f} at the start (provisional: the machine was shared)."
    )
