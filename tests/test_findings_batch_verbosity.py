"""Batch-eligible templates and output verbosity: on the sample logs and on hand-built ledgers.

Ledgers are built with the helpers of ``test_findings_context`` (list-price
costs, ground-truth templates, a fixed 30-day window), independent of the
pricing, template-mining and task stages.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from conftest import rows
from test_findings_context import (
    WINDOW_START,
    build_ledger,
    chat,
    found,
    one,
    sample_ledger_copy,
)

from audit import db as audit_db
from audit.findings import Settings, batch, verbosity


@pytest.fixture(scope="module")
def sample_con(tmp_path_factory):
    con = audit_db.connect(sample_ledger_copy(tmp_path_factory))
    yield con
    con.close()


def realtime_spend(con, template: str) -> float:
    return rows(con, """
        SELECT sum(c.cost_usd / r.sampled_fraction * 30 / w.days) AS spend
        FROM requests r JOIN request_templates t USING (request_id) JOIN request_costs c USING (request_id),
             analysis_window w
        WHERE r.started_at BETWEEN w.window_start AND w.window_end AND t.template_id = ? AND NOT r.is_batch
              AND r.status = 'ok'""", [template])[0]["spend"]


# --------------------------------------------------------------------------- batch: sample logs


def test_offline_templates_of_the_sample_are_batch_eligible(sample_con):
    findings = batch.detect(sample_con, Settings())
    templates = {f.template_id for f in found(findings)}
    assert {"product_summary", "ticket_classify"} <= templates
    # Somebody waits for a chat reply or an FAQ answer.
    assert not templates & {"support_chat", "faq_answer", "email_draft", "code_snippet"}

    summary = one(findings, "product_summary")
    assert summary.spend_affected_monthly_usd == pytest.approx(realtime_spend(sample_con, "product_summary"))
    assert summary.savings_high_monthly_usd == pytest.approx(0.5 * summary.spend_affected_monthly_usd)
    # Every product-summary call carries a user id: only moderate (task-type) evidence, so low is 0.
    assert summary.evidence["user_id_share"] == 1.0 and summary.savings_low_monthly_usd == 0
    assert 4_000 < summary.spend_affected_monthly_usd < 9_000


def test_only_the_real_time_rest_of_ticket_classification_counts(sample_con):
    f = one(batch.detect(sample_con, Settings()), "ticket_classify")
    assert 0.6 < f.evidence["already_batched_share"] < 0.8          # ~70% in the nightly Batch API jobs
    realtime = realtime_spend(sample_con, "ticket_classify")
    assert f.spend_affected_monthly_usd == pytest.approx(realtime)
    assert f.spend_affected_monthly_usd < f.evidence["template_spend_monthly_usd"]
    assert f.savings_high_monthly_usd == pytest.approx(0.5 * realtime)
    batched = rows(sample_con, """SELECT count(*) AS n FROM requests r JOIN request_templates t USING (request_id)
                                  WHERE t.template_id = 'ticket_classify' AND r.is_batch""")[0]["n"]
    assert batched > 0 and not set(f.evidence["example_request_ids"]) & {
        r["request_id"] for r in rows(sample_con, "SELECT request_id FROM requests WHERE is_batch")}
    assert "already" in f.action


# --------------------------------------------------------------------------- batch: hand-built


def batch_ledger(con, *, ledger_has_user_ids: bool = True) -> None:
    requests = []
    for i in range(30):  # a nightly job: no ids, all at 02:00-02:59 UTC
        requests.append({"id": f"n{i}", "template": "nightly", "input": 1000, "output": 100,
                         "started_at": WINDOW_START + timedelta(days=1 + i % 20, hours=2, minutes=i)})
    for i in range(30):  # an app feature: users, spread over the day
        requests.append({"id": f"w{i}", "template": "widget", "input": 1000, "output": 100,
                         "user_id": f"u{i}" if ledger_has_user_ids else None,
                         "started_at": WINDOW_START + timedelta(days=1, hours=i % 24, minutes=i)})
    for i in range(30):  # a classification template with users, half already batched
        requests.append({"id": f"c{i}", "template": "tickets", "input": 500, "output": 2, "is_batch": i % 2 == 0,
                         "user_id": f"u{i}" if ledger_has_user_ids and i % 2 else None,
                         "started_at": WINDOW_START + timedelta(days=2, hours=i % 24)})
    for i in range(10):  # no ids, but a chat: someone is waiting
        requests.append({"id": f"h{i}", "template": "helpdesk", "messages": chat(3), "input": 900, "output": 60,
                         "started_at": WINDOW_START + timedelta(days=3, hours=i)})
    build_ledger(con, requests, {"nightly": None, "widget": None, "tickets": "classification", "helpdesk": "chat"})


def test_batch_evidence_strength_sets_low_and_high(con):
    batch_ledger(con)
    findings = batch.detect(con, Settings())
    assert sorted(f.template_id for f in found(findings)) == ["nightly", "tickets"]
    # gpt-4o: 1000 x 2.5e-6 + 100 x 10e-6 = 3.5e-3 per call, 30 calls x 1000 a month.
    nightly = one(findings, "nightly")
    assert nightly.spend_affected_monthly_usd == pytest.approx(30 * 1000 * 3.5e-3)
    assert nightly.savings_low_monthly_usd == nightly.savings_high_monthly_usd == pytest.approx(15 * 1000 * 3.5e-3)
    assert nightly.evidence["evidence_strength"] == "strong"
    assert nightly.evidence["busiest_hours_share"] == 1.0 and nightly.evidence["user_id_share"] == 0.0
    # tickets: the 15 real-time calls (500 x 2.5e-6 + 2 x 10e-6 = 1.27e-3) count, at half price; moderate only.
    tickets = one(findings, "tickets")
    assert tickets.requests_affected == 15
    assert tickets.spend_affected_monthly_usd == pytest.approx(15 * 1000 * 1.27e-3)
    assert tickets.savings_high_monthly_usd == pytest.approx(0.5 * 15 * 1000 * 1.27e-3)
    assert tickets.savings_low_monthly_usd == 0
    assert tickets.evidence["already_batched_share"] == pytest.approx(0.5)


def test_missing_user_ids_prove_nothing_when_the_ledger_has_none(con):
    batch_ledger(con, ledger_has_user_ids=False)
    findings = batch.detect(con, Settings())
    # The nightly job still shows by its arrival hours; the widget has no evidence left.
    assert sorted(f.template_id for f in found(findings)) == ["nightly", "tickets"]
    nightly = one(findings, "nightly")
    assert nightly.savings_low_monthly_usd > 0
    assert not any("user or session id" in reason for reason in nightly.evidence["reasons"])


def test_batch_discount_table():
    assert batch.batch_discount("openai") == 0.5
    assert batch.batch_discount("anthropic") == 0.5
    assert batch.batch_discount("some-self-hosted-box") == 0.0
    assert batch.batch_discount(None) == 0.0


def test_batch_not_run_without_templates(con):
    batch_ledger(con)
    con.execute("DELETE FROM request_templates")
    findings = batch.detect(con, Settings())
    assert [f.status for f in findings] == ["not-run"] and findings[0].savings_high_monthly_usd == 0


# --------------------------------------------------------------------------- verbosity


def test_no_verbosity_on_the_sample(sample_con):
    # The generator's answers keep to their task's length: nothing is flagged.
    assert found(verbosity.detect(sample_con, Settings())) == []


def verbosity_ledger(con) -> None:
    requests = []
    for i in range(20):  # FAQ: 18 answers of 50 tokens, 2 of 300; max_tokens never set
        requests.append({"id": f"f{i}", "template": "faq", "input": 400, "output": 300 if i < 2 else 50})
    for i in range(20):  # a classifier that explains its label: 40 tokens each
        requests.append({"id": f"c{i}", "template": "classify", "input": 300, "output": 40, "max_tokens": 5000})
    for i in range(20):  # e-mail drafts: one at 2.5x the median is within a long task's range
        requests.append({"id": f"e{i}", "template": "email", "input": 300, "output": 500 if i == 0 else 200,
                         "max_tokens": 600})
    for i in range(10):  # too few calls to know the template's normal length
        requests.append({"id": f"x{i}", "template": "rare", "input": 300, "output": 2000 if i == 0 else 50})
    build_ledger(con, requests, {"faq": "faq_lookup", "classify": "classification", "email": "email_drafting",
                                 "rare": "faq_lookup"})


def test_verbose_outliers_and_explained_labels_by_hand(con):
    verbosity_ledger(con)
    findings = verbosity.detect(con, Settings())
    assert sorted(f.template_id for f in found(findings)) == ["classify", "faq"]
    # FAQ: median 50, short task -> verbose above 2 x 50 = 100 tokens: the two 300-token answers.
    # low = 2 x (300 - 100) tokens, high = 2 x (300 - 50), at 10e-6 per output token, x 1000 a month.
    faq = one(findings, "faq")
    assert faq.requests_affected == 2
    assert faq.savings_low_monthly_usd == pytest.approx(1000 * 2 * 200 * 10e-6)
    assert faq.savings_high_monthly_usd == pytest.approx(1000 * 2 * 250 * 10e-6)
    assert faq.evidence["output_tokens_p50"] == 50
    assert set(faq.evidence["example_request_ids"]) == {"f0", "f1"}
    assert faq.evidence["max_tokens_unset_or_maximum_share"] == 1.0 and "max_tokens" in faq.action
    # Classification: no outlier (low 0), but a label needs ~10 tokens, not 40: 20 x 30 tokens (high).
    classify = one(findings, "classify")
    assert classify.savings_low_monthly_usd == 0
    assert classify.savings_high_monthly_usd == pytest.approx(1000 * 20 * 30 * 10e-6)
    assert classify.requests_affected == 20


def test_verbosity_prices_batch_outputs_at_the_batch_price(con):
    verbosity_ledger(con)
    con.execute("UPDATE requests SET is_batch = true WHERE native_id LIKE 'f%'")
    from test_findings_context import price_requests

    price_requests(con)
    faq = one(verbosity.detect(con, Settings()), "faq")
    assert faq.savings_high_monthly_usd == pytest.approx(0.5 * 1000 * 2 * 250 * 10e-6)


def test_verbosity_not_run_without_output_tokens(con):
    verbosity_ledger(con)
    con.execute("UPDATE requests SET output_tokens = NULL")
    findings = verbosity.detect(con, Settings())
    assert [f.status for f in findings] == ["not-run"] and "output" in findings[0].not_run_reason
