"""Shared fixtures: a real DuckDB file in tmp_path, paths to fixtures and real data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from audit import db as audit_db

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).parent.parent
REALDATA = REPO.parent / "shared" / "realdata"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "audit.duckdb"


@pytest.fixture
def con(db_path: Path):
    connection = audit_db.connect(db_path)
    yield connection
    connection.close()


def rows(con, sql: str, params: list | None = None) -> list[dict]:
    cursor = con.execute(sql, params or [])
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, r)) for r in cursor.fetchall()]


def run_audit(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real `audit` command in a subprocess (exit codes, stderr, no traceback)."""
    return subprocess.run(
        [sys.executable, "-m", "audit", *args],
        capture_output=True, text=True, cwd=cwd, env={**os.environ, **(env or {})}, timeout=300,
    )


def realdata(*parts: str) -> Path:
    path = REALDATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared real data not present: {path}")
    return path
