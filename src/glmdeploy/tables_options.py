"""The ``-o wide`` option the table commands share (kept apart from tables.py, which imports rich lazily)."""

from __future__ import annotations

from typing import Annotated, Literal

import typer

WideOutput = Annotated[
    Literal["wide"] | None,
    typer.Option("--output", "-o", help="'wide': every column, however wide the terminal."),
]
