"""Over-powered model detector: small/mid-tier tasks on a large model, priced per month."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from conftest import FIXTURES, REPO, rows
from test_pricing import add

from audit import pricing
from audit.analyze import compute_window
from audit.findings import Settings, overpowered, write_findings
from audit.ingest import ingest

GPT_4O = (2.50, 1.25, 10.00)        # list USD per 1M: input, cached input, output
GPT_41_NANO = (0.10, 0.025, 0.40)
GPT_41_MINI = (0.40, 0.10, 1.60)


def set_templates(con, assignments: dict[str, tuple[str, str | None, str | None]]) -> None:
    """request_id -> (template_id, tier, task_type): what mining and task classification would write."""
    con.execute("DELETE FROM templates; DELETE FROM request_templates")
    for template_id, tier, task_type in sorted(set(assignments.values()), key=str):
        con.execute("INSERT INTO templates (template_id, source, name, signature, tier, task_type) "
                    "VALUES (?, 'mined', ?, ?, ?, ?)", [template_id, template_id, template_id, tier, task_type])
    con.executemany("INSERT INTO request_templates VALUES (?, ?, NULL)",
                    [[request_id, t[0]] for request_id, t in assignments.items()])


@pytest.fixture(scope="module")
def sample_with_truth(tmp_path_factory):
    """sample_logs priced, with templates and tiers taken from the generator's ground truth."""
    from audit import db
    from audit.synth import SAMPLE_LOGS_FRACTION

    con = db.connect(tmp_path_factory.mktemp("sample") / "audit.duckdb")
    ingest(con, [REPO / "sample_logs"], sampled_fraction=SAMPLE_LOGS_FRACTION)
    compute_window(con)
    pricing.price_requests(con, pricing.PriceBook())
    con.execute(f"""CREATE TEMP TABLE truth AS
        SELECT r.request_id, t.template_id, t.tier, t.task_type
        FROM requests r JOIN read_csv('{FIXTURES / "sample_logs_truth.csv.gz"}') t USING (native_id)""")
    assert con.execute("SELECT count(*) FROM truth").fetchall() == \
        con.execute("SELECT count(*) FROM requests").fetchall()
    con.execute("""INSERT INTO templates (template_id, source, name, signature, tier, task_type)
                   SELECT DISTINCT template_id, 'mined', template_id, template_id, tier, task_type FROM truth""")
    con.execute("INSERT INTO request_templates SELECT request_id, template_id, NULL FROM truth")
    yield con
    con.close()


def expected_dollars(con, template_id: str, candidate: tuple[float, float, float]) -> tuple[float, float]:
    """Monthly spend on gpt-4o and the same tokens at the candidate's price, recomputed in Python."""
    (days,) = con.execute("SELECT days FROM analysis_window").fetchall()[0]
    spend = moved = 0.0
    for r in rows(con, """
            SELECT r.sampled_fraction, r.is_batch, coalesce(r.input_tokens, 0) AS input,
                   coalesce(r.cached_input_tokens, 0) AS cached, coalesce(r.output_tokens, 0) AS output
            FROM requests r JOIN request_templates t USING (request_id), analysis_window w
            WHERE t.template_id = ? AND r.model = 'gpt-4o' AND r.started_at BETWEEN w.window_start AND w.window_end""",
                  [template_id]):
        weight = (1 / r["sampled_fraction"]) * 30 / days * (0.5 if r["is_batch"] else 1.0)
        spend += weight * ((r["input"] - r["cached"]) * GPT_4O[0] + r["cached"] * GPT_4O[1]
                           + r["output"] * GPT_4O[2]) / 1e6
        moved += weight * ((r["input"] - r["cached"]) * candidate[0] + r["cached"] * candidate[1]
                           + r["output"] * candidate[2]) / 1e6
    return spend, moved


def test_sample_logs_small_and_mid_tasks_on_gpt4o(sample_with_truth, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./audit.toml
    con = sample_with_truth
    found = {f.template_id: f for f in overpowered.detect(con, Settings())}
    # small tier → gpt-4.1-nano; mid → gpt-4.1-mini; large tasks keep gpt-4o
    assert {t: f.evidence["candidate_model"] for t, f in found.items()} == {
        "faq_answer": "gpt-4.1-nano", "ticket_classify": "gpt-4.1-nano", "order_extract": "gpt-4.1-nano",
        "product_summary": "gpt-4.1-mini", "email_draft": "gpt-4.1-mini", "code_snippet": "gpt-4.1-mini"}
    assert all(f.model == "gpt-4o" and f.status == "found" for f in found.values())
    for template_id, finding in found.items():
        candidate = GPT_41_NANO if finding.evidence["tier"] == "small" else GPT_41_MINI
        assert tuple(finding.evidence["candidate_price_per_million"][k]
                     for k in ("input", "cached_input", "output")) == candidate
        spend, moved = expected_dollars(con, template_id, candidate)
        assert finding.spend_affected_monthly_usd == pytest.approx(spend, rel=1e-9), template_id
        assert finding.savings_high_monthly_usd == pytest.approx(spend - moved, rel=1e-9), template_id
        assert finding.savings_low_monthly_usd == pytest.approx(0.6 * (spend - moved), rel=1e-9)
        assert finding.evidence["template_spend_monthly_usd"] >= finding.spend_affected_monthly_usd
        assert len(finding.evidence["example_request_ids"]) == min(5, finding.requests_affected)
    # small-tier candidates are >= 16x cheaper than gpt-4o on input and output (GPT-4o-mini is 16.7x,
    # gpt-4.1-nano 25x), so the full move saves 94-96% of those requests' spend
    for template_id in ("faq_answer", "ticket_classify", "order_extract"):
        finding = found[template_id]
        current, cand = finding.evidence["current_price_per_million"], finding.evidence["candidate_price_per_million"]
        assert current["input"] / cand["input"] >= 16 and current["output"] / cand["output"] >= 16
        assert 0.93 <= finding.savings_high_monthly_usd / finding.spend_affected_monthly_usd <= 0.97
    # sensible dollars: the FAQ on gpt-4o (95% of FAQ traffic) is about a seventh of the ~$87k bill
    assert 8_000 <= found["faq_answer"].spend_affected_monthly_usd <= 16_000
    # the gpt-4o-mini A/B share of the FAQ and the batch classification on gpt-4o-mini stay out
    mini_spend = con.execute("""
        SELECT count(*) FROM request_templates t JOIN requests r USING (request_id)
        WHERE t.template_id = 'ticket_classify' AND r.model = 'gpt-4o-mini'""").fetchall()[0][0]
    assert mini_spend > 0
    classify = found["ticket_classify"]
    assert classify.evidence["template_spend_monthly_usd"] > classify.spend_affected_monthly_usd


def test_findings_are_written_quality_gated_at_the_model_step(sample_with_truth, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    con = sample_with_truth
    write_findings(con, overpowered.detect(con, Settings()))
    written = rows(con, "SELECT * FROM findings WHERE kind = 'overpowered_model' ORDER BY template_id")
    assert len(written) == 6
    assert {(r["status"], r["risk"], r["stack_step"]) for r in written} == {("found", "quality-gated", 5)}
    faq = next(r for r in written if r["template_id"] == "faq_answer")
    assert json.loads(faq["evidence"])["task_type"] == "faq_lookup"
    assert faq["stacked_savings_high_monthly_usd"] == pytest.approx(faq["savings_high_monthly_usd"])
    con.execute("DELETE FROM findings")


def test_not_run_without_templates_or_tiers(con):
    add(con, "a", input_tokens=1_000, output_tokens=100)
    compute_window(con)
    pricing.price_requests(con, pricing.PriceBook())
    (finding,) = overpowered.detect(con, Settings())
    assert (finding.status, finding.kind) == ("not-run", "overpowered_model") and "template" in finding.not_run_reason
    set_templates(con, {"a": ("t1", None, None)})
    (finding,) = overpowered.detect(con, Settings())
    assert finding.status == "not-run" and "tier" in finding.not_run_reason
    assert finding.savings_high_monthly_usd == 0 and finding.template_id is None


def test_only_large_models_on_small_or_mid_tasks(con, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    day = datetime(2025, 6, 30, 12)
    add(con, "sonnet", provider="anthropic", model_logged="claude-3-5-sonnet-20241022", started_at=day,
        input_tokens=1_000_000, output_tokens=1_000_000)
    add(con, "mini", model_logged="gpt-4o-mini", started_at=day, input_tokens=1_000_000, output_tokens=1_000_000)
    add(con, "big", started_at=day, input_tokens=1_000_000, output_tokens=1_000_000)
    add(con, "batch", started_at=day, is_batch=True, input_tokens=1_000_000, output_tokens=1_000_000)
    compute_window(con)  # a one-day window: monthly = 30 x the day
    pricing.price_requests(con, pricing.PriceBook())
    set_templates(con, {"sonnet": ("classify", "small", "classification"),
                        "mini": ("classify", "small", "classification"),
                        "big": ("reasoning", "large", "complex_reasoning"),
                        "batch": ("tagging", "small", "classification")})
    found = {(f.template_id, f.model): f for f in overpowered.detect(con, Settings())}
    assert set(found) == {("classify", "claude-3-5-sonnet"), ("tagging", "gpt-4o")}
    sonnet = found[("classify", "claude-3-5-sonnet")]
    # same provider first: claude-3-haiku ($0.25 / $1.25) for claude-3.5-sonnet ($3 / $15)
    assert sonnet.evidence["candidate_model"] == "claude-3-haiku"
    assert sonnet.spend_affected_monthly_usd == pytest.approx(30 * (3 + 15))
    assert sonnet.savings_high_monthly_usd == pytest.approx(30 * ((3 + 15) - (0.25 + 1.25)))
    assert sonnet.evidence["template_spend_monthly_usd"] == pytest.approx(30 * ((3 + 15) + (0.15 + 0.6)))
    # a batch call saves on its discounted price: half of gpt-4o vs half of gpt-4.1-nano
    tagging = found[("tagging", "gpt-4o")]
    assert tagging.savings_high_monthly_usd == pytest.approx(30 * 0.5 * ((2.5 + 10) - (0.1 + 0.4)))


def test_uses_the_price_file_of_the_run(con, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "negotiated.toml"
    path.write_text('[prices."gpt-4o"]\ninput = 2.0\noutput = 8.0\n', encoding="utf-8")
    con.execute("INSERT INTO analysis_runs VALUES (1, now()::TIMESTAMP, NULL, ?)", [json.dumps({"prices": str(path)})])
    add(con, "a", started_at=datetime(2025, 6, 30), input_tokens=1_000_000, output_tokens=1_000_000)
    compute_window(con)
    pricing.price_requests(con, pricing.load_price_book(path))
    set_templates(con, {"a": ("faq", "small", "faq_lookup")})
    (finding,) = overpowered.detect(con, Settings())
    assert finding.evidence["current_price_per_million"]["output"] == 8.0
    assert finding.spend_affected_monthly_usd == pytest.approx(30 * (2.0 + 8.0))
    assert finding.savings_high_monthly_usd == pytest.approx(30 * ((2.0 + 8.0) - (0.1 + 0.4)))
