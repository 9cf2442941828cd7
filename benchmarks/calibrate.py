"""Writes what the static int8 export is calibrated with: the corpus and the ranges measured on it.

    .venv/bin/python benchmarks/calibrate.py --corpus [--datasets ../shared/datasets]
    .venv/bin/python benchmarks/calibrate.py --ranges

``--corpus`` writes worker/embedding/calibration/texts.json, ``--ranges`` measures the fp32 graph's
activation ranges on it into calibration/ranges.npz (after a change to the model or the corpus;
tests/integration/test_calibration.py fails when they drift apart). Both files are committed, so
neither the export nor the tests need the datasets. The corpus: 256 Banking77 train rows and
256 CLINC150 in-scope train rows (drawn with a fixed seed: short, real queries of two domains;
never test rows, so the accuracy benchmark's test sets stay unseen), the hand-written edge cases
below (one character, punctuation, numbers, other scripts, emoji, markup, code, whitespace), and
long texts past the model's 256-token limit, made by joining drawn rows, so the ranges cover
every sequence length the encoder sees.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from datasets import banking77, clinc150

from worker.config import load_settings
from worker.embedding.calibration import CORPUS, RANGES, corpus_texts, measure_ranges
from worker.embedding.export import MODEL_FILE, SourceModel, export_fp32, write_tokenizer
from worker.embedding.prepare import source_wheel
from worker.embedding.tokens import load_tokenizer

REPO = Path(__file__).resolve().parents[1]
PER_DATASET = 256
LONG_TEXTS = 16
SEED = 0

EDGE_CASES = [
    "a",
    "?",
    "!!!",
    "...",
    "42",
    "$100",
    "€45.99",
    "12/05/2024",
    "+1 (555) 010-2030",
    "ok",
    "hi",
    "yes please",
    "thanks!!",
    "WHY IS MY ACCOUNT BLOCKED",
    "help help help",
    "Crème brûlée, s'il vous plaît",
    "¿Dónde está mi tarjeta?",
    "Wo ist meine Überweisung geblieben?",
    "Где мой перевод?",
    "我的银行卡不见了",
    "カードを紛失しました",
    "카드를 잃어버렸어요",
    "أين بطاقتي",
    "मेरा कार्ड खो गया",
    "pay my rent 🏠💰 please 🙏",
    "🔥🔥🔥",
    "😀",
    ":) :( ;)",
    "https://example.com/account?id=12345&ref=abc",
    "user@example.com",
    "def f(x): return x * 2",
    "SELECT * FROM accounts WHERE id = 7;",
    "<b>bold</b> &amp; <i>italic</i>",
    "  leading and trailing spaces  ",
    "tabs\tbetween\twords",
    "line one\nline two\n\nline four",
    "#hashtag @mention",
    "can't won't don't shouldn't",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "zzzz qqqq xxxx",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit.",
    "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20",
    "I want to transfer 250 dollars from checking to savings tomorrow morning, is that possible?",
    "please " * 300,
]


def draw(texts: list[str], count: int, rng: np.random.Generator) -> list[str]:
    unique = sorted(set(texts))
    return [unique[i] for i in sorted(rng.choice(len(unique), size=count, replace=False))]


def write_corpus(datasets: Path) -> None:
    rng = np.random.default_rng(SEED)
    bank = banking77(datasets)
    clinc = clinc150(datasets)
    drawn = draw(bank.routes.texts, PER_DATASET, rng) + draw(clinc.routes.texts, PER_DATASET, rng)
    order = rng.permutation(len(drawn))
    # 32 rows of ~12 words each pass the 256-token limit: the encoder truncates them
    long_texts = [" ".join(drawn[j] for j in order[i * 32 : (i + 1) * 32]) for i in range(LONG_TEXTS)]
    corpus = {
        "about": (
            "Calibration corpus of the static int8 export (worker/embedding/quantize.py); written by "
            "benchmarks/calibrate.py. Banking77 rows: Casanueva et al. 2020, "
            "'Efficient Intent Detection with Dual Sentence Encoders', CC BY 4.0. CLINC150 rows: "
            "Larson et al. 2019, 'An Evaluation Dataset for Intent Classification and Out-of-Scope "
            "Prediction', CC BY 3.0. Edge cases and joined long texts: routeworker."
        ),
        "sources": {
            "banking77": [f"train.csv, {PER_DATASET} distinct rows, numpy seed {SEED}", bank.checksums],
            "clinc150": [f"in-scope train, {PER_DATASET} distinct rows, same generator", clinc.checksums],
            "edge_cases": len(EDGE_CASES),
            "long_texts": f"{LONG_TEXTS} texts of 32 drawn rows each",
        },
        "texts": drawn + EDGE_CASES + long_texts,
    }
    CORPUS.parent.mkdir(parents=True, exist_ok=True)
    CORPUS.write_text(json.dumps(corpus, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {len(corpus['texts'])} texts to {CORPUS.relative_to(REPO)}")


def write_ranges() -> None:
    # the fp32 graph as the export writes it, made here: a prepared export needs these very ranges
    source = SourceModel.from_wheel(source_wheel(load_settings().cache_dir))
    with tempfile.TemporaryDirectory(prefix="routeworker-calibration-") as scratch:
        fp32 = Path(scratch)
        export_fp32(source, fp32 / MODEL_FILE)
        write_tokenizer(source, fp32)
        ranges = measure_ranges(fp32 / MODEL_FILE, load_tokenizer(fp32), corpus_texts())
    ranges.save(RANGES)
    print(f"wrote {len(ranges.low)} activation ranges to {RANGES.relative_to(REPO)}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--corpus", action="store_true", help="write calibration/texts.json")
    parser.add_argument("--ranges", action="store_true", help="write calibration/ranges.npz")
    args = parser.parse_args()
    if not (args.corpus or args.ranges):
        parser.error("say --corpus, --ranges or both")
    if args.corpus:
        write_corpus(args.datasets)
    if args.ranges:
        write_ranges()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
