"""The static int8 recipes tried against the accuracy gate and the clock (int8_recipes.json)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from readme_blocks import block, load, markdown_table

CELLS = ("banking77 full", "banking77 10/route", "clinc150 full", "clinc150 10/route")


def _delta(recipe: dict[str, Any], cell: str) -> str:
    served = recipe.get("gate", {}).get("served_deltas", {})
    return f"{served[cell]:+.2f}" if cell in served else "—"


def _speed(recipe: dict[str, Any]) -> list[str]:
    speed = recipe.get("speed")
    if speed is None:
        return ["—", "—", "—"]
    return [
        f"{speed['cpu_texts_per_s_median']:.0f}",
        f"{speed['vs_fp32']:.2f}×",
        f"{speed['vs_dynamic']:.2f}×",
    ]


@block("int8-recipes-table")
def int8_recipes(results: Path) -> str:
    data = load(results, "int8_recipes.json")
    recipes = data["recipes"]

    def closeness(name: str) -> float:
        cosine = recipes[name].get("fidelity", {}).get("cosine_to_fp32", {})
        return -float(cosine.get("mean", 0.0))

    rows = []
    for name in sorted(recipes, key=closeness):
        recipe = recipes[name]
        cosine = recipe.get("fidelity", {}).get("cosine_to_fp32")
        rows.append([
            name + (" **(shipped)**" if name == data.get("shipped") else ""),
            "yes" if recipe["pair_sums_exact_on_avx2"] else "no (saturates)",
            f"{cosine['mean']:.5f} / {cosine['min']:.3f}" if cosine else "—",
            *[_delta(recipe, cell) for cell in CELLS],
            *_speed(recipe),
        ])  # fmt: skip
    reference = data.get("speed_reference", {})
    fp32 = reference.get("fp32", {}).get("cpu_texts_per_s_median")
    dynamic = reference.get("dynamic int8 (reference, not deterministic)", {}).get("cpu_texts_per_s_median")
    noise = reference.get("noise", {})
    columns = [
        "recipe",
        "exact on AVX2",
        "cosine to fp32 (mean / min)",
        *[f"Δ {cell}" for cell in CELLS],
        "texts/s",
        "× fp32",
        "× dynamic",
    ]
    return (
        markdown_table(columns, rows, "lllrrrrrrr")
        + f"\n\nΔ: served router (self-fit) in points against fp32, — where not run (cells were run "
        "only where the CLINC150 10/route cell, the one every recipe fails, left hope). Speed: texts "
        f"per CPU second, one thread, in the same run as fp32 ({fp32}) and dynamic int8 ({dynamic}); "
        f"load average {noise.get('load_average_before', ['?'])[0]} at the start (provisional: the "
        "machine was shared). Cosine: over 1,500 Banking77 and CLINC150 test texts."
    )
