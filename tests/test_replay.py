"""`audit replay` bookkeeping: candidates, prices, budget, resume, errors — through the fake engine.

The fake engine answers instantly and deterministically; the same bookkeeping
runs through real vLLM in test_replay_vllm.py and through a real
OpenAI-compatible server in test_replay_http.py.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from audit import db as audit_db
from audit.backends import (
    ReplayItem,
    ReplayResult,
    candidates_from_table,
    fit_to_context,
    parse_candidate,
    replay_max_tokens,
    replay_messages,
)
from audit.backends.fake_engine import count_words
from audit.backends.http_engine import backoff_seconds, retry_after_seconds
from audit.errors import ConfigError
from audit.pricing import PriceBook, load_price_book
from audit.replay import close_stale_runs, plan_replay, replay, resolve_candidates
from conftest import rows, run_audit

FAKE = "f=fake:echo?input_price=1&output_price=2"


def sampled_count(con, per_template: int | None = None) -> int:
    return con.execute("SELECT count(*) FROM samples WHERE sample_set_id = 'n500-s7' AND (?::BIGINT IS NULL OR draw_rank <= ?)",
                       [per_template, per_template]).fetchall()[0][0]


def run(con, *candidates: str, per_template: int | None = 2, max_cost: float = 1.0, retry_errors: bool = False,
        gpu_hourly_usd: float = 3.0):
    plan = plan_replay(con, [parse_candidate(c) for c in candidates], book=PriceBook(), per_template=per_template,
                       retry_errors=retry_errors, gpu_hourly_usd=gpu_hourly_usd)
    return replay(con, plan, max_cost_usd=max_cost)


# --------------------------------------------------------------------------- candidates


def test_candidate_syntax_and_options():
    c = parse_candidate("llama8b=vllm:/models/Meta-Llama-3-8B-Instruct?tensor_parallel_size=2&dtype=bfloat16")
    assert (c.name, c.engine, c.model) == ("llama8b", "vllm", "/models/Meta-Llama-3-8B-Instruct")
    assert c.int_option("tensor_parallel_size", 1) == 2 and c.option("dtype") == "bfloat16"
    assert c.spec == "vllm:/models/Meta-Llama-3-8B-Instruct?dtype=bfloat16&tensor_parallel_size=2"
    haiku = parse_candidate("haiku=openai:claude-3-haiku?base_url=https://gw.example/v1")
    assert haiku.option("base_url") == "https://gw.example/v1"


@pytest.mark.parametrize("text, problem", [
    ("mini", "is not NAME=ENGINE:MODEL"),
    ("mini=gpt-4o-mini", "does not start with a known engine"),
    ("mini=bedrock:claude", "does not start with a known engine"),
    ("mini=openai:", "no model"),
    ("a b=openai:gpt-4o-mini", "may hold only"),
    ("mini=openai:gpt-4o-mini?concurrency", "is not key=value"),
    ("mini=openai:gpt-4o-mini?api_key=sk-secret", "secrets are never taken as options"),
])
def test_malformed_candidates_are_one_line_errors(text, problem):
    with pytest.raises(ConfigError) as caught:
        parse_candidate(text)
    assert problem in str(caught.value) and "sk-secret" not in caught.value.one_line()


def test_candidates_from_audit_toml(tmp_path):
    path = tmp_path / "audit.toml"
    path.write_text('[candidates]\nmini = "openai:gpt-4o-mini"\n'
                    '[candidates.local]\nengine = "vllm"\nmodel = "/models/llama"\ntensor_parallel_size = 2\nenforce_eager = true\n')
    book = load_price_book(path)
    found = resolve_candidates([], book)
    assert [(c.name, c.spec) for c in found] == [
        ("mini", "openai:gpt-4o-mini"), ("local", "vllm:/models/llama?enforce_eager=true&tensor_parallel_size=2")]
    # --candidate wins over the file; nothing at all means the packaged default.
    assert [c.name for c in resolve_candidates(["x=fake:y"], book)] == ["x"]
    assert [c.spec for c in resolve_candidates([], PriceBook())] == ["vllm:smollm2"]
    with pytest.raises(ConfigError, match="given twice"):
        resolve_candidates(["x=fake:y", "x=fake:z"], book)
    with pytest.raises(ConfigError, match="must be"):
        candidates_from_table({"bad": 3}, "audit.toml")


def test_unknown_engine_option_is_refused(sampled_db):
    con = audit_db.connect(sampled_db)
    with pytest.raises(ConfigError, match="unknown option 'tensor_parallel'"):
        run(con, "f=fake:echo?tensor_parallel=2")
    # Refused before anything ran: no rows.
    assert con.execute("SELECT count(*) FROM replays").fetchall()[0][0] == 0


# --------------------------------------------------------------------------- building requests


def test_max_tokens_headroom_and_caps():
    assert replay_max_tokens(100, None) == 166            # 1.5 × 100 + 16
    assert replay_max_tokens(100, 120) == 120             # never above the original's own limit
    assert replay_max_tokens(2, None) == 19
    assert replay_max_tokens(0, None) == 16               # the floor
    assert replay_max_tokens(None, None) == 1024          # unknown output length
    assert replay_max_tokens(None, 300) == 300


def test_messages_are_plain_text_and_developer_is_system():
    messages = replay_messages('[{"role": "developer", "content": "Be brief."},'
                               ' {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}]}]')
    assert messages[0] == {"role": "system", "content": "Be brief."}
    assert messages[1]["role"] == "user" and "Hi" in messages[1]["content"] and "there" in messages[1]["content"]


def conversation(turns: int, words: int = 10) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": "sys " * 5}]
    for i in range(turns):
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": f"turn{i} " * words})
    return messages


def test_context_policy_truncates_oldest_turns_but_never_system_or_last():
    item = ReplayItem("r1", conversation(6), max_tokens=20, temperature=None, seed=1)
    fitted = fit_to_context(item, 60, count_words, "truncate")
    assert isinstance(fitted, ReplayItem)
    assert fitted.messages[0]["role"] == "system" and fitted.messages[-1]["content"].startswith("turn5")
    assert fitted.truncated_messages == 3 and count_words(fitted.messages) + 20 <= 60
    # Nothing to drop but the last message: the request is not sent.
    too_long = fit_to_context(ReplayItem("r2", conversation(3, words=200), 20, None, 1), 60, count_words, "truncate")
    assert isinstance(too_long, ReplayResult) and too_long.error_kind == "context_overflow"
    skipped = fit_to_context(ReplayItem("r3", conversation(6), 20, None, 1), 60, count_words, "skip")
    assert isinstance(skipped, ReplayResult) and skipped.error_kind == "context_overflow" and skipped.truncated_messages == 0


# --------------------------------------------------------------------------- replaying and resuming


def test_replay_stores_one_row_per_sample_and_rerun_sends_nothing(sampled_db):
    con = audit_db.connect(sampled_db)
    expected = sampled_count(con, 2)
    summary = run(con, FAKE)
    entry = summary["candidates"][0]
    assert entry["run"]["status"] == "finished" and entry["run"]["requests_ok"] == expected
    stored = rows(con, "SELECT * FROM replays")
    assert len(stored) == expected and all(r["status"] == "ok" and r["response_text"] for r in stored)
    # Cost per answer = the candidate's tokens at the options' prices ($1 in, $2 out per 1M).
    for r in stored:
        assert r["cost_usd"] == pytest.approx((r["prompt_tokens"] * 1 + r["output_tokens"] * 2) / 1e6)
    assert entry["run"]["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in stored))
    # The originals' cost of the same requests, from request_costs.
    original = con.execute("SELECT sum(c.cost_usd) FROM replays JOIN request_costs c USING (request_id)").fetchall()[0][0]
    assert entry["totals"]["original_cost_usd"] == pytest.approx(original)

    again = run(con, FAKE)
    assert again["candidates"][0]["pending"] == 0 and again["candidates"][0]["run"] is None
    assert con.execute("SELECT count(*) FROM replays").fetchall()[0][0] == expected
    # A larger prefix sends only the new requests.
    more = run(con, FAKE, per_template=3)
    assert more["candidates"][0]["pending"] == sampled_count(con, 3) - expected
    assert con.execute("SELECT count(*) FROM replays").fetchall()[0][0] == sampled_count(con, 3)


def test_original_temperature_and_max_tokens_are_sent(sampled_db):
    con = audit_db.connect(sampled_db)
    run(con, FAKE)
    for r in rows(con, """SELECT p.temperature AS sent_t, q.temperature AS orig_t, p.max_tokens, q.output_tokens, q.max_tokens AS orig_max
                          FROM replays p JOIN requests q USING (request_id)"""):
        assert r["sent_t"] == r["orig_t"]
        assert r["max_tokens"] <= max(16, (r["orig_max"] or 10**9)) and r["max_tokens"] >= min(16, r["orig_max"] or 16)


def test_transient_errors_are_stored_counted_and_retried(sampled_db):
    con = audit_db.connect(sampled_db)
    expected = sampled_count(con, 2)
    summary = run(con, FAKE + "&fail_every=4")
    run_row = summary["candidates"][0]["run"]
    failed = expected // 4
    assert run_row["requests_error"] == failed and run_row["requests_ok"] == expected - failed
    assert run_row["error_kinds"] == {"engine_error": failed}
    assert summary["candidates"][0]["totals"]["error_kinds"] == {"engine_error": failed}
    # The next run sends exactly the failed ones again.
    retry = run(con, FAKE)
    assert retry["candidates"][0]["pending"] == failed
    assert con.execute("SELECT count(*) FILTER (WHERE status = 'ok'), count(*) FROM replays").fetchall()[0] == (expected, expected)


def test_context_overflow_is_final_until_retry_errors(sampled_db):
    con = audit_db.connect(sampled_db)
    summary = run(con, FAKE + "&context_window=200&on_overflow=skip")
    overflowed = summary["candidates"][0]["run"]["error_kinds"].get("context_overflow", 0)
    assert overflowed > 0
    assert run(con, FAKE + "&context_window=200&on_overflow=skip")["candidates"][0]["pending"] == 0
    retried = run(con, FAKE, retry_errors=True)
    assert retried["candidates"][0]["pending"] == overflowed
    assert con.execute("SELECT count(*) FROM replays WHERE status = 'error'").fetchall()[0][0] == 0


def test_truncation_is_recorded(sampled_db):
    con = audit_db.connect(sampled_db)
    run(con, FAKE + "&context_window=2000")
    truncated = rows(con, "SELECT truncated_messages FROM replays WHERE status = 'ok' AND truncated_messages > 0")
    assert truncated, "support chats of 2,500+ words should have lost old turns"


def test_same_name_cannot_mean_another_model(sampled_db):
    con = audit_db.connect(sampled_db)
    run(con, FAKE)
    with pytest.raises(ConfigError, match="was replayed on n500-s7 as fake:echo"):
        run(con, "f=fake:other?input_price=1&output_price=2")


# --------------------------------------------------------------------------- prices and budget


def test_gpu_hour_pricing_is_wall_time_at_the_hourly_rate(sampled_db):
    con = audit_db.connect(sampled_db)
    summary = run(con, "g=fake:echo?delay_ms=20", gpu_hourly_usd=2.5)
    r = summary["candidates"][0]["run"]
    assert r["pricing"] == "gpu-hour" and r["tokens_per_second"] > 0
    assert r["input_price_per_m"] == pytest.approx(2.5 / (r["tokens_per_second"] * 3600) * 1e6)
    # Σ answers' cost = the run's wall time at $2.50/hour (DESIGN.md's formula, exactly).
    assert r["cost_usd"] == pytest.approx(r["wall_seconds"] / 3600 * 2.5)


def test_catalog_price_for_hosted_candidates(sampled_db):
    con = audit_db.connect(sampled_db)
    plan = plan_replay(con, [parse_candidate("mini=openai:gpt-4o-mini")], book=PriceBook(), per_template=2)
    entry = plan.as_dict()["candidates"][0]
    assert entry["pricing"] == "catalog" and entry["input_price_per_m"] == pytest.approx(0.15)
    assert entry["output_price_per_m"] == pytest.approx(0.60) and "gpt-4o-mini" in entry["price_source"]
    # Expected: the originals' logged tokens at that price, from the requests table.
    tokens = con.execute("""SELECT sum(input_tokens), sum(output_tokens) FROM samples JOIN requests USING (request_id)
                            WHERE sample_set_id = 'n500-s7' AND draw_rank <= 2""").fetchall()[0]
    assert entry["expected_cost_usd"] == pytest.approx((tokens[0] * 0.15 + tokens[1] * 0.60) / 1e6)
    assert entry["worst_case_cost_usd"] >= entry["expected_cost_usd"]
    with pytest.raises(ConfigError, match="no catalog price"):
        plan_replay(con, [parse_candidate("x=openai:my-finetune-7")], book=PriceBook())


def test_refuses_above_max_cost_and_sends_nothing(sampled_db):
    con = audit_db.connect(sampled_db)
    expensive = "e=fake:echo?input_price=500&output_price=1500"
    with pytest.raises(ConfigError, match="above --max-cost") as caught:
        run(con, expensive, max_cost=1.0)
    assert "raise --max-cost" in caught.value.one_line()
    assert con.execute("SELECT count(*) FROM replays").fetchall()[0][0] == 0
    worst = plan_replay(con, [parse_candidate(expensive)], book=PriceBook(), per_template=2).paid_worst_case_usd
    summary = run(con, expensive, max_cost=worst)
    assert summary["candidates"][0]["run"]["status"] == "finished"
    assert summary["candidates"][0]["run"]["cost_usd"] <= worst


def test_budget_stops_mid_run_when_answers_cost_more_than_estimated(sampled_db, monkeypatch):
    # Answers far longer than any estimate (a candidate that counts tokens very differently): the guard
    # stops sending once spend + the worst case of the next request would pass the budget.
    con = audit_db.connect(sampled_db)
    plan = plan_replay(con, [parse_candidate("e=fake:echo?input_price=100&output_price=100")], book=PriceBook(),
                       per_template=2)
    limit = plan.paid_worst_case_usd * 2
    from audit.backends import fake_engine

    real = fake_engine.FakeEngine.run
    padding = 5000

    def padded(self, items, on_result):
        real(self, items, lambda r: on_result(ReplayResult(**{**r.__dict__, "prompt_tokens": r.prompt_tokens + padding})))

    monkeypatch.setattr(fake_engine.FakeEngine, "run", padded)
    summary = replay(con, plan, max_cost_usd=limit)
    r = summary["candidates"][0]["run"]
    assert r["status"] == "stopped_at_budget" and 0 < r["requests_ok"] < len(plan.candidates[0].items)
    costs = [c for (c,) in con.execute("SELECT cost_usd FROM replays ORDER BY finished_at").fetchall()]
    assert sum(costs[:-1]) <= limit                      # every request was admitted within the budget
    # What was not sent stays pending for a rerun with a larger budget.
    assert summary["candidates"][0]["totals"]["pending"] > 0


# --------------------------------------------------------------------------- interruption


def test_stale_running_run_is_marked_interrupted_and_priced(sampled_db):
    con = audit_db.connect(sampled_db)
    run(con, "g=fake:echo")
    con.execute("UPDATE replay_runs SET status = 'running', tokens_per_second = NULL, cost_usd = NULL")
    con.execute("UPDATE replays SET cost_usd = NULL")
    assert close_stale_runs(con) == 1
    r = rows(con, "SELECT * FROM replay_runs")[0]
    assert r["status"] == "interrupted" and r["tokens_per_second"] > 0 and r["cost_usd"] > 0
    assert con.execute("SELECT count(*) FROM replays WHERE cost_usd IS NULL").fetchall()[0][0] == 0


def test_sigkill_mid_run_loses_only_in_flight_and_resume_pays_nothing_twice(sampled_db):
    con = audit_db.connect(sampled_db)
    total = sampled_count(con)
    con.close()
    # 500 answers at 100 ms each: killed after 8 s, well inside the run, whatever the start-up took.
    child = subprocess.Popen([sys.executable, "-m", "audit", "replay", "--db", str(sampled_db), "-c", FAKE + "&delay_ms=100",
                              "--max-cost", "100"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    time.sleep(8.0)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    con = audit_db.connect(sampled_db)
    first = rows(con, "SELECT request_id, run_id, finished_at FROM replays")
    assert 0 < len(first) < total, f"the kill should land mid-run ({len(first)} of {total} stored)"
    assert rows(con, "SELECT status FROM replay_runs")[0]["status"] == "running"
    con.close()

    resumed = run_audit("replay", "--db", str(sampled_db), "-c", FAKE, "--max-cost", "100", "--json")
    assert resumed.returncode == 0, resumed.stderr
    con = audit_db.connect(sampled_db)
    runs = rows(con, "SELECT run_id, status, requests_ok FROM replay_runs ORDER BY run_id")
    assert [r["status"] for r in runs] == ["interrupted", "finished"]
    # The second run sent only what had no answer: no finished call was sent (paid) twice.
    assert runs[1]["requests_ok"] == total - len(first)
    after = {r["request_id"]: r for r in rows(con, "SELECT request_id, run_id, finished_at FROM replays")}
    assert len(after) == total
    for r in first:
        assert after[r["request_id"]]["run_id"] == r["run_id"] and after[r["request_id"]]["finished_at"] == r["finished_at"]


# --------------------------------------------------------------------------- the command


def test_cli_dry_run_prints_the_estimate_and_sends_nothing(sampled_db):
    result = run_audit("replay", "--db", str(sampled_db), "-c", "mini=openai:gpt-4o-mini", "--dry-run", "--json")
    assert result.returncode == 0, result.stderr
    assert "dry run: nothing sent" in result.stderr and "gpt-4o-mini" in result.stderr
    import json

    plan = json.loads(result.stdout)
    assert plan["candidates"][0]["pending"] == 500 and plan["candidates"][0]["expected_cost_usd"] > 0
    con = audit_db.connect(sampled_db, read_only=True)
    assert con.execute("SELECT count(*) FROM replays").fetchall()[0][0] == 0
    assert con.execute("SELECT count(*) FROM replay_runs").fetchall()[0][0] == 0


def test_cli_errors_are_one_line(sampled_db, tmp_path):
    cases = [
        (["-c", "mini=gpt-4o-mini"], "does not start with a known engine"),
        (["-c", "mini=openai:gpt-4o-mini?api_key=sk-live-123"], "secrets are never taken"),
        (["-c", "mini=openai:gpt-4o"], "above --max-cost"),
        (["-c", "mini=openai:gpt-4o-mini", "--sample", "n9-s9"], "no sample set 'n9-s9'"),
        (["-c", "mini=openai:gpt-4o-mini", "--per-template", "0"], "--per-template must be at least 1"),
    ]
    for args, message in cases:
        result = run_audit("replay", "--db", str(sampled_db), *args)
        assert result.returncode == 1, (args, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
        assert "sk-live-123" not in result.stderr
    # A hosted candidate needs its key from the environment, and says which variable.
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    result = subprocess.run([sys.executable, "-m", "audit", "replay", "--db", str(sampled_db), "-c",
                             "mini=openai:gpt-4o-mini", "--per-template", "1"], capture_output=True, text=True, env=env)
    assert result.returncode == 1 and "$OPENAI_API_KEY is not set" in result.stderr
    # No sample drawn yet.
    empty = run_audit("replay", "--db", str(tmp_path / "empty.duckdb"), "-c", FAKE)
    assert empty.returncode == 1 and "run `audit sample` first" in empty.stderr


def test_cli_table_run(sampled_db):
    result = run_audit("replay", "--db", str(sampled_db), "-c", FAKE, "--per-template", "1")
    assert result.returncode == 0, result.stderr
    assert "This run" in result.stderr and "finished" in result.stderr and result.stdout == ""


# --------------------------------------------------------------------------- HTTP retry arithmetic


def test_retry_after_seconds_and_http_dates():
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds("0.5") == 0.5
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == pytest.approx(10.0)
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0.0
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None


def test_backoff_is_jittered_capped_and_honours_retry_after():
    rng = random.Random(1)
    waits = [backoff_seconds(attempt, 1.0, None, rng) for attempt in range(1, 12)]
    assert all(0 <= w <= min(60, 2 ** (a - 1)) for a, w in zip(range(1, 12), waits))
    assert len(set(waits)) == len(waits)                       # jittered, not lockstep
    assert backoff_seconds(1, 1.0, 30.0, rng) >= 30.0          # never sooner than the server asked
    assert backoff_seconds(1, 1.0, 10_000.0, rng) == 600.0     # but a bound on it
