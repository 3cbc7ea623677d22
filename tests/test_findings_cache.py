"""Cache detectors (``exact_cache``, ``near_duplicate_cache``) on the sample logs and on hand-built ledgers.

The sample-log ledger is built here, independently of template mining and
pricing (written elsewhere): costs at OpenAI's published list prices (written
out below), the analysis window from ``compute_window``, and one template per
ground-truth template id, with the truth's entity as its slot for the FAQ
(normalised question) and the product summaries (product id).

The hand-built ledgers put every call where the expected hits can be counted
by hand: TTL boundaries, disagreeing answers, case/punctuation variants, and
a sampled ledger whose full-traffic estimate is written out as a formula.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from conftest import FIXTURES, REPO, rows

from audit import db as audit_db
from audit.analyze import compute_window, roll_up_templates
from audit.findings import Settings, cache, near_duplicates, precompute
from audit.ingest import ingest
from audit.synth import SAMPLE_LOGS_FRACTION

TRUTH = FIXTURES / "sample_logs_truth.csv.gz"

# OpenAI list prices per 1M tokens (input, cached input, output); Batch API at half price.
PRICES_SQL = """
DELETE FROM request_costs;
INSERT INTO request_costs
SELECT r.request_id, true,
       CASE WHEN r.status = 'error' THEN 0 ELSE
         ((r.input_tokens - coalesce(r.cached_input_tokens, 0)) * p.input_price
          + coalesce(r.cached_input_tokens, 0) * p.cached_price + r.output_tokens * p.output_price) / 1e6
         * CASE WHEN r.is_batch THEN 0.5 ELSE 1.0 END END,
       NULL, NULL, NULL, NULL, CASE WHEN r.is_batch THEN 0.5 ELSE 0 END, 'openai', r.model, DATE '2024-07-18',
       'test list prices', NULL
FROM requests r JOIN (VALUES ('gpt-4o', 2.50, 1.25, 10.00), ('gpt-4o-mini', 0.15, 0.075, 0.60))
     p(model, input_price, cached_price, output_price) ON r.model = p.model;
"""

TEMPLATES_SQL = f"""
CREATE OR REPLACE TABLE truth AS SELECT * FROM read_csv('{TRUTH}', all_varchar = true);
DELETE FROM request_templates;
INSERT INTO request_templates
SELECT r.request_id, t.template_id,
       CASE WHEN t.template_id IN ('product_summary', 'faq_answer') THEN to_json([t.entity_key]) END
FROM requests r JOIN truth t USING (native_id);
DELETE FROM templates;
INSERT INTO templates (template_id, source, name, signature)
SELECT DISTINCT template_id, 'mined', template_id, template_id || ' {{slot}}' FROM request_templates;
"""


def build_sample_ledger(path: Path):
    """The sample logs, priced, windowed and templated from the ground truth."""
    con = audit_db.connect(path)
    ingest(con, [REPO / "sample_logs"], sampled_fraction=SAMPLE_LOGS_FRACTION)
    con.execute(PRICES_SQL)
    compute_window(con)
    con.execute(TEMPLATES_SQL)
    roll_up_templates(con)
    return con


def template_spend(con, template_id: str, model: str | None = None) -> float:
    """Monthly full-traffic spend, summed here independently of the detectors."""
    return con.execute(
        """SELECT sum(c.cost_usd / r.sampled_fraction * 30.0 / w.days)
           FROM requests r JOIN request_templates t USING (request_id) JOIN request_costs c USING (request_id),
                analysis_window w
           WHERE r.started_at BETWEEN w.window_start AND w.window_end AND t.template_id = ?
             AND (? IS NULL OR r.model = ?)""", [template_id, model, model]).fetchall()[0][0]


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    con = build_sample_ledger(tmp_path_factory.mktemp("cache") / "audit.duckdb")
    findings = {
        "exact": cache.detect(con, Settings()),
        "near": near_duplicates.detect(con, Settings()),
    }
    yield con, findings
    con.close()


def by_group(findings):
    return {(f.template_id, f.model): f for f in findings}


# --------------------------------------------------------------------------- sample logs


def test_sample_ledger_matches_the_scenario(sample):
    con, _ = sample
    total = con.execute("SELECT sum(spend_monthly_usd) FROM templates").fetchall()[0][0]
    assert 80_000 < total < 95_000                     # the synth's ~$87k a month
    assert 0.12 < template_spend(con, "faq_answer") / total < 0.16
    assert 0.06 < template_spend(con, "product_summary") / total < 0.08


def test_static_faq_questions_are_cacheable_for_most_of_their_spend(sample):
    con, findings = sample
    faq = by_group(findings["exact"])[("faq_answer", "gpt-4o")]
    spend = template_spend(con, "faq_answer", "gpt-4o")
    assert faq.status == "found" and faq.evidence["ttl_hours"] == 24
    # Nearly every full-traffic FAQ call repeats a prompt asked thousands of times a day; a hit counts
    # only when both answers agree, and 90% of answers are the canonical text: about 0.9² of the spend.
    assert 0.65 * spend < faq.savings_low_monthly_usd <= faq.savings_high_monthly_usd < 0.92 * spend
    assert faq.savings_high_monthly_usd <= faq.spend_affected_monthly_usd <= spend * 1.001
    estimated = faq.evidence["estimated_full_traffic"]
    measured = faq.evidence["measured_on_sample"]
    # The 0.015% sample sees a repeat only when the earlier copy was sampled too: it underestimates.
    assert measured["exact"]["measured_hit_rate"] < estimated["exact"]["hit_rate"]
    assert measured["normalised"]["measured_hit_rate"] < estimated["high"]["hit_rate"]
    # Case and punctuation variants merge: ~40 static questions, ~200 exact spellings.
    assert 35 <= measured["normalised"]["distinct_prompts"] <= 45 < measured["exact"]["distinct_prompts"]
    assert 0.75 < measured["normalised"]["response_agreement_rate"] < 0.9
    assert "business hours" in faq.evidence["top_repeated"][0]["text"]
    assert faq.evidence["template_spend_monthly_usd"] == pytest.approx(template_spend(con, "faq_answer"), rel=1e-6)


def test_cache_examples_are_real_earlier_copies_within_the_ttl(sample):
    con, findings = sample
    faq = by_group(findings["exact"])[("faq_answer", "gpt-4o")]
    assert faq.evidence["examples"]
    for example in faq.evidence["examples"]:
        pair = rows(con, """SELECT a.started_at - b.started_at AS gap, a.messages = b.messages AS same_prompt,
                                   a.response_text = b.response_text AS same_answer
                            FROM requests a, requests b WHERE a.request_id = ? AND b.request_id = ?""",
                    [example["request_id"], example["repeat_of"]])[0]
        assert pair["same_prompt"] and pair["same_answer"]
        assert timedelta(0) <= pair["gap"] < timedelta(hours=24)


def test_product_summaries_repeat_and_unique_chats_do_not(sample):
    con, findings = sample
    found = by_group(findings["exact"])
    product = found[("product_summary", "gpt-4o")]
    assert 0.55 * template_spend(con, "product_summary") < product.savings_low_monthly_usd
    assert not any(template == "support_chat" for template, _ in found)
    assert not any(template in ("refund_reasoning", "email_draft", "order_extract") for template, _ in found)


def test_near_duplicates_report_a_false_hit_rate(sample):
    _, findings = sample
    near = by_group(findings["near"])
    assert near, "support chats open with the same words for different customers"
    for finding in near.values():
        evidence = finding.evidence
        assert 0.0 <= evidence["false_hit_rate"] <= 1.0
        assert evidence["near_duplicate_pairs"] >= evidence["false_hit_pairs"]
        assert 0 <= finding.savings_low_monthly_usd <= finding.savings_high_monthly_usd
        assert evidence["threshold_jaccard"] == Settings().near_duplicate_threshold
    chat = near[("support_chat", "gpt-4o")]
    # Same opening line, another customer's order in the context: the answers differ.
    assert chat.evidence["false_hit_rate"] > 0.9
    assert chat.savings_low_monthly_usd < 0.1 * chat.savings_high_monthly_usd
    # FAQ repeats are all equal after normalisation: they belong to the exact cache, not here.
    assert ("faq_answer", "gpt-4o") not in near


def test_detectors_are_deterministic(sample):
    con, findings = sample
    again = cache.detect(con, Settings())
    assert [(f.template_id, f.model, f.savings_low_monthly_usd, f.savings_high_monthly_usd) for f in again] == [
        (f.template_id, f.model, f.savings_low_monthly_usd, f.savings_high_monthly_usd) for f in findings["exact"]]
    temp = con.execute("SELECT table_name FROM duckdb_tables() WHERE temporary AND table_name LIKE '_exact_cache%'")
    assert temp.fetchall() == []


# --------------------------------------------------------------------------- hand-built ledgers

T0 = datetime(2025, 1, 10)
SYSTEM = "You answer questions about the store."


def make_ledger(path: Path, calls: list[dict], *, window_days: float = 30.0):
    """A ledger of the given calls (template, model, at, user, response, cost, fraction, slots)."""
    con = audit_db.connect(path)
    for n, call in enumerate(calls):
        messages = json.dumps([{"role": "system", "content": call.get("system", SYSTEM)},
                               {"role": "user", "content": call["user"]}])
        request_id = call.get("id", f"r{n:04d}")
        con.execute(
            """INSERT INTO requests (request_id, native_id, file_id, source_line, source_format, started_at, model,
                                     messages, response_text, input_tokens, output_tokens, tokens_source, status,
                                     is_batch, sampled_fraction)
               VALUES (?, ?, 1, ?, 'test', ?, ?, ?, ?, 100, 20, 'logged', ?, false, ?)""",
            [request_id, request_id, n + 1, call["at"], call.get("model", "gpt-4o"), messages, call.get("response"),
             call.get("status", "ok"), call.get("fraction", 1.0)])
        con.execute("INSERT INTO request_costs (request_id, priced, cost_usd) VALUES (?, true, ?)",
                    [request_id, call.get("cost", 0.01)])
        con.execute("INSERT INTO request_templates VALUES (?, ?, ?)",
                    [request_id, call.get("template", "t1"), json.dumps(call["slots"]) if "slots" in call else None])
    con.execute("INSERT INTO templates (template_id, source, name, signature) "
                "SELECT DISTINCT template_id, 'mined', template_id, template_id FROM request_templates")
    con.execute("INSERT INTO analysis_window VALUES (?, ?, ?)",
                [datetime(2025, 1, 1), datetime(2025, 1, 1) + timedelta(days=window_days), window_days])
    return con


def hours(h: float) -> datetime:
    return T0 + timedelta(seconds=round(h * 3600))


def test_ttl_boundary_disagreement_and_normalised_variant_counted_by_hand(tmp_path):
    calls = [
        # A: hit at 23h59, the next copy comes exactly one TTL later (expired: miss), then a hit 1 h after.
        {"at": hours(0), "user": "Do you ship to Canada?", "response": "Yes, we do."},
        {"at": hours(23 + 59 / 60), "user": "Do you ship to Canada?", "response": "Yes, we do."},
        {"at": hours(47 + 59 / 60), "user": "Do you ship to Canada?", "response": "Yes, we do."},
        {"at": hours(48 + 59 / 60), "user": "Do you ship to Canada?", "response": "yes we do"},
        # B: a repeat whose answer differs is not a hit; the next one agrees (case/punctuation aside).
        {"at": hours(100), "user": "Is it in stock?", "response": "Yes."},
        {"at": hours(101), "user": "Is it in stock?", "response": "No."},
        {"at": hours(102), "user": "Is it in stock?", "response": "no"},
        # C: the same question typed differently: a hit only for the normalised variant.
        {"at": hours(200), "user": "What are your hours?", "response": "9 to 5."},
        {"at": hours(201), "user": "what are your  hours", "response": "9 to 5."},
        # D: another template, never repeated.
        {"at": hours(300), "user": "Write me a poem", "response": "Roses...", "template": "t2"},
        {"at": hours(301), "user": "Write me a song", "response": "La la...", "template": "t2"},
        # A failed call is not cached and does not serve as an earlier copy.
        {"at": hours(400), "user": "Is it in stock?", "response": None, "status": "error"},
    ]
    con = make_ledger(tmp_path / "a.duckdb", calls)
    [finding] = cache.detect(con, Settings(cache_ttl_hours=24))
    assert (finding.template_id, finding.model) == ("t1", "gpt-4o")
    measured = finding.evidence["measured_on_sample"]
    assert measured["exact"]["measured_hits"] == 3            # A at 23h59 and 48h59, B at 102h
    assert measured["exact"]["measured_repeats_rejected_disagreeing"] == 1   # B at 101h
    assert measured["normalised"]["measured_hits"] == 4       # + C
    # The whole traffic (fraction 1): the timeline is the real one; $0.01 a call, window = one month.
    assert finding.savings_low_monthly_usd == pytest.approx(0.03)
    assert finding.savings_high_monthly_usd == pytest.approx(0.04)
    assert finding.evidence["estimated_full_traffic"]["method"].startswith("measured")
    assert {e["request_id"] for e in finding.evidence["examples"]} == {"r0001", "r0003", "r0006"}
    # A longer TTL turns A's expired copy into a hit.
    [longer] = cache.detect(con, Settings(cache_ttl_hours=25))
    assert longer.evidence["measured_on_sample"]["exact"]["measured_hits"] == 4


def test_sampled_ledger_estimate_follows_the_documented_formula(tmp_path):
    p = 0.01
    day = 24.0
    calls = []
    # D asked 3 times, H twice (answers agree), E F G once; all far apart: no repeat within the TTL
    # in the sample, although each stands for 100 calls of the full traffic.
    for k, (user, copies) in enumerate([("D", 3), ("H", 2), ("E", 1), ("F", 1), ("G", 1)]):
        for c in range(copies):
            calls.append({"at": hours(k * 100 + c * 3 * day), "user": f"question {user}", "response": f"answer {user}",
                          "fraction": p})
    con = make_ledger(tmp_path / "s.duckdb", calls)
    [finding] = cache.detect(con, Settings(cache_ttl_hours=day))
    assert finding.evidence["measured_on_sample"]["exact"]["measured_hits"] == 0
    window = 30 * 24.0

    def h(scaled_calls):
        return 1 - math.exp(-scaled_calls * day / window)

    monthly_cost = 0.01 / p  # each sampled call stands for 1/p calls; the window is one month
    low = monthly_cost * (3 * h(3 / p) + 2 * h(2 / p))
    # Robbins: a prompt seen once is asked on average 2*n2/(n1*p) times; n1 = 3, n2 = 1.
    high = low + monthly_cost * 3 * h(2 * 1 / (3 * p))
    assert finding.savings_low_monthly_usd == pytest.approx(low, abs=0.01)
    assert finding.savings_high_monthly_usd == pytest.approx(high, abs=0.01)
    assert finding.evidence["estimated_full_traffic"]["prompts_seen_once_hit_share_high"] == pytest.approx(
        h(2 / (3 * p)), abs=1e-4)


def test_a_template_whose_prompts_never_repeat_is_not_credited_for_single_prompts(tmp_path):
    calls = [{"at": hours(k * 30), "user": f"unique question {k}", "response": f"a{k}", "fraction": 0.01}
             for k in range(20)]
    con = make_ledger(tmp_path / "u.duckdb", calls)
    assert cache.detect(con, Settings()) == []
    assert near_duplicates.detect(con, Settings()) == []


def test_near_duplicate_hits_and_false_hits_counted_by_hand(tmp_path):
    base = ("please tell me how long the delivery to my home address in berlin takes for a large sofa order "
            "that i placed last week with the express option and whether someone needs to be at home to sign "
            "for it when it arrives")  # 40 words, 38 shingles
    calls = [
        {"at": hours(0), "user": base, "response": "About five business days for furniture."},
        # one word appended: 3-word-shingle Jaccard 38/39 ≈ 0.97, same answer -> a true near hit
        {"at": hours(1), "user": base + " today", "response": "About five business days for furniture."},
        # another word appended (38/40 = 0.95 to the previous one), another answer -> near hit, false
        {"at": hours(2), "user": base + " please", "response": "We do not deliver sofas to Berlin."},
        # unrelated
        {"at": hours(3), "user": "what colours does the lamp come in", "response": "Black and white."},
    ]
    con = make_ledger(tmp_path / "n.duckdb", calls)
    [finding] = near_duplicates.detect(con, Settings(near_duplicate_threshold=0.9, cache_ttl_hours=24))
    evidence = finding.evidence
    assert evidence["near_duplicate_pairs"] == 3        # base~today, base~please, today~please
    assert evidence["false_hit_pairs"] == 2             # the two pairs with the Berlin answer
    assert evidence["false_hit_rate"] == pytest.approx(2 / 3, abs=1e-3)
    # Whole traffic: call 2 hits call 1 (true), call 3 hits call 2 (false).
    assert evidence["measured_on_sample"] == {"near_hits_within_ttl": 2, "true_near_hits_within_ttl": 1}
    assert finding.savings_low_monthly_usd == pytest.approx(0.01)
    assert finding.savings_high_monthly_usd == pytest.approx(0.02)


@pytest.mark.parametrize("detector", [cache, near_duplicates, precompute])
def test_usage_only_ledgers_and_missing_templates_are_not_run(tmp_path, detector):
    calls = [{"at": hours(k), "user": "Same question", "response": "Same answer"} for k in range(5)]
    con = make_ledger(tmp_path / "x.duckdb", calls)
    con.execute("DELETE FROM request_templates")
    [no_templates] = detector.detect(con, Settings())
    assert no_templates.status == "not-run" and "template" in no_templates.not_run_reason
    assert no_templates.savings_high_monthly_usd == 0 and no_templates.kind == detector.KIND
    con.execute("UPDATE requests SET messages = NULL, response_text = NULL")
    [usage_only] = detector.detect(con, Settings())
    assert usage_only.status == "not-run" and "not logged" in usage_only.not_run_reason
