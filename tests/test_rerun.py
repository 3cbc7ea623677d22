"""Re-running ingest never duplicates; --replace re-reads a changed file; a killed ingest leaves all or nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from audit import db as audit_db
from audit.ingest import ingest
from conftest import FIXTURES, rows

LINES = (FIXTURES / "openai_chat_pairs.jsonl").read_text().splitlines()


def count(con, table: str = "requests") -> int:
    return con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_same_file_twice_adds_nothing(con, tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text("\n".join(LINES) + "\n")
    ingest(con, [path])
    second = ingest(con, [path]).files[0]
    assert second.skipped == "already ingested"
    assert count(con) == 4 and count(con, "ingest_files") == 1


def test_a_copy_elsewhere_is_recognised_by_content(con, tmp_path):
    (tmp_path / "a.jsonl").write_text("\n".join(LINES) + "\n")
    (tmp_path / "b.jsonl").write_text("\n".join(LINES) + "\n")
    results = ingest(con, [tmp_path]).files
    assert results[1].skipped.startswith("already ingested (same content as")
    assert count(con) == 4


def test_grown_file_adds_only_new_calls(con, tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text("\n".join(LINES[:2]) + "\n")
    ingest(con, [path])
    path.write_text("\n".join(LINES) + "\n")  # the log grew by two calls
    result = ingest(con, [path]).files[0]
    assert (result.read, result.stored, result.duplicate) == (4, 2, 2)
    assert count(con) == 4


def test_replace_rereads_a_changed_file(con, tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text("\n".join(LINES) + "\n")
    ingest(con, [path])
    edited = [json.loads(line) for line in LINES[:3]]
    edited[0]["response"]["usage"]["completion_tokens"] = 99   # a corrected export
    path.write_text("\n".join(json.dumps(r) for r in edited) + "\n")
    result = ingest(con, [path], replace=True).files[0]
    assert (result.read, result.stored, result.duplicate) == (3, 3, 0)
    assert count(con) == 3
    assert rows(con, "SELECT output_tokens FROM requests WHERE native_id = 'log_1'") == [{"output_tokens": 99}]
    assert rows(con, "SELECT count(*) AS n FROM ingest_files WHERE replaced") == [{"n": 1}]


def test_request_ids_are_unique(con, tmp_path):
    ingest(con, [FIXTURES / "openai_chat_pairs.jsonl"])
    assert rows(con, "SELECT count(*) - count(DISTINCT request_id) AS d FROM requests") == [{"d": 0}]


@pytest.mark.slow
def test_killed_ingest_leaves_all_or_none_of_each_file(tmp_path):
    """SIGKILL a real `audit ingest` mid-way: each file is wholly in or wholly out."""
    big = tmp_path / "big.jsonl"
    record = json.loads(LINES[0])
    with big.open("w") as handle:
        for i in range(150_000):
            record["id"] = f"big_{i}"
            handle.write(json.dumps(record) + "\n")
    small = tmp_path / "a_small.jsonl"           # sorted first: finishes before the kill
    small.write_text("\n".join(LINES) + "\n")
    db_path = tmp_path / "audit.duckdb"
    process = subprocess.Popen(
        [sys.executable, "-m", "audit", "ingest", str(small), str(big), "--db", str(db_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    # Kill once the small file is committed, while the big one is being read.
    deadline = time.time() + 120
    seen_small = False
    while time.time() < deadline and not seen_small:
        line = process.stderr.readline()
        seen_small = "a_small.jsonl" in line
    assert seen_small, "the small file never finished"
    time.sleep(0.5)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    con = audit_db.connect(db_path)
    files = rows(con, "SELECT path, rows_stored FROM ingest_files ORDER BY path")
    per_file = dict(con.execute(
        "SELECT f.path, count(r.request_id) FROM ingest_files f LEFT JOIN requests r USING (file_id) GROUP BY ALL"
    ).fetchall())
    assert per_file.get(str(small)) == 4
    big_rows = con.execute("SELECT count(*) FROM requests WHERE native_id LIKE 'big_%'").fetchone()[0]
    assert big_rows in (0, 150_000), big_rows
    for f in files:
        assert per_file[f["path"]] == f["rows_stored"]
    # And a rerun completes the work without duplicating the small file.
    con.close()
    con = audit_db.connect(db_path)
    ingest(con, [small, big])
    assert count(con) == 150_004
