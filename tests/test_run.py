"""`audit run`: the whole pipeline on sample_logs/, then again to show it reuses what is finished.

The candidate is the fake engine (instant): the real engines have their own
tests (test_replay_vllm.py, test_replay_http.py) and `make demo` runs this same
command with SmolLM2 on vLLM.
"""

from __future__ import annotations

import json

import pytest

from audit import db as audit_db
from audit.synth import SAMPLE_LOGS_FRACTION
from conftest import REPO, rows, run_audit

pytestmark = pytest.mark.slow

FAKE = "f=fake:echo?input_price=0.15&output_price=0.6"


def table_counts(con) -> dict[str, int]:
    return {table: con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]
            for table in ("requests", "request_costs", "templates", "findings", "samples", "replays", "verdicts",
                          "decisions", "movable_spend")}


def test_run_end_to_end_then_reuse(tmp_path):
    db, out = tmp_path / "audit.duckdb", tmp_path / "reports" / "report.html"
    args = ["run", str(REPO / "sample_logs"), "--db", str(db), "--sampled-fraction", str(SAMPLE_LOGS_FRACTION),
            "-c", FAKE, "--per-template", "2", "--out", str(out), "--revenue-monthly", "150000"]
    first = run_audit(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == str(out)                 # stdout is the report's path, nothing else
    assert out.is_file() and (out.parent / "routing.yaml").is_file()
    for stage in ("ingest", "analyze", "sample", "replay", "judge", "report"):
        assert f"done   {stage}" in first.stderr or f"done  {stage}" in first.stderr, (stage, first.stderr)
    con = audit_db.connect(db, read_only=True)
    counts = table_counts(con)
    assert all(counts[t] > 0 for t in counts), counts
    sampled = con.execute("SELECT count(*) FROM samples s WHERE draw_rank <= 2").fetchall()[0][0]
    assert counts["replays"] == sampled
    con.close()

    second = run_audit(*args, "--json")
    assert second.returncode == 0, second.stderr
    for stage in ("ingest", "analyze", "sample", "replay"):
        assert f"reused {stage}" in second.stderr, (stage, second.stderr)
    assert "done   sample" not in second.stderr
    results = json.loads(second.stdout)
    assert results["report"]["path"] == str(out)
    assert all(c["run"] is None for c in results["replay"]["candidates"])    # nothing sent again
    con = audit_db.connect(db, read_only=True)
    assert table_counts(con) == counts                      # no stage duplicated a row
    assert rows(con, "SELECT count(*) AS n FROM replay_runs")[0]["n"] == 1


def test_bad_options_fail_before_any_work(tmp_path):
    db = tmp_path / "audit.duckdb"
    for args, problem in ((["-c", "x=bogus:model"], "does not start with a known engine"),
                          (["--judge", "nope"], "is not NAME=ENGINE:MODEL"),
                          (["--threshold", "1.5"], "--threshold must be in (0, 1]")):
        result = run_audit("run", str(REPO / "sample_logs"), "--db", str(db), *args)
        assert result.returncode == 1 and problem in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
        assert "ingest" not in result.stderr
    result = run_audit("run", str(tmp_path / "missing"), "--db", str(db))
    assert result.returncode == 1 and "no such file" in result.stderr
    assert not db.exists()                                  # nothing was created for a run that could not start
