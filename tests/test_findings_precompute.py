"""``precompute``: a template run again and again over a small set of entities.

On the sample logs (ledger built as in ``test_findings_cache``: list prices,
the truth's templates, product id / normalised question as the slot) the
product summaries over the fixed catalog of 200 products must be found; on a
hand-built ledger every figure is counted by hand.
"""

from __future__ import annotations

import pytest
from test_findings_cache import build_sample_ledger, hours, make_ledger, template_spend

from audit.findings import Settings, precompute


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    con = build_sample_ledger(tmp_path_factory.mktemp("precompute") / "audit.duckdb")
    yield con, {(f.template_id, f.model): f for f in precompute.detect(con, Settings())}
    con.close()


def test_product_summaries_over_200_products_are_precomputable(sample):
    con, found = sample
    product = found[("product_summary", "gpt-4o")]
    spend = template_spend(con, "product_summary")
    evidence = product.evidence
    # 200 products in the catalog; the sample sees ~160 of them, Chao1 fills in the unseen ones.
    assert evidence["distinct_entities_in_sample"] < 200
    assert 150 <= evidence["distinct_entities_estimated"] <= 260
    # ~3.1M calls a month over ~200 products: hundreds of calls per product per day.
    assert 300 < evidence["calls_per_entity_per_day"] < 900
    # 88% of summaries are the product's canonical text; the rest are light rewordings.
    assert 0.75 < evidence["agreement_rate"] < 0.92
    assert product.spend_affected_monthly_usd == pytest.approx(spend, rel=1e-6)
    assert 0.7 * spend < product.savings_low_monthly_usd <= product.savings_high_monthly_usd <= spend
    # Regenerating ~200 summaries daily costs a few dollars a month, against thousands now.
    assert evidence["regeneration_cost_monthly_usd_low"] < 0.01 * spend
    assert evidence["template_spend_monthly_usd"] == pytest.approx(spend, rel=1e-6)
    assert evidence["top_entities"][0]["slots"].startswith('["P-')


def test_faq_questions_are_a_small_set_too_and_unique_texts_are_not(sample):
    _, found = sample
    faq = found[("faq_answer", "gpt-4o")]
    assert 35 <= faq.evidence["distinct_entities_estimated"] <= 45
    assert faq.evidence["agreement_rate"] > 0.85
    for template in ("support_chat", "refund_reasoning", "email_draft", "order_extract", "code_snippet"):
        assert not any(t == template for t, _ in found), template


def test_precompute_figures_counted_by_hand(tmp_path):
    # Whole traffic (fraction 1), one 30-day month: 5 products x 60 calls at $0.01 = $3.00 a month.
    # Product P1's answer differs 6 times out of 60; the others always give the same answer.
    calls = []
    for product in range(5):
        for k in range(60):
            answer = "summary B" if product == 0 and k % 10 == 9 else f"summary of P{product}"
            calls.append({"at": hours(product + k * 7), "user": f"Summarise product P{product}", "response": answer,
                          "slots": [f"P{product}"], "template": "cards"})
    # An unrelated template of unique texts: never a small set.
    calls += [{"at": hours(k * 1.5), "user": f"email {k}", "response": f"draft {k}", "slots": [f"email {k}"],
               "template": "emails"} for k in range(300)]
    con = make_ledger(tmp_path / "p.duckdb", calls)
    [finding] = precompute.detect(con, Settings())
    assert finding.template_id == "cards"
    evidence = finding.evidence
    assert evidence["distinct_entities_estimated"] == 5
    assert evidence["calls_per_entity_per_day"] == pytest.approx(300 / 30 / 5)
    # Σ(m−1)/Σ(n−1): P1 54 of 60 agree -> 53 of 59; P2..P5 59 of 59 each.
    agreement = (53 + 4 * 59) / (5 * 59)
    assert evidence["agreement_rate"] == pytest.approx(agreement, abs=1e-4)
    daily, weekly = 5 * 30 * 0.01, 5 * 30 * 24 / 168 * 0.01
    assert finding.savings_low_monthly_usd == pytest.approx(3.00 * agreement - daily, abs=0.01)
    assert finding.savings_high_monthly_usd == pytest.approx(3.00 - weekly, abs=0.01)


def test_entities_whose_answers_disagree_are_not_precomputed(tmp_path):
    calls = [{"at": hours(k * 2), "user": f"Summarise product P{k % 3}", "response": f"a different text {k}",
              "slots": [f"P{k % 3}"]} for k in range(120)]
    con = make_ledger(tmp_path / "d.duckdb", calls)
    assert precompute.detect(con, Settings()) == []
