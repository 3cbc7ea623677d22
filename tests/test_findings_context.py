"""Context bloat and unused prompt caching: on the sample logs and on hand-built ledgers.

The tables the detectors read (``request_costs``, ``analysis_window``,
``templates``, ``request_templates``) are filled here with plain SQL from list
prices and the generator's ground truth, so these tests do not depend on the
pricing, template-mining or task stages. The helpers are shared with
``test_findings_batch_verbosity.py``.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from conftest import FIXTURES, REPO, rows

from audit import db as audit_db
from audit.analyze import compute_window
from audit.findings import Settings, context_bloat, prompt_caching
from audit.ingest import ingest
from audit.synth import SAMPLE_LOGS_FRACTION

# USD per 1M tokens (input, cached input, output): OpenAI's and Anthropic's list
# prices, written here independently of the code under test.
LIST_PRICES = {
    "gpt-4o": (2.50, 1.25, 10.00),
    "gpt-4o-mini": (0.15, 0.075, 0.60),
    "claude-sonnet-4": (3.00, 0.30, 15.00),
}
WINDOW_START = datetime(2025, 6, 1)


# --------------------------------------------------------------------------- shared ledger helpers


def price_requests(con) -> None:
    """request_costs at list price (Batch API calls half price, failed calls free), in SQL."""
    values = ", ".join(f"('{m}', {i}, {c}, {o})" for m, (i, c, o) in LIST_PRICES.items())
    con.execute(f"CREATE OR REPLACE TEMP TABLE test_prices AS SELECT * FROM (VALUES {values}) p(model, p_in, p_cached, p_out)")
    con.execute("DELETE FROM request_costs")
    con.execute(
        """INSERT INTO request_costs
        WITH c AS (
            SELECT r.request_id, p.model AS price_model, r.provider,
                   CASE WHEN r.is_batch THEN 0.5 ELSE 0.0 END AS discount,
                   CASE WHEN r.status = 'ok' THEN 1.0 ELSE 0.0 END AS billed,
                   (r.input_tokens - coalesce(r.cached_input_tokens, 0) - coalesce(r.cache_write_tokens, 0))
                       * p.p_in / 1e6 AS uncached,
                   coalesce(r.cached_input_tokens, 0) * p.p_cached / 1e6 AS cached,
                   r.output_tokens * p.p_out / 1e6 AS output
            FROM requests r LEFT JOIN test_prices p ON p.model = r.model)
        SELECT request_id, price_model IS NOT NULL,
               (uncached + cached + output) * (1 - discount) * billed,
               uncached * (1 - discount) * billed, cached * (1 - discount) * billed, 0.0,
               output * (1 - discount) * billed, discount, provider, price_model, DATE '2024-08-06',
               'test list prices', CASE WHEN price_model IS NULL THEN 'model not in the test prices' END
        FROM c"""
    )


def build_sample_ledger(path: Path) -> None:
    """The sample logs ingested, priced, and templated from the ground truth."""
    con = audit_db.connect(path)
    try:
        ingest(con, [REPO / "sample_logs"], sampled_fraction=SAMPLE_LOGS_FRACTION)
        price_requests(con)
        compute_window(con)
        truth = FIXTURES / "sample_logs_truth.csv.gz"
        con.execute(f"CREATE TEMP TABLE truth AS SELECT * FROM read_csv('{truth}', all_varchar = true)")
        con.execute(
            """INSERT INTO templates (template_id, source, name, signature, task_type, tier)
               SELECT DISTINCT template_id, 'mined', template_id, template_id || ' {text}', task_type, tier FROM truth"""
        )
        con.execute(
            "INSERT INTO request_templates SELECT r.request_id, t.template_id, NULL FROM requests r JOIN truth t USING (native_id)"
        )
    finally:
        con.close()


def sample_ledger_copy(tmp_path_factory) -> Path:
    """A fresh copy of the priced sample ledger (built once per test session)."""
    built = tmp_path_factory.getbasetemp() / "findings_sample_ledger.duckdb"
    if not built.exists():
        build_sample_ledger(built)
    copy = tmp_path_factory.mktemp("findings") / "audit.duckdb"
    shutil.copyfile(built, copy)
    return copy


def build_ledger(con, requests: list[dict], task_types: dict[str, str | None], *, days: float = 30.0) -> None:
    """A hand-built ledger: requests (defaults filled in), list-price costs, templates and a fixed window.

    With the window's 30 days and ``sampled_fraction`` f, every request counts 1/f per month.
    """
    columns = ["request_id", "native_id", "file_id", "source_line", "source_format", "started_at", "provider",
               "model_logged", "model", "user_id", "session_id", "messages", "response_text", "input_tokens",
               "cached_input_tokens", "cache_write_tokens", "output_tokens", "reasoning_tokens", "tokens_source",
               "status", "is_batch", "max_tokens", "sampled_fraction"]
    records = []
    for line, r in enumerate(requests, 1):
        messages = r.get("messages")
        records.append((
            r["id"], r["id"], 1, line, "test", r.get("started_at", WINDOW_START + timedelta(days=1, minutes=line)),
            r.get("provider", "openai"), r.get("model", "gpt-4o"), r.get("model", "gpt-4o"), r.get("user_id"),
            r.get("session_id"), json.dumps(messages) if messages is not None else None, r.get("response"),
            r.get("input", 100), r.get("cached", 0), r.get("written", 0), r.get("output", 10), r.get("reasoning", 0),
            "logged", r.get("status", "ok"), r.get("is_batch", False), r.get("max_tokens"),
            r.get("sampled_fraction", 0.001),
        ))
    con.executemany(f"INSERT INTO requests ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})", records)
    price_requests(con)
    con.execute("DELETE FROM analysis_window")
    con.execute("INSERT INTO analysis_window VALUES (?, ?, ?)", [WINDOW_START, WINDOW_START + timedelta(days=days), days])
    con.executemany("INSERT INTO templates (template_id, source, name, signature, task_type) VALUES (?, 'mined', ?, ?, ?)",
                    [(t, t, t, task) for t, task in task_types.items()])
    con.executemany("INSERT INTO request_templates VALUES (?, ?, NULL)", [(r["id"], r["template"]) for r in requests])


def found(findings, template: str | None = None) -> list:
    return [f for f in findings if f.status == "found" and (template is None or f.template_id == template)]


def one(findings, template: str):
    matches = found(findings, template)
    assert len(matches) == 1, [(f.template_id, f.model, f.status, f.not_run_reason) for f in findings]
    return matches[0]


def chat(turns: int, chars: int = 100) -> list[dict]:
    """A system prompt and ``turns`` user questions with the replies between them, every message ``chars`` long."""
    messages = [{"role": "system", "content": "s" * chars}]
    for turn in range(1, turns + 1):
        messages.append({"role": "user", "content": "u" * chars})
        if turn < turns:
            messages.append({"role": "assistant", "content": "a" * chars})
    return messages


# --------------------------------------------------------------------------- sample logs


@pytest.fixture(scope="module")
def sample_con(tmp_path_factory):
    con = audit_db.connect(sample_ledger_copy(tmp_path_factory))
    yield con
    con.close()


def test_sample_bill_is_the_scenario_bill(sample_con):
    # The premise of the numbers below: ~$87k a month, ~73% of it the chat.
    spend = {r["template_id"]: r["spend"] for r in rows(sample_con, """
        SELECT t.template_id, sum(c.cost_usd / r.sampled_fraction * 30 / w.days) AS spend
        FROM requests r JOIN request_templates t USING (request_id) JOIN request_costs c USING (request_id),
             analysis_window w
        WHERE r.started_at BETWEEN w.window_start AND w.window_end GROUP BY ALL""")}
    total = sum(spend.values())
    assert 78_000 < total < 96_000
    assert 0.65 < spend["support_chat"] / total < 0.80


def test_context_bloat_found_on_the_support_chat_with_cache_aware_dollars(sample_con):
    findings = context_bloat.detect(sample_con, Settings())
    assert [f.template_id for f in found(findings)] == ["support_chat"]  # single-turn templates have no history
    f = one(findings, "support_chat")
    e = f.evidence
    assert f.model == "gpt-4o"
    assert 3 <= e["median_turns"] <= 6 and 8 <= e["p90_turns"] <= 16
    assert e["input_output_ratio"] > 40          # ~4-8k tokens in for ~60 out
    assert 0.4 < e["history_share_of_input"] < 0.8
    assert 0.3 < e["history_cached_share"] < 0.7  # much of the history was a cache hit
    template_spend = e["template_spend_monthly_usd"]
    assert 55_000 < template_spend < 70_000
    # Keeping 4 turns saves a real but partial slice; a summary saves more; neither most of the bill.
    assert 0.05 * template_spend < f.savings_low_monthly_usd < 0.35 * template_spend
    assert f.savings_low_monthly_usd < f.savings_high_monthly_usd < 0.6 * template_spend
    # Cache-aware: pricing the removed history as if all of it were uncached input would claim more.
    naive = e["tokens_removed_monthly_low"] * LIST_PRICES["gpt-4o"][0] / 1e6
    assert f.savings_low_monthly_usd < 0.9 * naive
    assert e["last_k_turns_cache_loss_monthly_usd"] > 0
    assert e["tokens_removed_monthly_low"] < e["tokens_removed_monthly_high"] < e["history_tokens_monthly"]
    assert f.spend_affected_monthly_usd <= template_spend + 0.01
    ids = [r["request_id"] for r in rows(sample_con, "SELECT request_id FROM request_templates WHERE template_id = 'support_chat'")]
    assert e["example_request_ids"] and set(e["example_request_ids"]) <= set(ids)


def test_history_tokens_from_character_share_are_close_to_exact_counts(sample_con):
    """The detector's shortcut (input tokens × character share) against o200k counts of the same messages."""
    from audit.tokens import get_encoding

    encoding = get_encoding("o200k_base")
    estimated = exact = 0.0
    for r in rows(sample_con, """SELECT r.messages, r.input_tokens FROM requests r JOIN request_templates t USING (request_id)
                                 WHERE t.template_id = 'support_chat' AND r.status = 'ok' AND r.tokens_source = 'logged'"""):
        messages = json.loads(r["messages"])
        replies = [i for i, m in enumerate(messages) if m["role"] == "assistant" and i < len(messages) - 1]
        if not replies:
            continue
        chars = [len(m["content"]) for m in messages]
        estimated += r["input_tokens"] * sum(chars[1:replies[-1] + 1]) / sum(chars)
        exact += sum(3 + len(encoding.encode(m["role"])) + len(encoding.encode(m["content"]))
                     for m in messages[1:replies[-1] + 1])
    assert exact > 0
    assert abs(estimated / exact - 1) < 0.05


def test_prompt_caching_on_the_sample_is_about_the_hit_rate(sample_con):
    findings = prompt_caching.detect(sample_con, Settings())
    # Only the chat has prompts of >= 1024 tokens; ~5% of its calls miss the warm system prompt.
    assert [f.template_id for f in found(findings)] == ["support_chat"]
    f = one(findings, "support_chat")
    e = f.evidence
    assert 0.85 < e["cache_hit_rate"] < 0.99
    assert 1024 <= e["shared_prefix_tokens_median"] < 1300   # the static system prompt, not the session's context
    assert e["cache_price_ratio"] == pytest.approx(0.5) and e["cache_price_ratio_source"].startswith("measured")
    assert "automatically" in f.action and "hit rate" in f.action
    assert f.savings_low_monthly_usd == 0  # no template of this ledger does better
    # high = every cold call reads 1024 prefix tokens at half price instead of full.
    assert f.savings_high_monthly_usd == pytest.approx(f.requests_affected_monthly * 1024 * 1.25 / 1e6, rel=0.13)
    assert f.savings_high_monthly_usd < 0.05 * e["template_spend_monthly_usd"]


# --------------------------------------------------------------------------- hand-built: k-turn arithmetic


def turn_ledger(con) -> None:
    """Four conversations of 100-character messages whose input tokens equal their characters.

    r6: 6 turns, nothing cached.  r6c: 6 turns, the first 700 tokens were a cache hit.
    r3: 3 turns.  r1: 1 turn.  A gpt-4o-mini template supplies the summariser's prices,
    and a fixed few-shot template (always 3 turns) must not count as history.
    """
    requests = [
        {"id": "r6", "template": "chat", "messages": chat(6), "input": 1200, "output": 10},
        {"id": "r6c", "template": "chat", "messages": chat(6), "input": 1200, "cached": 700, "output": 10},
        {"id": "r3", "template": "chat", "messages": chat(3), "input": 600, "output": 10},
        {"id": "r1", "template": "chat", "messages": chat(1), "input": 200, "output": 10},
        {"id": "mini", "template": "tagger", "model": "gpt-4o-mini", "messages": chat(1), "input": 1000, "output": 100},
        {"id": "fs1", "template": "fewshot", "messages": chat(3), "input": 600, "output": 10},
        {"id": "fs2", "template": "fewshot", "messages": chat(3), "input": 600, "output": 10},
    ]
    build_ledger(con, requests, {"chat": "chat", "tagger": "classification", "fewshot": "classification"})


def test_last_k_turns_and_running_summary_by_hand(con):
    turn_ledger(con)
    findings = context_bloat.detect(con, Settings(context_keep_turns=4))
    assert [f.template_id for f in found(findings)] == ["chat"]
    f = one(findings, "chat")
    # Each request counts 1 / 0.001 = 1000 per month. Input price 2.5e-6, cache 1.25e-6 per token.
    # r6: history = 10 messages = 1000 tokens; last 4 turns drop turns 1-2 = 400 uncached tokens: 1.0e-3.
    # r6c: the dropped [100, 500) was cached: 400 x 1.25e-6 = 0.5e-3, and the kept history's
    #      cached [500, 700) becomes uncached: -200 x 1.25e-6 = -0.25e-3; net 0.25e-3.
    # r3, r1: 4 turns or fewer, nothing dropped.
    assert f.savings_low_monthly_usd == pytest.approx(1000 * (1.0e-3 + 0.25e-3))
    assert f.evidence["last_k_turns_cache_loss_monthly_usd"] == pytest.approx(1000 * 0.25e-3)
    assert f.evidence["tokens_removed_monthly_low"] == 1000 * (400 + 400)
    # Running summary: history -> 300 new uncached tokens, written by gpt-4o-mini
    # ((300 + history / earlier turns) in at 0.15e-6, 300 out at 0.6e-6).
    # r6:  1000 x 2.5e-6 - 300 x 2.5e-6 - (500 x 0.15e-6 + 300 x 0.6e-6)                  = 1.495e-3
    # r6c: 600 x 1.25e-6 + 400 x 2.5e-6 - 300 x 2.5e-6 - (500 x 0.15e-6 + 300 x 0.6e-6)   = 0.745e-3
    # r3:  400 x 2.5e-6 - 300 x 2.5e-6 - (500 x 0.15e-6 + 300 x 0.6e-6)                   = -0.005e-3
    assert f.evidence["running_summary_savings_monthly_usd"] == pytest.approx(1000 * 2.235e-3, abs=0.01)
    assert f.savings_high_monthly_usd == pytest.approx(1000 * 2.235e-3)
    assert f.evidence["summariser_cost_monthly_usd"] == pytest.approx(1000 * 3 * 0.255e-3, abs=0.01)
    assert f.evidence["tokens_removed_monthly_high"] == 1000 * (700 + 700 + 100)
    assert f.requests_affected == 3 and f.requests_affected_monthly == pytest.approx(3000)
    assert f.evidence["median_turns"] == 3 and f.evidence["max_turns"] == 6


def test_keeping_fewer_turns_removes_more(con):
    turn_ledger(con)
    f = one(context_bloat.detect(con, Settings(context_keep_turns=2)), "chat")
    # r6: turns 1-4 = 800 uncached tokens = 2.0e-3.
    # r6c: dropped [100, 900): 600 cached + 200 uncached = 0.75e-3 + 0.5e-3; kept [900, 1100) was not cached.
    # r3: turn 1 = 200 uncached tokens = 0.5e-3.
    assert f.savings_low_monthly_usd == pytest.approx(1000 * (2.0e-3 + 1.25e-3 + 0.5e-3))


def test_context_bloat_says_why_it_cannot_run(con):
    build_ledger(con, [{"id": "u1", "template": "t", "messages": None, "input": 500}], {"t": None})
    findings = context_bloat.detect(con, Settings())
    assert len(findings) == 1 and findings[0].status == "not-run"
    assert "messages were not logged" in findings[0].not_run_reason
    assert findings[0].savings_high_monthly_usd == 0


def test_no_templates_is_not_run_rather_than_zero(con):
    build_ledger(con, [{"id": "u1", "template": "t", "messages": chat(3), "input": 500}], {"t": None})
    con.execute("DELETE FROM request_templates")
    for detector in (context_bloat, prompt_caching):
        findings = detector.detect(con, Settings())
        assert [f.status for f in findings] == ["not-run"] and "template" in findings[0].not_run_reason


# --------------------------------------------------------------------------- hand-built: prompt caching


def prefix_messages(system: str) -> list[dict]:
    return [{"role": "system", "content": system}, {"role": "user", "content": "q" * 500}]


def caching_ledger(con) -> None:
    """Input tokens equal characters: a 2,000-character system prompt is 2,000 tokens (1,920 cacheable)."""
    system = "S" * 2000
    requests = []
    # 'long': 8 hits, 2 misses (80%). 'long3': 9 hits, 1 miss (90%).
    for template, hits, misses in (("long", 8, 2), ("long3", 9, 1)):
        for i in range(hits + misses):
            requests.append({"id": f"{template}-{i}", "template": template, "messages": prefix_messages(system),
                             "input": 2500, "cached": 1920 if i < hits else 0, "output": 50})
    # 'dated': the system prompt starts with the date: nothing is shared, nothing cacheable.
    for i in range(10):
        requests.append({"id": f"dated-{i}", "template": "dated", "messages": prefix_messages(f"Today is 2025-06-{i + 1:02d}. " + system),
                         "input": 2520, "cached": 0, "output": 50})
    # 'claude': explicit caching never turned on.
    for i in range(10):
        requests.append({"id": f"claude-{i}", "template": "claude", "provider": "anthropic", "model": "claude-sonnet-4",
                         "messages": prefix_messages(system), "input": 2500, "cached": 0, "output": 50})
    # 'short': under 1024 tokens, never cacheable.
    for i in range(10):
        requests.append({"id": f"short-{i}", "template": "short", "messages": prefix_messages("s" * 300),
                         "input": 800, "cached": 0, "output": 50})
    build_ledger(con, requests, {t: None for t in ("long", "long3", "dated", "claude", "short")})


def test_cold_requests_on_a_shared_prefix_by_hand(con):
    caching_ledger(con)
    findings = prompt_caching.detect(con, Settings())
    assert sorted(f.template_id for f in found(findings)) == ["claude", "long", "long3"]
    long, long3, claude = one(findings, "long"), one(findings, "long3"), one(findings, "claude")
    # A miss reads 1,920 prefix tokens at 2.5e-6 that a hit reads at 1.25e-6 (ratio measured on the hits).
    per_miss = 1920 * 2.5e-6 * 0.5
    assert long.savings_high_monthly_usd == pytest.approx(1000 * 2 * per_miss)
    assert long3.savings_high_monthly_usd == pytest.approx(1000 * 1 * per_miss)
    # low: 'long' could reach the 90% 'long3' already gets: half of its misses, (0.9 - 0.8) / (1 - 0.8).
    assert long.savings_low_monthly_usd == pytest.approx(0.5 * long.savings_high_monthly_usd)
    assert long3.savings_low_monthly_usd == 0  # already the best
    assert long.evidence["cache_hit_rate"] == pytest.approx(0.8)
    assert long.evidence["shared_prefix_tokens_median"] == 2000
    assert long.requests_affected == 2 and "prompt_cache_key" in long.action
    # Anthropic: no hits to measure, so the 0.1 list ratio; a cache write (1.25x) per 5 minutes of the month.
    gross = 1000 * 10 * 1920 * 3e-6 * 0.9
    premium = 8640 * 0.25 * 1920 * 3e-6
    assert claude.savings_low_monthly_usd == pytest.approx(gross - premium)
    assert claude.savings_high_monthly_usd == pytest.approx(gross - premium)
    assert claude.evidence["cache_price_ratio_source"] == "list-price table"
    assert "cache_control" in claude.action


def test_too_little_traffic_to_keep_a_cache_warm(con):
    caching_ledger(con)
    con.execute("UPDATE requests SET sampled_fraction = 0.1")  # 10 calls -> 100 a month, far from one per 5 minutes
    assert found(prompt_caching.detect(con, Settings())) == []
