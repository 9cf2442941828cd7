"""Export sentence-transformers/all-MiniLM-L6-v2 to ONNX (fp32 and per-channel int8).

Runs as a script inside the separate model-build environment (torch, transformers, onnx,
onnxruntime), never inside the worker: ``python export_onnx.py SOURCE_DIR OUT_DIR``. It imports
nothing from ``worker`` so that the build environment needs no routeworker install.

The ONNX graph outputs the token embeddings (``last_hidden_state``); fastembed applies the mean
pooling and L2 normalisation that sentence-transformers' config prescribes (1_Pooling/config.json).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch
from transformers import AutoModel

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "config.json",
)
OPSET = 17


class _TokenEmbeddings(torch.nn.Module):  # type: ignore[misc]  # torch is untyped here
    """Keyword-only call into the encoder: positional arguments are not stable across transformers."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):  # type: ignore[no-untyped-def]
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return out.last_hidden_state


def _export_fp32(source: Path, target: Path) -> None:
    encoder = AutoModel.from_pretrained(str(source), local_files_only=True, attn_implementation="eager")
    model = _TokenEmbeddings(encoder).eval()
    ids = torch.ones((2, 8), dtype=torch.int64)
    dyn = {0: "batch", 1: "sequence"}
    with torch.no_grad():
        torch.onnx.export(
            model,
            (ids, torch.ones_like(ids), torch.zeros_like(ids)),
            str(target),
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["last_hidden_state"],
            dynamic_axes={
                "input_ids": dyn,
                "attention_mask": dyn,
                "token_type_ids": dyn,
                "last_hidden_state": dyn,
            },
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


def _quantize_int8(fp32: Path, target: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(fp32), str(target), per_channel=True, weight_type=QuantType.QInt8)


def _copy_tokenizer(source: Path, target_dir: Path, max_length: int) -> None:
    for name in TOKENIZER_FILES:
        shutil.copyfile(source / name, target_dir / name)
    # sentence-transformers truncates at max_seq_length (256), not the tokenizer's 512
    config_path = target_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["model_max_length"] = max_length
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))


def main(argv: list[str]) -> int:
    source, out = Path(argv[1]), Path(argv[2])
    torch.manual_seed(0)
    torch.set_num_threads(1)
    max_length = int(json.loads((source / "sentence_bert_config.json").read_text())["max_seq_length"])
    fp32_dir, int8_dir = out / "fp32", out / "int8"
    fp32_dir.mkdir(parents=True, exist_ok=True)
    int8_dir.mkdir(parents=True, exist_ok=True)
    _export_fp32(source, fp32_dir / "model.onnx")
    _quantize_int8(fp32_dir / "model.onnx", int8_dir / "model.onnx")
    for variant_dir in (fp32_dir, int8_dir):
        _copy_tokenizer(source, variant_dir, max_length)
    (out / "build-info.json").write_text(
        json.dumps(
            {
                "torch": torch.__version__,
                "transformers": __import__("transformers").__version__,
                "onnx": __import__("onnx").__version__,
                "onnxruntime": __import__("onnxruntime").__version__,
                "opset": OPSET,
                "max_length": max_length,
            },
            indent=2,
            sort_keys=True,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
