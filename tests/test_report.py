"""`audit report`: figures recomputed independently, a golden file, redaction, a real browser, analyze-only.

The database is the shared ``sampled_db_file`` (sample_logs ingested, analyzed,
sampled n500-s7), replayed here through the fake engine, and judged by
``plant_judge_verdicts``: a test helper that writes ``verdicts`` (check and
final rows) and ``decisions`` in the shape ``audit judge`` writes them, with
pass/fail planted per template so every decision kind occurs. (``audit.judge``
is being written alongside and needs a migration that does not exist yet; the
helper keeps these tests independent of it.)

Golden file: ``tests/fixtures/report_golden.json`` holds the report's key
numbers on the sample logs. After a deliberate change to analyze, sampling or
the report's arithmetic, regenerate it with

    AUDIT_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_report.py -k golden

and review the diff. The browser test needs Chromium (``apt-get install
chromium``) and the ``playwright`` package (launched with the system
Chromium; ``playwright install`` is never run); it is skipped without them.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import pytest

from audit import db as audit_db
from audit.backends import parse_candidate
from audit.pricing import PriceBook
from audit.replay import plan_replay, replay
from audit.report import ReportOptions, build_report
from audit.report.projection import fit_growth, project
from audit.report.render import find_chromium, redact_report, render_report, write_report
from conftest import FIXTURES, REPO, run_audit

SET = "n500-s7"
GOLDEN = FIXTURES / "report_golden.json"
THRESHOLD = 0.7
# Planted outcome per template name: the share of each candidate's answers that pass. Templates not
# listed are not judged at all (the report must fall back to analyze's estimate for them).
PLANTED_PASS_SHARE = {
    "catalog-card-summary": 1.0,         # 12/12 → switch
    "agent-reply-draft": 0.9,            # 9/10 → insufficient evidence, point rate above the bar
    "support-faq-bot": 0.2,              # → keep
    "refund-eligibility": 0.0,
}
CANDIDATES = ("mini=fake:echo?input_price=0.15&output_price=0.6",
              "nano=fake:echo?input_price=0.05&output_price=0.2",    # cheaper: must win where both switch
              "local=fake:echo?pricing=gpu")                          # self-hosted: throughput measured
JUDGED_CANDIDATES = ("mini", "nano")
PER_TEMPLATE = 12


def wilson(passed: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    p = passed / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def plant_judge_verdicts(con, pass_share: dict[str, float], candidates=JUDGED_CANDIDATES, threshold: float = THRESHOLD) -> None:
    """Write check + final verdicts and decisions as `audit judge` would, with planted outcomes.

    Within a template, the first round(share × n) answered requests (by request id) pass.
    """
    names = dict(con.execute("SELECT name, template_id FROM templates").fetchall())
    for name, share in pass_share.items():
        template_id = names[name]
        for candidate in candidates:
            answered = [r[0] for r in con.execute(
                """SELECT p.request_id FROM replays p JOIN samples s USING (sample_set_id, request_id)
                   WHERE p.sample_set_id = ? AND s.template_id = ? AND p.candidate = ? AND p.status = 'ok'
                   ORDER BY p.request_id""", [SET, template_id, candidate]).fetchall()]
            passing = round(share * len(answered))
            for rank, request_id in enumerate(answered):
                passed = rank < passing
                reason = None if passed else "label differs from the original's"
                con.execute("INSERT INTO verdicts VALUES (?, ?, ?, 'check', 'label_match', ?, 0.5, ?, true, ?, now()::TIMESTAMP)",
                            [SET, request_id, candidate, 1.0 if passed else 0.0, passed, reason])
                con.execute("INSERT INTO verdicts VALUES (?, ?, ?, 'final', 'final', ?, NULL, ?, true, ?, now()::TIMESTAMP)",
                            [SET, request_id, candidate, 1.0 if passed else 0.0, passed,
                             "check" if passed else "check: label_match failed"])
            n = len(answered)
            low, high = wilson(passing, n)
            decision = "switch" if low >= threshold else "keep" if high < threshold else "insufficient evidence"
            failures = [{"reason": "label_match failed", "count": n - passing}] if n - passing else []
            con.execute("INSERT INTO decisions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, now()::TIMESTAMP)",
                        [SET, template_id, candidate, f"check {n}", n, passing, passing / n, low, high, threshold,
                         decision, json.dumps(failures)])


@pytest.fixture(scope="module")
def judged_db_file(sampled_db_file, tmp_path_factory) -> Path:
    """The sampled database with fake-engine replays (3 candidates) and planted verdicts and decisions."""
    path = tmp_path_factory.mktemp("judged") / "judged.duckdb"
    shutil.copyfile(sampled_db_file, path)
    con = audit_db.connect(path)
    plan = plan_replay(con, [parse_candidate(c) for c in CANDIDATES], book=PriceBook(), per_template=PER_TEMPLATE)
    replay(con, plan, max_cost_usd=5.0)
    plant_judge_verdicts(con, PLANTED_PASS_SHARE)
    con.execute("INSERT INTO judge_calibrations VALUES (now()::TIMESTAMP, 'labels.jsonl', 'checks', 40, 0.85, 0.62, 0.05)")
    con.close()
    return path


@pytest.fixture
def judged_db(judged_db_file, tmp_path) -> Path:
    path = tmp_path / "audit.duckdb"
    shutil.copyfile(judged_db_file, path)
    return path


# --------------------------------------------------------------------------- (a) the headline, recomputed in SQL


def independent_headline(con) -> dict[str, float]:
    """The headline figures by plain SQL over the tables, written apart from audit.report."""
    spend = con.execute(
        """SELECT sum(c.cost_usd / r.sampled_fraction) * 30.0 / any_value(w.days)
           FROM requests r JOIN request_costs c USING (request_id), analysis_window w
           WHERE r.started_at BETWEEN w.window_start AND w.window_end""").fetchall()[0][0]
    no_risk_low, no_risk_high = con.execute(
        """SELECT sum(stacked_savings_low_monthly_usd), sum(stacked_savings_high_monthly_usd) FROM findings
           WHERE status = 'found' AND risk = 'none'""").fetchall()[0]
    gated_low, gated_high = con.execute(
        """SELECT coalesce(sum(stacked_savings_low_monthly_usd), 0), coalesce(sum(stacked_savings_high_monthly_usd), 0)
           FROM findings WHERE status = 'found' AND risk = 'quality-gated' AND kind <> 'overpowered_model'""").fetchall()[0]
    moves_low, moves_high = con.execute(
        """WITH spend_left AS (
               SELECT t.template_id,
                      greatest(0, coalesce(t.spend_monthly_usd, 0) - coalesce(sum(f.stacked_savings_low_monthly_usd), 0)) AS left_low,
                      greatest(0, coalesce(t.spend_monthly_usd, 0) - coalesce(sum(f.stacked_savings_high_monthly_usd), 0)) AS left_high
               FROM templates t LEFT JOIN findings f ON f.template_id = t.template_id AND f.status = 'found' AND f.stack_step < 5
               GROUP BY t.template_id, t.spend_monthly_usd),
           ratios AS (
               SELECT s.template_id, p.candidate, sum(p.cost_usd) / sum(c.cost_usd) AS ratio
               FROM replays p JOIN samples s USING (sample_set_id, request_id) JOIN request_costs c USING (request_id)
               WHERE p.sample_set_id = ? AND p.status = 'ok' AND p.cost_usd IS NOT NULL AND c.cost_usd IS NOT NULL
               GROUP BY ALL),
           best AS (
               SELECT d.template_id,
                      min(r.ratio) FILTER (WHERE d.decision = 'switch') AS low_ratio,
                      min(r.ratio) FILTER (WHERE d.decision = 'switch'
                                           OR (d.decision = 'insufficient evidence' AND d.pass_rate >= d.threshold)) AS high_ratio
               FROM decisions d JOIN ratios r USING (template_id, candidate)
               WHERE d.sample_set_id = ? AND r.ratio < 1 GROUP BY ALL),
           untried AS (
               SELECT template_id, sum(stacked_savings_high_monthly_usd) AS high
               FROM findings WHERE status = 'found' AND kind = 'overpowered_model'
                 AND template_id NOT IN (SELECT template_id FROM decisions WHERE sample_set_id = ?)
               GROUP BY ALL)
           SELECT (SELECT coalesce(sum(l.left_low * (1 - b.low_ratio)), 0) FROM best b JOIN spend_left l USING (template_id)
                   WHERE b.low_ratio IS NOT NULL),  -- untried templates: in the high end only
                  (SELECT coalesce(sum(l.left_high * (1 - b.high_ratio)), 0) FROM best b JOIN spend_left l USING (template_id)
                   WHERE b.high_ratio IS NOT NULL) + (SELECT coalesce(sum(high), 0) FROM untried)""",
        [SET, SET, SET]).fetchall()[0]
    low = no_risk_low + gated_low + moves_low
    high = no_risk_high + gated_high + moves_high
    return {"spend": spend, "no_risk_low": no_risk_low, "no_risk_high": no_risk_high,
            "gated_low": gated_low + moves_low, "gated_high": gated_high + moves_high,
            "moves_low": moves_low, "moves_high": moves_high,
            "bill_after_low": spend - high, "bill_after_high": spend - low}


def test_headline_matches_independent_sql(judged_db):
    con = audit_db.connect(judged_db)
    data = build_report(con)
    h, expected = data["headline"], independent_headline(con)
    got = {"spend": h["spend_monthly_usd"], "no_risk_low": h["no_risk"]["low_usd"], "no_risk_high": h["no_risk"]["high_usd"],
           "gated_low": h["quality_gated"]["low_usd"], "gated_high": h["quality_gated"]["high_usd"],
           "moves_low": h["quality_gated"]["model_moves"]["low_usd"], "moves_high": h["quality_gated"]["model_moves"]["high_usd"],
           "bill_after_low": h["bill_after_low_usd"], "bill_after_high": h["bill_after_high_usd"]}
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-6)
    # The planted trials moved money, at both ends, and the high end is the larger one.
    assert 0 < expected["moves_low"] < expected["moves_high"]
    assert h["quality_gated"]["model_moves"]["from_trials"]


def test_model_moves_pick_the_cheapest_passing_candidate_once(judged_db):
    con = audit_db.connect(judged_db)
    moves = {m["template_name"]: m for m in build_report(con)["model_moves"]["templates"]}
    summary = moves["catalog-card-summary"]
    # Both candidates switch there; only the cheaper one (nano) counts, once.
    assert summary["basis"] == "trial" and summary["low"]["candidate"] == "nano" == summary["high"]["candidate"]
    assert summary["low"]["cost_ratio"] < 0.1
    # 9/10 passes: not a switch, but promising: high end only, labelled.
    draft = moves["agent-reply-draft"]
    assert draft["low"] is None and draft["high"]["decision"] == "insufficient evidence"
    assert "insufficient evidence" in draft["high"]["label"]
    # The trial said keep: no move, whatever analyze estimated.
    assert moves["support-faq-bot"]["low"] is None and moves["support-faq-bot"]["high"] is None
    # Never judged: analyze's over-powered-model estimate, labelled as not yet tried.
    extractor = moves["order-issue-extractor"]
    assert extractor["basis"] == "not yet tried" and extractor["low"]["candidate"] is None
    assert extractor["low"]["savings_monthly_usd"] == 0 and extractor["high"]["savings_monthly_usd"] > 0  # untried: high end only


# --------------------------------------------------------------------------- (b) golden numbers


def key_numbers(data: dict) -> dict:
    h = data["headline"]

    def money(v):
        return None if v is None else round(v, 2)

    return {
        "spend_monthly_usd": money(h["spend_monthly_usd"]),
        "no_risk": [money(h["no_risk"]["low_usd"]), money(h["no_risk"]["high_usd"])],
        "quality_gated": [money(h["quality_gated"]["low_usd"]), money(h["quality_gated"]["high_usd"])],
        "model_moves": [money(h["quality_gated"]["model_moves"]["low_usd"]), money(h["quality_gated"]["model_moves"]["high_usd"])],
        "savings": [money(h["savings_low_usd"]), money(h["savings_high_usd"])],
        "bill_after": [money(h["bill_after_low_usd"]), money(h["bill_after_high_usd"])],
        "fitted_growth_monthly": round(data["projection"]["fit"]["monthly_growth"], 4),
        "findings": [[f["kind"], f["template_name"], f["model"], money(f["stacked_savings_high_monthly_usd"])]
                     for f in data["findings"]["found"]],
        "trials": [[r["template_name"], r["candidate"], r["judged"], r["passed"], r["decision"],
                    None if r["cost_ratio"] is None or r["candidate"] == "local" else round(r["cost_ratio"], 5)]
                   for r in data["trials"]["rows"]],
        "moves": [[m["template_name"], m["basis"], (m["low"] or {}).get("candidate"), (m["high"] or {}).get("candidate"),
                   money((m["low"] or {}).get("savings_monthly_usd")), money((m["high"] or {}).get("savings_monthly_usd"))]
                  for m in data["model_moves"]["templates"]],
    }


def golden_text(numbers: dict) -> str:
    """JSON with one table row per line, so a diff shows which figure moved."""
    lines = []
    for key, value in numbers.items():
        if isinstance(value, list) and value and isinstance(value[0], list):
            rows = ",\n".join("  " + json.dumps(row, ensure_ascii=False) for row in value)
            lines.append(f' "{key}": [\n{rows}\n ]')
        else:
            lines.append(f' "{key}": {json.dumps(value, ensure_ascii=False)}')
    return "{\n" + ",\n".join(lines) + "\n}\n"


def test_golden_key_numbers_on_the_sample_logs(judged_db):
    con = audit_db.connect(judged_db)
    numbers = key_numbers(build_report(con))
    if os.environ.get("AUDIT_UPDATE_GOLDEN"):
        GOLDEN.write_text(golden_text(numbers))
    assert GOLDEN.exists(), "no golden file: run with AUDIT_UPDATE_GOLDEN=1 once and review it"
    assert numbers == json.loads(GOLDEN.read_text())


# --------------------------------------------------------------------------- (c) redaction

PLANTED = {"email": "jordan.lee42@gmail.com", "phone": "+1 415 555 0199", "card": "4242 4242 4242 4242",
           "key": "sk-proj-Zq81mN0pL3xV9cR7tY5uW2aB"}
ATTACK = "<script>window.__pwned=1</script> and </textarea><img src=x onerror=\"window.__pwned=2\">"


def plant_in_shown_example(con, text: str) -> str:
    """Put ``text`` in the prompt and answer of the first trial example the report shows; returns its request id."""
    data = build_report(con)
    request_id = next(ex["request_id"] for row in data["trials"]["rows"] for ex in row["examples"])
    messages = json.dumps([{"role": "system", "content": "You are helpful."}, {"role": "user", "content": text}])
    con.execute("UPDATE requests SET messages = ?, response_text = ? WHERE request_id = ?", [messages, text, request_id])
    con.execute("UPDATE replays SET response_text = ? WHERE request_id = ?", [text, request_id])
    return request_id


def test_planted_secrets_are_masked_and_no_redact_shows_them(judged_db, tmp_path):
    con = audit_db.connect(judged_db)
    planted = f"My email is {PLANTED['email']}, call {PLANTED['phone']}, card {PLANTED['card']}, key {PLANTED['key']}."
    plant_in_shown_example(con, planted)
    con.close()
    out = tmp_path / "r.html"
    result = run_audit("report", "--db", str(judged_db), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out)
    html = out.read_text()
    for value in PLANTED.values():
        assert value not in html
    for label in ("[email]", "[phone]", "[card]", "[secret]"):
        assert label in html
    shown = tmp_path / "raw.html"
    result = run_audit("report", "--db", str(judged_db), "--out", str(shown), "--no-redact")
    assert result.returncode == 0, result.stderr
    raw = shown.read_text()
    for value in PLANTED.values():
        assert value in raw
    # --json goes through the same redaction.
    result = run_audit("report", "--db", str(judged_db), "--json")
    assert result.returncode == 0, result.stderr
    assert PLANTED["email"] not in result.stdout and json.loads(result.stdout)["headline"]["spend_monthly_usd"] > 0


def test_logged_markup_is_escaped_in_html_and_svg(judged_db):
    con = audit_db.connect(judged_db)
    plant_in_shown_example(con, ATTACK)
    con.execute("UPDATE templates SET name = '<script>window.__pwned=3</script>tpl' WHERE name = 'support-faq-bot'")
    html = render_report(build_report(con))
    assert "<script>" not in html and "<img src=x" not in html
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in html
    assert "&lt;/textarea&gt;" in html


# --------------------------------------------------------------------------- (d) a real browser

def test_report_in_headless_chromium(judged_db, chromium_browser):
    browser = chromium_browser
    con = audit_db.connect(judged_db)
    plant_in_shown_example(con, ATTACK)
    con.execute("UPDATE templates SET name = '<script>window.__pwned=3</script>tpl' WHERE name = 'support-faq-bot'")
    artifacts = REPO / "reports" / "test-artifacts"
    path = write_report(con, artifacts / "report.html", options=ReportOptions(revenue_monthly_usd=300_000))
    charts_expected = {"spend_by_template", "spend_by_task", "spend_over_time", "projection", "trials"}

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    console_errors, requests = [], []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: console_errors.append(str(e)))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(path.resolve().as_uri(), wait_until="load")
    assert console_errors == []
    assert requests == [path.resolve().as_uri()]          # the file itself, nothing else
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert page.locator("script").count() == 0
    body = page.inner_text("body")
    assert "<script>window.__pwned=1</script>" in body and "</textarea>" in body
    assert "<script>window.__pwned=3</script>tpl" in body
    figures = page.locator("figure[data-chart]")
    shown = {figures.nth(i).get_attribute("data-chart") for i in range(figures.count())}
    assert shown == charts_expected
    for i in range(figures.count()):
        box = figures.nth(i).locator("svg").bounding_box()
        assert box and box["width"] > 300 and box["height"] > 50
    for section in ("headline", "money", "findings", "trials", "selfhost", "projection", "method"):
        assert page.locator(f"section#{section}").is_visible()
    page.screenshot(path=str(artifacts / "report.png"), full_page=True)
    page.emulate_media(media="print")
    assert page.locator("nav").is_hidden()                  # the print stylesheet applies
    print(f"screenshot: {artifacts / 'report.png'}")


def test_pdf_through_chromium_and_a_clear_error_without_it(judged_db, tmp_path):
    out = tmp_path / "r.html"
    missing = run_audit("report", "--db", str(judged_db), "--out", str(out), "--pdf",
                        env={"AUDIT_CHROMIUM": str(tmp_path / "no-such-browser")})
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert "needs Chromium" in missing.stderr and "apt-get install chromium" in missing.stderr
    if find_chromium() is None:
        pytest.skip("Chromium not installed: apt-get install -y chromium")
    done = run_audit("report", "--db", str(judged_db), "--out", str(out), "--pdf")
    assert done.returncode == 0, done.stderr
    pdf = Path(done.stdout.split()[-1])
    assert pdf.suffix == ".pdf" and pdf.read_bytes()[:5] == b"%PDF-"


# --------------------------------------------------------------------------- (e) after analyze alone


def test_report_after_analyze_alone_says_what_did_not_run(sampled_db, tmp_path):
    con = audit_db.connect(sampled_db)
    for table in ("samples", "sample_sets", "sample_exclusions"):
        con.execute(f"DELETE FROM {table}")
    data = build_report(con)
    assert data["stages"] == {"analyze": True, "sample": False, "replay": False, "judge": False, "review": False}
    assert "audit sample" in data["trials"]["not_run"] and "audit sample" in data["self_hosting"]["not_run"]
    # No trial: the model moves are analyze's estimate, labelled as such.
    assert data["model_moves"]["templates"] and {m["basis"] for m in data["model_moves"]["templates"]} == {"not yet tried"}
    html = render_report(data)
    assert "`audit sample` has not run" in html and "Agreement with human labels" not in html
    assert "pass --revenue-monthly USD" in html
    con.close()
    # The command, from a fresh folder: default path under reports/, the path alone on stdout.
    result = run_audit("report", "--db", str(sampled_db), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    written = tmp_path / "reports" / f"audit-report-{date.today().isoformat()}.html"
    assert result.stdout.strip() in (str(written), str(written.relative_to(tmp_path))) and written.exists()


def test_report_refuses_an_unanalyzed_ledger(tmp_path):
    con = audit_db.connect(tmp_path / "a.duckdb")
    from audit.ingest import ingest

    ingest(con, [FIXTURES / "openai_chat_pairs.jsonl"])
    con.close()
    result = run_audit("report", "--db", str(tmp_path / "a.duckdb"))
    assert result.returncode == 1 and "audit analyze" in result.stderr and "Traceback" not in result.stderr


# --------------------------------------------------------------------------- the pieces


def test_trials_show_verdicts_judging_methods_and_calibration(judged_db):
    data = build_report(audit_db.connect(judged_db))
    rows = {(r["template_name"], r["candidate"]): r for r in data["trials"]["rows"]}
    switch = rows[("catalog-card-summary", "nano")]
    assert (switch["judged"], switch["passed"], switch["decision"]) == (PER_TEMPLATE, PER_TEMPLATE, "switch")
    assert switch["candidate_cost_per_request_usd"] < switch["original_cost_per_request_usd"]
    keep = rows[("support-faq-bot", "mini")]
    assert keep["decision"] == "keep" and keep["examples"][0]["passed"] is False      # a failure is shown first
    assert 2 <= len(keep["examples"]) <= 3 and keep["examples"][0]["candidate_text"]
    assert rows[("catalog-card-summary", "local")]["decision"] == "not judged" and not rows[("catalog-card-summary", "local")]["examples"]
    judging = data["trials"]["judging"]
    assert {j["source"] for j in judging["by_source"]} == {"check"}
    assert {j["decided_by"] for j in judging["decided_by"]} == {"check"}
    assert [c["method"] for c in data["trials"]["calibrations"]] == ["checks"]


def test_self_hosting_economics_follow_the_design_formula(judged_db):
    data = build_report(audit_db.connect(judged_db))
    (run,) = data["self_hosting"]["runs"]
    assert run["candidate"] == "local" and run["tokens_per_second"] > 0
    assert run["self_hosted_per_million_usd"] == pytest.approx(run["gpu_hourly_usd"] / (run["tokens_per_second"] * 3600) * 1e6)
    assert run["gpu_monthly_usd"] == pytest.approx(run["gpu_hourly_usd"] * 720)
    assert run["break_even_tokens_monthly"] == pytest.approx(run["gpu_monthly_usd"] / run["api_per_million_usd"] * 1e6)
    # The API side: what the originals of the run's answered requests cost, per 1M of their logged tokens.
    con = audit_db.connect(judged_db)
    cost, tokens = con.execute(
        """SELECT sum(c.cost_usd), sum(r.input_tokens + r.output_tokens) FROM replays p
           JOIN requests r USING (request_id) JOIN request_costs c USING (request_id)
           WHERE p.run_id = ? AND p.status = 'ok'""", [run["run_id"]]).fetchall()[0]
    assert run["api_per_million_usd"] == pytest.approx(cost / tokens * 1e6)
    assert run["traffic_api_monthly_usd"] == pytest.approx(run["traffic_tokens_monthly"] * run["api_per_million_usd"] / 1e6)


def test_growth_fit_and_projection():
    start = date(2025, 6, 1)
    days = [{"day": start + timedelta(days=i), "spend_usd": 100 * 1.01 ** i, "calls": 1, "coverage": 1.0} for i in range(30)]
    # A partial first day (a window starting at 23:59) is scaled, and dropped when under half a day.
    days.insert(0, {"day": start - timedelta(days=1), "spend_usd": 0.1, "calls": 1, "coverage": 0.001})
    fit = fit_growth(days)
    assert fit["fitted"] and fit["days"] == 30
    assert fit["monthly_growth"] == pytest.approx(1.01 ** 30 - 1, rel=1e-9) and fit["r_squared"] == pytest.approx(1.0)
    assert not fit_growth(days[:5])["fitted"]
    projected = project(current_monthly_usd=100.0, monthly_growth=0.5, savings_low_usd=10.0, savings_high_usd=40.0,
                        revenue_monthly_usd=1000.0)
    months = projected["months"]
    assert months[2]["cost_usd"] == pytest.approx(225.0) and months[2]["cost_if_high_savings_usd"] == pytest.approx(135.0)
    # 100 × 1.5^m passes 250 in month 3 (337.5) and 500 in month 4 (506.25).
    assert [c["month"] for c in projected["revenue_crossings"]] == [3, 4]
    flat = project(current_monthly_usd=100.0, monthly_growth=0.0, savings_low_usd=0, savings_high_usd=0, revenue_monthly_usd=1000.0)
    assert [c["month"] for c in flat["revenue_crossings"]] == [None, None]


def test_options_growth_and_revenue(judged_db):
    con = audit_db.connect(judged_db)
    data = build_report(con, options=ReportOptions(revenue_monthly_usd=400_000, growth_pct_per_month=8,
                                                   revenue_growth_pct_per_month=2))
    p = data["projection"]
    assert p["growth_monthly"] == pytest.approx(0.08) and p["growth_basis"] == "given (--growth)"
    assert p["months"][12]["revenue_usd"] == pytest.approx(400_000 * 1.02 ** 12)
    assert data["headline"]["cost_share_of_revenue"] == pytest.approx(data["headline"]["spend_monthly_usd"] / 400_000)
    json.dumps(data)      # plain JSON values only
    assert "8.0% per month" in render_report(data)
    with pytest.raises(Exception, match="sample set"):
        build_report(con, options=ReportOptions(sample_set_id="n1-s1"))


def test_redact_report_touches_only_logged_text():
    data = {"headline": {"spend_monthly_usd": 1.0}, "rows": [{"template_name": "mail a@b.co", "request_id": "9f86d081884c7d659a2feaa0c55ad015",
                                                              "prompt_text": "card 4242 4242 4242 4242", "candidate": "sk-notakeyjustaname"}]}
    shown = redact_report(data)
    assert shown["rows"][0] == {"template_name": "mail [email]", "request_id": "9f86d081884c7d659a2feaa0c55ad015",
                                "prompt_text": "card [card]", "candidate": "sk-notakeyjustaname"}
    assert data["rows"][0]["prompt_text"] == "card 4242 4242 4242 4242"      # the input is not modified


def test_core_report_modules_import_without_typer_or_rich():
    code = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('typer', 'rich', 'click'):
            raise ImportError('UI package imported by the core: ' + name)
sys.meta_path.insert(0, Block())
import audit.report, audit.report.render, audit.report.charts, audit.report.projection, audit.redact
print('ok')
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_over_powered_model_findings_say_what_the_trials_made_of_them(judged_db):
    data = build_report(audit_db.connect(judged_db))
    moves = {m["template_id"]: m for m in data["model_moves"]["templates"]}
    overpowered = [f for f in data["findings"]["found"] if f["kind"] == "overpowered_model"]
    assert overpowered
    for f in overpowered:
        move = moves[f["template_id"]]
        if move["basis"] == "trial" and not (move["low"] or move["high"]):
            assert "not counted in the headline" in f["trial_text"]
        elif move["basis"] != "trial":
            assert f"downgrade trial: {move['basis']}" in f["trial_text"] and "high end" in f["trial_text"]
        else:
            assert (move["low"] or move["high"])["candidate"] in f["trial_text"]
    assert all(f["trial_text"] is None for f in data["findings"]["found"] if f["kind"] != "overpowered_model")
