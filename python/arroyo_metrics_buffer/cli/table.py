"""The one table renderer of the command line (demo, check and bench)."""

from __future__ import annotations

from collections.abc import Sequence


def table(head: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> list[str]:
    """Lines of a plain-text table: `head`, a rule, then `rows`. The first `left` columns are
    left-aligned (labels), the others right-aligned (figures); a short row leaves its last cells
    empty."""
    width = len(head)
    cells = [list(head), *([*row, *[""] * (width - len(row))] for row in rows)]
    widths = [max(len(r[i]) for r in cells) for i in range(width)]

    def line(row: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=False))
        ).rstrip()

    return [line(cells[0]), "  ".join("-" * w for w in widths), *(line(r) for r in cells[1:])]
