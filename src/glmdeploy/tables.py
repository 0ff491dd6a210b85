"""Tables that fit the terminal (issue 13 §2).

Each column has a priority. The key column (the name you type next: a profile, a deployment, an
offer id) is never truncated; when the table is wider than the terminal, the lowest-priority columns
are dropped first, and only then may the remaining non-key cells be cut with an ellipsis. ``wide``
(``-o wide``) keeps every column whatever the width.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Literal

Justify = Literal["left", "right"]
# Between two columns of a box-less rich table with the default (0, 1) padding.
GAP = 2


@dataclass(frozen=True)
class Column:
    header: str
    priority: int  # higher stays longer; the key column's is irrelevant (never dropped)
    justify: Justify = "left"
    key: bool = False


def fitted(columns: list[Column], rows: list[list[str]], width: int, *, wide: bool = False) -> list[int]:
    """Indexes of the columns to show at ``width``: the key columns always, then by priority."""
    natural = [max([len(c.header), *(len(r[i]) for r in rows)]) for i, c in enumerate(columns)]
    shown = list(range(len(columns)))
    if wide:
        return shown

    def total(indexes: list[int]) -> int:
        return sum(natural[i] for i in indexes) + GAP * max(0, len(indexes) - 1)

    droppable = sorted((i for i, c in enumerate(columns) if not c.key), key=lambda i: (columns[i].priority, -i))
    for i in droppable:
        if total(shown) <= width:
            break
        shown.remove(i)
    return shown


def print_table(
    columns: list[Column],
    rows: list[list[str]],
    *,
    wide: bool = False,
    styles: list[str | None] | None = None,
    footer: list[str] | None = None,
) -> None:
    """Print ``rows`` on stdout as a box-less table that fits the terminal (see the module doc)."""
    from rich.table import Table

    # The broken-pipe-safe console: `list | head -1` exits quietly (141), not with a traceback.
    from glmdeploy.commands._common import console as make_console

    console = make_console(file=sys.stdout, highlight=False, soft_wrap=False)
    every = rows + ([footer] if footer else [])
    natural = [max([len(c.header), *(len(r[i]) for r in every)]) for i, c in enumerate(columns)]
    shown = fitted(columns, every, console.width, wide=wide)
    if wide:
        # Everything, unwrapped: wider than the terminal if need be (pipe it to `less -S`).
        console = make_console(file=sys.stdout, highlight=False, soft_wrap=False,
                          width=max(console.width, sum(natural) + GAP * len(columns)))
    table = Table(box=None, pad_edge=False, header_style="bold")
    for i in shown:
        c = columns[i]
        if c.key:
            table.add_column(c.header, justify=c.justify, no_wrap=True, min_width=natural[i])
        else:
            table.add_column(c.header, justify=c.justify, no_wrap=True, overflow="ellipsis")
    for n, row in enumerate(rows):
        table.add_row(*(row[i] for i in shown), style=styles[n] if styles else None)
    if footer:
        table.add_row(*(footer[i] for i in shown), style="bold")
    console.print(table)
