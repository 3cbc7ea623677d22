"""Bad input: a clear reason per record, nothing lost, one-line errors for bad paths."""

from __future__ import annotations

import json

import pytest

from audit.errors import ConfigError, InputError
from audit.ingest import ingest
from conftest import FIXTURES, rows, run_audit

GOOD = json.loads((FIXTURES / "openai_chat_pairs.jsonl").read_text().splitlines()[0])


def good_line(n: int, **changes) -> bytes:
    record = json.loads(json.dumps(GOOD))
    record["id"] = f"good_{n}"
    for path, value in changes.items():
        target = record
        *parents, leaf = path.split(".")
        for key in parents:
            target = target[key]
        target[leaf] = value
    return json.dumps(record).encode()


@pytest.fixture
def bad_file(tmp_path):
    """A chat log with one bad record of every kind, CRLF line ends and a BOM."""
    lines = [
        b"\xef\xbb\xbf" + good_line(1),                                      # 1 BOM before a good record
        good_line(2)[:200],                                                  # 2 truncated JSON
        good_line(3, **{"response.usage.prompt_tokens": "lots"}),            # 3 wrong type
        good_line(4, **{"response.usage.completion_tokens": -5}),            # 4 negative count
        json.dumps({"id": "x", "request": {"model": "gpt-4o", "messages": []}}).encode(),  # 5 missing response
        b'{"id": "latin1", "note": "caf\xe9"}',                              # 6 not UTF-8
        b"[1, 2, 3]",                                                        # 7 valid JSON, wrong shape
        b'"just a string"',                                                  # 8 valid JSON, wrong shape
        b"",                                                                 # 9 blank line: not a record
        good_line(10, timestamp="yesterday-ish"),                            # 10 unreadable timestamp
        good_line(11, **{"request.messages": "hello"}),                      # 11 messages not a list
        b'{"id": "big", "request": {"model": "gpt-4o", "messages": [{"role": "user", "content": "'
        + b"x" * (50 * 1024 * 1024),                                          # 12 a 50 MB line, truncated
        good_line(13),                                                       # 13 good after it all
        good_line(13),                                                       # 14 same call again: duplicate
    ]
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\r\n".join(lines) + b"\r\n")
    return path


EXPECTED_REJECTS = {
    2: "not valid JSON",
    3: "input token count is not a whole number >= 0: lots",
    4: "output token count is not a whole number >= 0: -5",
    5: "no response object",
    6: "not valid UTF-8",
    7: "expected a JSON object, got array",
    8: "expected a JSON object, got varchar",
    10: "unreadable timestamp: yesterday-ish",
    11: "request.messages is not a list",
    12: "not valid JSON",
}


@pytest.mark.slow
def test_every_bad_record_is_rejected_with_line_and_reason(con, bad_file):
    result = ingest(con, [bad_file], forced_format="openai-chat").files[0]
    assert (result.read, result.stored, result.duplicate, result.rejected) == (13, 2, 1, 10)
    assert result.read == result.stored + result.duplicate + result.rejected
    got = {r["line_no"]: r for r in rows(con, "SELECT * FROM ingest_rejects ORDER BY line_no")}
    assert {line: r["reason"] for line, r in got.items()} == EXPECTED_REJECTS
    assert all(r["path"] == str(bad_file.resolve()) for r in got.values())
    assert len(got[12]["raw"]) == 4000 and got[12]["raw"].startswith('{"id": "big"')  # capped
    assert got[3]["raw"].startswith('{"id": "good_3"')
    stored = rows(con, "SELECT native_id, source_line FROM requests ORDER BY source_line")
    assert stored == [{"native_id": "good_1", "source_line": 1}, {"native_id": "good_13", "source_line": 14}]
    counts = rows(con, "SELECT rows_read, rows_stored, rows_duplicate, rows_rejected FROM ingest_files")[0]
    assert counts == {"rows_read": 13, "rows_stored": 2, "rows_duplicate": 1, "rows_rejected": 10}


def test_detected_format_reads_the_same_file(con, bad_file):
    assert ingest(con, [bad_file]).files[0].format == "openai-chat"


def test_empty_file_reads_nothing_and_says_so(con, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    result = ingest(con, [empty]).files[0]
    assert (result.format, result.read, result.stored, result.rejected) == ("empty", 0, 0, 0)


def test_missing_path_and_unknown_format_raise_input_errors(con, tmp_path):
    with pytest.raises(InputError, match="no such file or directory"):
        ingest(con, [tmp_path / "nope.jsonl"])
    text = tmp_path / "notes.log"
    text.write_text("hello\nworld\n")
    with pytest.raises(InputError, match="cannot tell the log format") as info:
        ingest(con, [text])
    assert "--format" in info.value.hint
    with pytest.raises(ConfigError, match="unknown format"):
        ingest(con, [text], forced_format="nonsense")


@pytest.mark.parametrize(
    "args, message",
    [
        (["ingest", "does-not-exist.jsonl"], "no such file or directory: does-not-exist.jsonl"),
        (["ingest", "notes.log"], "cannot tell the log format"),
        (["ingest", "notes.log", "--format", "nonsense"], "unknown format 'nonsense'"),
        (["ingest", "notes.log", "--map", "oops"], "is not source_column=ledger_field"),
        (["ingest", "notes.log", "--sampled-fraction", "3"], "--sampled-fraction must be in (0, 1]"),
        (["spend", "--db", "missing/audit.duckdb"], "no audit database"),
    ],
)
def test_cli_errors_are_one_line_on_stderr_without_traceback(tmp_path, args, message):
    (tmp_path / "notes.log").write_text("hello\n")
    result = run_audit(*args, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and message in lines[0]
    assert "Traceback" not in result.stderr


def test_cli_prints_the_read_equation(tmp_path):
    result = run_audit("ingest", str(FIXTURES / "openai_chat_pairs.jsonl"), "--db", str(tmp_path / "a.duckdb"), "--json")
    assert result.returncode == 0, result.stderr
    assert "read 4 = stored 4 + duplicate 0 + rejected 0" in result.stderr
    assert json.loads(result.stdout)["totals"]["stored"] == 4
