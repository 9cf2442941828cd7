"""Regenerate the README's generated blocks from their sources (benchmark JSON, the settings model).

    python benchmarks/readme.py           # rewrite every generated block of README.md in place
    python benchmarks/readme.py --check   # exit 1, naming each block that differs from its renderer

A generated block is delimited by two marker lines::

    <!-- NAME:begin (anything: usually where it comes from) -->
    ...generated text...
    <!-- NAME:end -->

Each NAME has exactly one begin and one end marker and a renderer registered in
``benchmarks/readme_blocks`` (one module per block; see its ``__init__``). The text between the
markers is the renderer's output; tests/unit/test_readme.py fails when any block drifts from it.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = ROOT / "benchmarks" / "results"

sys.path.insert(0, str(Path(__file__).resolve().parent))
from readme_blocks import RENDERERS  # noqa: E402

_MARKER = re.compile(r"^<!-- ([a-z0-9][a-z0-9-]*):(begin|end)\b.*-->\s*$")


class BlockError(ValueError):
    """The README's markers are malformed: repeated, unpaired, out of order or unknown."""


@dataclass(frozen=True)
class Block:
    """One generated block: its name and the line numbers of its markers (0-based)."""

    name: str
    begin: int
    end: int


def find_blocks(text: str, known: set[str] | None = None) -> list[Block]:
    """Every generated block of ``text``; raises :class:`BlockError` on any marker problem."""
    lines = text.splitlines()
    markers = [(i, m.group(1), m.group(2)) for i, line in enumerate(lines) if (m := _MARKER.match(line))]
    counts = Counter((name, kind) for _, name, kind in markers)
    problems = [f"{name}: {n} {kind} markers" for (name, kind), n in sorted(counts.items()) if n != 1]
    problems += [
        f"{name}: a begin marker without an end marker"
        for (name, kind) in counts
        if kind == "begin" and (name, "end") not in counts
    ]
    problems += [
        f"{name}: an end marker without a begin marker"
        for (name, kind) in counts
        if kind == "end" and (name, "begin") not in counts
    ]
    if problems:
        raise BlockError("; ".join(problems))
    blocks: list[Block] = []
    open_block: tuple[str, int] | None = None
    for line, name, kind in markers:
        if kind == "begin":
            if open_block is not None:
                raise BlockError(f"{name} begins inside {open_block[0]}")
            open_block = (name, line)
        else:
            if open_block is None or open_block[0] != name:
                raise BlockError(f"{name} ends where it did not begin")
            blocks.append(Block(name, open_block[1], line))
            open_block = None
    if known is not None:
        unknown = sorted({b.name for b in blocks} - known)
        if unknown:
            raise BlockError(f"no renderer for {', '.join(unknown)} (benchmarks/readme_blocks)")
    return blocks


def regenerate(text: str, results: Path = RESULTS) -> str:
    """``text`` with every block's content replaced by its renderer's output."""
    blocks = find_blocks(text, set(RENDERERS))
    missing = sorted(set(RENDERERS) - {b.name for b in blocks})
    if missing:
        raise BlockError(f"registered blocks missing from the README: {', '.join(missing)}")
    lines = text.splitlines()
    out: list[str] = []
    position = 0
    for block in blocks:
        out += lines[position : block.begin + 1]
        out += ["", *RENDERERS[block.name](results).strip("\n").splitlines(), ""]
        position = block.end
    out += lines[position:]
    return "\n".join(out) + "\n"


def drifted(text: str, results: Path = RESULTS) -> list[str]:
    """Names of the blocks whose content differs from what their renderers produce now."""
    fresh = regenerate(text, results)
    old = {b.name: text.splitlines()[b.begin : b.end] for b in find_blocks(text)}
    new = {b.name: fresh.splitlines()[b.begin : b.end] for b in find_blocks(fresh)}
    return sorted(name for name in new if old.get(name) != new[name])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="report drift, change nothing")
    parser.add_argument("--readme", type=Path, default=README)
    args = parser.parse_args()
    text = args.readme.read_text(encoding="utf-8")
    try:
        if args.check:
            stale = drifted(text)
            for name in stale:
                print(f"{args.readme}: block {name} is stale: run `python benchmarks/readme.py`")
            return 1 if stale else 0
        args.readme.write_text(regenerate(text), encoding="utf-8")
    except BlockError as error:
        print(f"{args.readme}: {error}", file=sys.stderr)
        return 1
    print(f"regenerated {', '.join(sorted(RENDERERS))} in {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
