"""Shared fixtures: a real DuckDB file in tmp_path, paths to fixtures and real data,
and the helpers the format tests share (reading back what was ingested, the
reference token count)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from audit import db as audit_db
from audit.ingest import ingest

if TYPE_CHECKING:
    import tiktoken

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


def by_id(con) -> dict[str, dict]:
    """The stored requests by native_id, in source_line order."""
    return {r["native_id"]: r for r in rows(con, "SELECT * FROM requests ORDER BY source_line")}


def ingest_by_id(con, path: Path, **options) -> tuple[dict, dict[str, dict]]:
    """Ingest one file: the run's totals, and the stored requests by native_id."""
    totals = ingest(con, [path], **options).as_dict()["totals"]
    return totals, by_id(con)


def rejects(con) -> list[tuple[int, str]]:
    """(line_no, reason) of every reject, in line order."""
    return [(r["line_no"], r["reason"]) for r in rows(con, "SELECT line_no, reason FROM ingest_rejects ORDER BY line_no")]


def cookbook_count(messages: list[dict], encoding: tiktoken.Encoding) -> int:
    """OpenAI cookbook's num_tokens_from_messages, written out independently:
    3 per message + its values' tokens (+1 for a name), + 3 to prime the reply."""
    total = 3  # reply priming
    for message in messages:
        total += 3
        for key, value in message.items():
            total += len(encoding.encode(value))
            if key == "name":
                total += 1
    return total


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


# --------------------------------------------------------------------------- replay


@pytest.fixture(scope="session")
def sampled_db_file(tmp_path_factory) -> Path:
    """sample_logs ingested, analyzed and sampled (n500-s7) once: tests copy the file."""
    from audit.analyze import analyze
    from audit.sample import draw_sample
    from audit.synth import SAMPLE_LOGS_FRACTION

    path = tmp_path_factory.mktemp("sampled") / "sampled.duckdb"
    connection = audit_db.connect(path)
    ingest(connection, [REPO / "sample_logs"], sampled_fraction=SAMPLE_LOGS_FRACTION)
    analyze(connection)
    draw_sample(connection, n=500, seed=7)
    connection.close()
    return path


@pytest.fixture
def sampled_db(sampled_db_file: Path, tmp_path: Path) -> Path:
    """A private copy of the sampled database for one test."""
    import shutil

    path = tmp_path / "audit.duckdb"
    shutil.copyfile(sampled_db_file, path)
    return path


class SharedEngine:
    """An engine lent to several replays: closing it is left to the session."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.info = engine.info

    def prepare(self, item):
        return self.engine.prepare(item)

    def run(self, items, on_result) -> None:
        self.engine.run(items, on_result)

    def close(self) -> None:
        pass


@pytest.fixture(scope="session")
def smollm2_engine():
    """The real default candidate, SmolLM2-135M-Instruct on vLLM (CPU here): one engine per test session."""
    from audit.backends import Candidate
    from audit.backends.vllm_engine import VllmEngine

    engine = VllmEngine(Candidate("smollm2", "vllm", "smollm2", {"max_model_len": "2048", "kv_cache_gb": "1"}))
    yield engine
    engine.close()


# --------------------------------------------------------------------------- a real browser


@pytest.fixture(scope="session")
def chromium_browser():
    """Debian's headless Chromium driven by playwright (never `playwright install`): one per session.

    Skipped, saying what to install, when either is missing."""
    from audit.report.render import find_chromium  # the lookup `audit report --pdf` uses

    executable = find_chromium()
    if executable is None:
        pytest.skip("Chromium is not installed (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (no browser download needed)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True,
                                             args=["--no-sandbox", "--disable-gpu"])
        yield browser
        browser.close()
