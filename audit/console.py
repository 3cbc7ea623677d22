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

err = Console(stderr=True, highlight=False)
out = Console(highlight=False, soft_wrap=True)


def print_error(error: AuditError) -> None:
    err.print(f"[bold red]error:[/] {error.one_line()}", markup=True, highlight=False, soft_wrap=True)


def print_json(data: Any) -> None:
    """Machine-readable output goes to stdout, nothing else does."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


@contextmanager
def progress_bar(description: str, total: int | None) -> Iterator[Any]:
    """A stderr progress bar; yields ``advance(n, description=None)``."""
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as progress:
        task = progress.add_task(description, total=total)

        def advance(n: int = 1, description: str | None = None) -> None:
            if description:
                progress.update(task, description=description)
            progress.advance(task, n)

        yield advance
