"""`audit sample`: seeded, stratified, spend-allocated sampling with counted exclusions.

The committed sample_logs are ingested and analyzed once for the module; the
exclusion rules run on a small hand-built ledger with one request of each
kind that cannot be replayed.
"""

from __future__ import annotations

import io
import json
import math
import statistics

import pytest

from audit import db as audit_db
from audit.analyze import analyze
from audit.errors import AuditError, ConfigError
from audit.ingest import ingest
from audit.sample import EXCLUSION_REASONS, Stratum, allocate, draw_sample, sample_set_id
from audit.synth import SAMPLE_LOGS_FRACTION
from conftest import REPO, rows


@pytest.fixture(scope="module")
def ledger(tmp_path_factory):
    con = audit_db.connect(tmp_path_factory.mktemp("sample") / "audit.duckdb")
    ingest(con, [REPO / "sample_logs"], sampled_fraction=SAMPLE_LOGS_FRACTION)
    analyze(con)
    yield con
    con.close()


@pytest.fixture(scope="module")
def plan500(ledger):
    return draw_sample(ledger, n=500, seed=7)


def sampled_ids(con, set_id: str) -> set[str]:
    return {r["request_id"] for r in rows(con, "SELECT request_id FROM samples WHERE sample_set_id = ?", [set_id])}


def by_name(plan) -> dict[str, dict]:
    return {t["name"]: t for t in plan["templates"]}


# --------------------------------------------------------------------------- determinism and size


def test_same_seed_same_sample_other_seed_another(ledger, plan500):
    first = sampled_ids(ledger, "n500-s7")
    assert len(first) == 500
    draw_sample(ledger, n=500, seed=7)
    assert sampled_ids(ledger, "n500-s7") == first
    draw_sample(ledger, n=500, seed=8)
    other = sampled_ids(ledger, "n500-s8")
    assert len(other) == 500 and other != first
    # Independent draws overlap about as much as chance says (~500²/4,026 ≈ 62 of 500), not wholesale.
    assert len(first & other) < 250


def test_n_is_respected_and_every_template_gets_its_minimum(ledger, plan500):
    assert plan500["totals"]["sampled"] == 500 and not plan500["sampled_everything"] and plan500["notes"] == []
    assert len(plan500["templates"]) == 8
    for t in plan500["templates"]:
        assert t["sampled"] >= min(5, t["population"]), t["name"]
    per_template = rows(ledger, "SELECT template_id, count(*) AS n FROM samples WHERE sample_set_id = 'n500-s7' GROUP BY ALL")
    assert {r["template_id"]: r["n"] for r in per_template} == {t["template_id"]: t["sampled"] for t in plan500["templates"]}
    # The minimums cannot all fit into n = 20: each template still gets 5, and the plan says so.
    small = draw_sample(ledger, n=20, seed=7)
    assert [t["sampled"] for t in small["templates"]] == [5] * 8
    assert small["totals"]["sampled"] == 40 and "exceeds n = 20" in small["notes"][0]


def test_allocation_follows_eligible_spend_outside_the_minimums(plan500):
    templates = plan500["templates"]
    free = [t for t in templates if 5 < t["sampled"] < t["population"]]
    assert len(free) >= 4   # support chat, FAQ, catalog cards, refunds, reply drafts
    budget = plan500["totals"]["sampled"] - sum(t["sampled"] for t in templates if t not in free)
    per_dollar = budget / sum(t["eligible_spend_usd"] for t in free)
    for t in free:
        assert abs(t["sampled"] - per_dollar * t["eligible_spend_usd"]) <= 1, t["name"]
    # The money decides, not the request count: the support chat costs ~5× the FAQ bot with fewer calls.
    plan = by_name(plan500)
    chat, faq = plan["You are Ava, Acme's customer support assistant…"], plan["support-faq-bot"]
    assert chat["population"] < faq["population"] and chat["sampled"] > 4 * faq["sampled"]


def test_sampling_everything_when_n_reaches_the_population(ledger):
    plan = draw_sample(ledger, n=10_000, seed=7)
    assert plan["sampled_everything"] and plan["totals"]["sampled"] == plan["totals"]["population"] == 4026
    assert "whole eligible population" in plan["notes"][0]
    weights = rows(ledger, "SELECT min(weight) AS lo, max(weight) AS hi FROM samples WHERE sample_set_id = 'n10000-s7'")[0]
    assert weights == {"lo": 1.0, "hi": 1.0}


# --------------------------------------------------------------------------- weights


def test_weights_reproduce_each_stratum_population_exactly(ledger, plan500):
    strata = rows(ledger, """
        SELECT stratum, template_id, sum(weight) AS weights, count(*) AS sampled,
               min(inclusion_probability) AS p_min, max(inclusion_probability) AS p_max,
               max(abs(weight * inclusion_probability - 1)) AS off,
               max(abs(traffic_weight * r.sampled_fraction - weight)) AS traffic_off
        FROM samples s JOIN requests r USING (request_id) WHERE sample_set_id = 'n500-s7' GROUP BY ALL""")
    population = {t["template_id"]: t["population"] for t in plan500["templates"]}
    assert len(strata) == 8
    for s in strata:
        assert s["stratum"] == s["template_id"]
        assert s["weights"] == pytest.approx(population[s["template_id"]], abs=1e-9)
        assert s["p_min"] == s["p_max"] == pytest.approx(s["sampled"] / population[s["template_id"]])
        assert s["off"] < 1e-12 and s["traffic_off"] < 1e-9


def test_eligible_plus_excluded_is_every_request_of_the_template(ledger, plan500):
    template_rows = {r["template_id"]: r["n"] for r in rows(ledger, "SELECT template_id, count(*) AS n FROM request_templates GROUP BY ALL")}
    for t in plan500["templates"]:
        assert t["population"] + sum(t["excluded_by_reason"].values()) == t["requests"] == template_rows[t["template_id"]]
    totals = plan500["totals"]
    assert totals["population"] + totals["excluded"] == totals["requests"] == 4041
    # The sample logs' only unreplayable requests are their 15 failed calls (each counted once).
    assert totals["excluded_by_reason"] == {"failed_call": 15}
    failed = rows(ledger, "SELECT count(*) AS n FROM requests WHERE status = 'error'")[0]["n"]
    assert failed == 15
    assert not rows(ledger, """SELECT 1 FROM samples s JOIN requests r USING (request_id)
                               WHERE s.sample_set_id = 'n500-s7' AND r.status <> 'ok'""")


def test_weighted_spend_reproduces_the_template_spend_in_expectation(ledger):
    # Over 12 seeds the mean Horvitz–Thompson estimate sits within 4 standard
    # errors of the true spend; wrong weights (n/N instead of N/n, or the
    # sampled fraction forgotten) miss by orders of magnitude.
    estimates: dict[str, list[float]] = {}
    errors: dict[str, list[float]] = {}
    truth = {}
    for seed in range(100, 112):
        plan = draw_sample(ledger, n=120, seed=seed)
        for t in plan["templates"]:
            estimates.setdefault(t["name"], []).append(t["weighted_spend_usd"])
            errors.setdefault(t["name"], []).append(t["weighted_spend_se_usd"])
            truth[t["name"]] = t["eligible_spend_usd"]
        total = plan["totals"]
        assert total["weighted_spend_se_usd"] < 0.15 * total["eligible_spend_usd"]
    for name, values in estimates.items():
        mean, se_of_mean = statistics.fmean(values), statistics.fmean(errors[name]) / math.sqrt(len(values))
        assert abs(mean - truth[name]) <= 4 * se_of_mean + 1e-6 * truth[name], (name, mean, truth[name], se_of_mean)
    # The weights matter: the sampled rows' own spend is far below the spend.
    assert plan["totals"]["sampled_spend_share"] < 0.2
    assert plan["totals"]["spend_covered_share"] > 0.8


# --------------------------------------------------------------------------- tables


def test_redrawing_a_sample_set_replaces_it(ledger):
    draw_sample(ledger, n=60, seed=3)
    count = "SELECT count(*) AS n FROM {} WHERE sample_set_id = 'n60-s3'"
    before = {t: rows(ledger, count.format(t))[0]["n"] for t in ("samples", "sample_exclusions", "sample_sets")}
    draw_sample(ledger, n=60, seed=3)
    after = {t: rows(ledger, count.format(t))[0]["n"] for t in ("samples", "sample_exclusions", "sample_sets")}
    assert after == before == {"samples": 60, "sample_exclusions": 4, "sample_sets": 1}
    assert not rows(ledger, "SELECT request_id FROM samples WHERE sample_set_id = 'n60-s3' GROUP BY ALL HAVING count(*) > 1")
    # Other sets stay, and a different minimum is a different set.
    assert rows(ledger, count.format("samples").replace("n60-s3", "n500-s7"))[0]["n"] == 500
    assert draw_sample(ledger, n=60, seed=3, min_per_template=2)["sample_set_id"] == "n60-s3-m2" == sample_set_id(60, 3, 2)


def test_no_templates_means_analyze_first(tmp_path):
    con = audit_db.connect(tmp_path / "a.duckdb")
    ingest(con, [REPO / "tests" / "fixtures" / "openai_chat_pairs.jsonl"])
    with pytest.raises(AuditError) as raised:
        draw_sample(con)
    assert raised.value.message == "no templates: run `audit analyze` first"
    with pytest.raises(ConfigError):
        draw_sample(con, n=0)


# --------------------------------------------------------------------------- exclusions


def _line(i: int, messages: list, reply, *, prompt: str = "handbuilt", error: bool = False) -> str:
    response = ({"error": {"message": "server error", "type": "server_error"}} if error else {
        "id": f"chatcmpl-{i}", "object": "chat.completion", "created": 1748779200 + i, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 400 + i, "completion_tokens": 40}})
    return json.dumps({
        "id": f"log_{i}", "timestamp": f"2025-06-01T12:{i:02d}:00Z", **({"status_code": 500} if error else {}),
        "request": {"model": "gpt-4o-mini", "messages": messages}, "response": response,
        "metadata": {"prompt_name": prompt}})


SYSTEM = {"role": "system", "content": "You answer questions about Acme orders."}
HAND_BUILT = {
    "tool_use": [SYSTEM, {"role": "user", "content": "Where is order AC-1?"},
                 {"role": "assistant", "content": None, "tool_calls": [
                     {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}]},
                 {"role": "tool", "tool_call_id": "call_1", "content": "{\"status\": \"shipped\"}"}],
    "image_or_audio": [SYSTEM, {"role": "user", "content": [
        {"type": "text", "text": "Is this box damaged?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/box.png"}}]}],
    "other_content": [SYSTEM, {"role": "user", "content": [
        {"type": "text", "text": "Summarise the attached invoice."},
        {"type": "file", "file": {"file_id": "file-1"}}]}],
}


@pytest.fixture(scope="module")
def hand_built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("handbuilt")
    plain = [SYSTEM, {"role": "user", "content": "The word \"type\" and \"tool\" in plain text is fine."}]
    lines = [_line(i, plain, f"Answer {i}.") for i in range(12)]           # 12 eligible, one template
    lines += [_line(20 + i, messages, "An answer.") for i, messages in enumerate(HAND_BUILT.values())]
    lines.append(_line(30, [SYSTEM, {"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}]}], "Heard you."))
    lines.append(_line(31, plain, None, error=True))                          # failed call
    lines.append(_line(32, plain, "   "))                                     # a blank reply
    (folder / "chat.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "usage.csv").write_text("timestamp,model,input_tokens,output_tokens\n2025-06-01T10:00:00Z,gpt-4o-mini,1200,80\n")
    con = audit_db.connect(folder / "audit.duckdb")
    ingest(con, [folder / "chat.jsonl", folder / "usage.csv"])
    analyze(con)
    # Ingested after analyze: no template yet.
    (folder / "late.jsonl").write_text(_line(40, plain, "Late answer.", prompt="late") + "\n")
    ingest(con, [folder / "late.jsonl"])
    yield con
    con.close()


def test_each_unreplayable_kind_is_excluded_with_its_reason(hand_built):
    plan = draw_sample(hand_built, n=5, seed=1, min_per_template=3)
    reasons = {r["native_id"]: r["reason"] for r in rows(hand_built, """
        WITH s AS (SELECT request_id FROM samples WHERE sample_set_id = 'n5-s1-m3')
        SELECT r.native_id, CASE WHEN s.request_id IS NOT NULL THEN 'sampled' END AS reason
        FROM requests r LEFT JOIN s USING (request_id)""")}
    assert sum(1 for reason in reasons.values() if reason == "sampled") == 5
    by_template = {t["name"]: t for t in plan["templates"]}
    handbuilt = by_template["handbuilt"]
    assert handbuilt["excluded_by_reason"] == {"failed_call": 1, "tool_use": 1, "image_or_audio": 2,
                                               "other_content": 1, "no_response": 1}
    assert handbuilt["population"] == 12 and handbuilt["requests"] == 18 and handbuilt["sampled"] == 5
    usage_only = next(t for name, t in by_template.items() if name.startswith("(no prompt logged"))
    assert usage_only["excluded_by_reason"] == {"no_prompt": 1} and usage_only["sampled"] == 0
    assert plan["excluded_without_template"] == {"no_template": 1}
    assert "run `audit analyze` again" in plan["notes"][-1]
    assert plan["totals"]["excluded_by_reason"] == {
        "no_template": 1, "failed_call": 1, "no_prompt": 1, "tool_use": 1, "image_or_audio": 2,
        "other_content": 1, "no_response": 1}
    assert plan["totals"]["requests"] == 20 == plan["totals"]["population"] + plan["totals"]["excluded"]
    assert set(plan["totals"]["excluded_by_reason"]) <= set(EXCLUSION_REASONS)
    stored = rows(hand_built, "SELECT template_id, reason, requests FROM sample_exclusions WHERE sample_set_id = 'n5-s1-m3'")
    assert sum(r["requests"] for r in stored) == 8
    # Which request got which reason: the sampled ones are all plain conversations.
    sampled_natives = {n for n, reason in reasons.items() if reason == "sampled"}
    assert sampled_natives <= {f"log_{i}" for i in range(12)}


# --------------------------------------------------------------------------- allocation and rendering


def test_allocate_is_exact_and_bounded():
    strata = [Stratum("a", 1000, 900.0), Stratum("b", 40, 80.0), Stratum("c", 3, 0.5), Stratum("d", 500, 0.0),
              Stratum("e", 0, 10.0)]
    sizes = allocate(strata, 101, 5)
    assert sum(sizes.values()) == 101 and "e" not in sizes
    assert sizes["c"] == 3 and sizes["d"] == 5          # capped at the population; the minimum without spend
    assert sizes["a"] > 8 * sizes["b"]
    # More than the spending strata hold: the rest goes to the strata without spend.
    assert allocate(strata, 1100, 5) == {"a": 1000, "b": 40, "c": 3, "d": 57}
    assert allocate(strata, 10_000, 5) == {"a": 1000, "b": 40, "c": 3, "d": 500}
    # Nothing priced: proportional to the counts.
    unpriced = allocate([Stratum("x", 300, 0.0), Stratum("y", 100, 0.0)], 40, 0)
    assert unpriced == {"x": 30, "y": 10}


def test_the_plan_renders_as_a_table(plan500, monkeypatch):
    from rich.console import Console

    from audit import tables as sample_tables

    buffer = io.StringIO()
    monkeypatch.setattr(sample_tables, "err", Console(file=buffer, width=160, highlight=False))
    sample_tables.render_sample_plan(plan500)
    text = buffer.getvalue()
    assert "Sample set n500-s7" in text and "support-faq-bot" in text and "15 failed_call" in text
    assert "4,026" in text and "$107,357" in text
