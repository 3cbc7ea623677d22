"""Format 2: OpenAI Batch API files, on real third-party files (../shared/realdata)."""

from __future__ import annotations

import json
import shutil
from datetime import datetime

from audit.ingest import ingest
from conftest import FIXTURES, realdata, rows


def test_real_gpt4o_mini_output_alone_has_exact_counts_and_tokens(con):
    path = realdata("openai_batch", "kmmlu_gpt-4o-mini_batch_output.jsonl")
    summary = ingest(con, [path])
    assert summary.files[0].format == "openai-batch-output"
    assert summary.as_dict()["totals"]["stored"] == 200
    totals = rows(con, """SELECT count(*) AS n, sum(input_tokens) AS input, sum(output_tokens) AS output,
                                 sum(cached_input_tokens) AS cached, min(started_at) AS first, max(started_at) AS last,
                                 bool_and(is_batch) AS batch, count(DISTINCT model) AS models, any_value(model) AS model,
                                 count(*) FILTER (WHERE tokens_source = 'logged') AS logged,
                                 count(*) FILTER (WHERE messages IS NULL) AS without_prompt
                          FROM requests""")[0]
    assert totals["n"] == 200
    assert totals["input"] == 816_040          # the file's documented prompt-token total
    assert totals["output"] == 33_045
    assert totals["cached"] == 2_304
    assert totals["first"] == datetime(2025, 7, 3, 5, 9, 5)   # created 1751519345
    assert totals["last"] == datetime(2025, 7, 3, 5, 12, 13)  # created 1751519533
    assert totals["batch"] and totals["models"] == 1 and totals["model"] == "gpt-4o-mini"
    assert totals["logged"] == 200 and totals["without_prompt"] == 200  # no input file given
    first = rows(con, "SELECT * FROM requests WHERE native_id = 'task_0'")[0]
    assert first["model_logged"] == "gpt-4o-mini-2024-07-18" and first["provider"] == "openai"
    assert first["response_text"].startswith("1: 참여 관찰 연구는")
    assert json.loads(first["metadata"])["batch_request_id"] == "batch_req_68661229a8b48190bb50bedd4bd70b4c"


def test_real_groq_input_and_output_join_on_custom_id(con):
    inp = realdata("openai_batch", "groq_llama-3.1-8b_batch_input.jsonl")
    out = realdata("openai_batch", "groq_llama-3.1-8b_batch_output.jsonl")
    summary = ingest(con, [out, inp])  # order given does not matter: inputs go first
    assert [f.format for f in summary.files] == ["openai-batch-input", "openai-batch-output"]
    got = {r["native_id"]: r for r in rows(con, "SELECT * FROM requests")}
    assert sorted(got) == ["request-1", "request-2", "request-3"]
    r2 = got["request-2"]
    assert json.loads(r2["messages"])[1] == {"role": "user", "content": "Hello, how are you today?"}
    assert r2["response_text"].startswith('"Hola, ¿cómo estás hoy?"')
    assert (r2["input_tokens"], r2["output_tokens"], r2["model"]) == (55, 76, "llama-3.1-8b-instant")
    assert sum(r["output_tokens"] for r in got.values()) == 76 + 2003 + 12


def test_output_ingested_before_its_input_gets_its_prompt_later(con, tmp_path):
    out = shutil.copy(realdata("openai_batch", "groq_llama-3.1-8b_batch_output.jsonl"), tmp_path / "b_output.jsonl")
    inp = shutil.copy(realdata("openai_batch", "groq_llama-3.1-8b_batch_input.jsonl"), tmp_path / "b_input.jsonl")
    ingest(con, [out])
    assert rows(con, "SELECT count(*) AS n FROM requests WHERE messages IS NULL") == [{"n": 3}]
    ingest(con, [inp])
    assert rows(con, "SELECT count(*) AS n FROM requests WHERE messages IS NULL") == [{"n": 0}]


def test_real_input_file_alone_fills_batch_requests_only(con):
    path = realdata("openai_batch", "quickstart_gpt-4o_batchinput.jsonl")
    summary = ingest(con, [path])
    assert summary.files[0].format == "openai-batch-input"
    assert summary.files[0].read == summary.files[0].stored == 4
    assert rows(con, "SELECT count(*) AS n FROM batch_requests") == [{"n": 4}]
    assert rows(con, "SELECT count(*) AS n FROM requests") == [{"n": 0}]
    body = json.loads(rows(con, "SELECT body FROM batch_requests WHERE custom_id = 'request-1'")[0]["body"])
    assert body["messages"][0]["content"].startswith("下面内容是粗译的结果")


def test_failed_batch_lines_are_kept_as_failed_calls(con):
    summary = ingest(con, [FIXTURES / "batch_errors_output.jsonl"])
    assert summary.as_dict()["totals"] == {"read": 3, "stored": 3, "duplicate": 0, "rejected": 0, "counted": 0}
    got = {r["native_id"]: r for r in rows(con, "SELECT * FROM requests")}
    assert got["ok-1"]["status"] == "ok"
    assert got["err-null-response"]["status"] == "error"
    assert got["err-null-response"]["error_message"] == "Request exceeded token limit"
    assert (got["err-status"]["status"], got["err-status"]["status_code"]) == ("error", 400)
    assert got["err-status"]["error_message"] == "Invalid model"
