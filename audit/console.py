"""The terminal side: rich on stderr, data on stdout.

Only the CLI imports this module; the core reports progress through plain
callables so that it runs without rich.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from audit.errors import AuditError

err = Console(stderr=True, highlight=False, soft_wrap=True)
if not err.is_terminal:
    # Piped or in `make`: no terminal width to respect, and 80 columns truncate tables.
    err = Console(stderr=True, highlight=False, soft_wrap=True, width=150)
out = Console(highlight=False, soft_wrap=True)


def print_error(error: AuditError) -> None:
    err.print(f"[bold red]error:[/] {error.one_line()}", markup=True, highlight=False, soft_wrap=True)


def print_json(data: Any) -> None:
    """Machine-readable output goes to stdout, nothing else does."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


class Bar:
    """One task of a rich progress display: ``advance`` it or ``set`` its state."""

    def __init__(self, progress: Progress, task: Any) -> None:
        self._progress, self._task = progress, task

    def advance(self, n: float = 1) -> None:
        self._progress.advance(self._task, n)

    def set(self, *, completed: float | None = None, description: str | None = None, total: float | None = None) -> None:
        self._progress.update(self._task, completed=completed, description=description, total=total)


@contextmanager
def progress_bar(description: str, total: float | None, *, show_count: bool = True) -> Iterator[Bar]:
    """A transient progress bar on stderr (only when stderr is a terminal)."""
    columns = [TextColumn("{task.description}"), BarColumn()]
    columns += [MofNCompleteColumn()] if show_count else [TextColumn("{task.percentage:>3.0f}%")]
    columns += [TimeElapsedColumn()]
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as progress:
        yield Bar(progress, progress.add_task(description, total=total))
