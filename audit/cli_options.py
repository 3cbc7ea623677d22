"""Options every command shares. Imported by ``audit.cli`` and each ``audit.cli_*`` module (which
``audit.cli`` imports in turn, hence a module of their own)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

DbOption = Annotated[
    Path,
    typer.Option("--db", envvar="AUDIT_DB", help="The audit database file (DuckDB); created if missing."),
]
ExistingDbOption = Annotated[
    Path,
    typer.Option("--db", envvar="AUDIT_DB", help="The audit database file (DuckDB) the earlier stages wrote."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
SampleOption = Annotated[
    Optional[str],
    typer.Option("--sample", help="The sample set (e.g. n500-s7). Default: the latest drawn."),
]
