"""`audit spend`: what the ledger holds, as a table on stderr or JSON on stdout."""

from __future__ import annotations

import json

from conftest import FIXTURES, REALDATA, run_audit


def test_spend_json_sums_the_ledger(tmp_path):
    db = str(tmp_path / "a.duckdb")
    assert run_audit("ingest", str(FIXTURES / "openai_chat_pairs.jsonl"), "--db", db, "--sampled-fraction", "0.5").returncode == 0
    assert run_audit("ingest", str(FIXTURES / "helicone_export.jsonl"), "--db", db).returncode == 0
    result = run_audit("spend", "--db", db, "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    totals = summary["totals"]
    by_model = {(m["model"], m["provider"]): m for m in summary["by_model"]}
    assert totals["calls"] == sum(m["calls"] for m in by_model.values())
    assert totals["input_tokens"] == sum(m["input_tokens"] for m in by_model.values())
    assert by_model[("gpt-4o", "openai")]["input_tokens"] >= 1850
    # scaled: the chat file is a 50% sample, so its 4 calls stand for 8
    chat_calls = 4
    assert totals["calls_scaled"] == totals["calls"] + chat_calls
    assert summary["ingest"]["read"] == summary["ingest"]["stored"] + summary["ingest"]["duplicate"] + summary["ingest"]["rejected"]
    assert sum(d["calls"] for d in summary["by_day"]) == totals["calls"]
    assert totals["logged_cost_usd"] is not None  # Helicone logs cost


def test_spend_table_goes_to_stderr(tmp_path):
    db = str(tmp_path / "a.duckdb")
    batch = REALDATA / "openai_batch" / "kmmlu_gpt-4o-mini_batch_output.jsonl"
    source = batch if batch.exists() else FIXTURES / "openai_chat_pairs.jsonl"
    run_audit("ingest", str(source), "--db", db)
    result = run_audit("spend", "--db", db)
    assert result.returncode == 0
    assert result.stdout == ""
    assert "By model" in result.stderr and "By day" in result.stderr
