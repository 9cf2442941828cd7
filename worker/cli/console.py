"""Shared terminal output: one rich console, tables, progress bars."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from rich.console import Console
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> Table:
    """A plain table; numbers right-aligned."""
    out = Table(title=title, title_justify="left")
    materialised = [list(r) for r in rows]
    for i, name in enumerate(columns):
        numeric = bool(materialised) and all(isinstance(r[i], int | float) for r in materialised)
        out.add_column(name, justify="right" if numeric else "left")
    for row in materialised:
        out.add_row(*(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row))
    return out
