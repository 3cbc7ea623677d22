"""`audit analyze` end to end: the seed scenario's waste is found and priced; edge ledgers say why."""

from __future__ import annotations

import json

import pytest

from audit import db as audit_db
from audit.analyze import analyze
from audit.ingest import ingest
from audit.synth import SAMPLE_LOGS_FRACTION
from conftest import REPO, rows, run_audit


@pytest.fixture(scope="module")
def analyzed(tmp_path_factory):
    con = audit_db.connect(tmp_path_factory.mktemp("analyze") / "audit.duckdb")
    ingest(con, [REPO / "sample_logs"], sampled_fraction=SAMPLE_LOGS_FRACTION)
    summary = analyze(con)
    yield con, summary
    con.close()


def test_the_four_seed_waste_kinds_are_found_with_dollars(analyzed):
    con, summary = analyzed
    found = {(f["kind"], f["template_name"]): f for f in summary["findings"] if f["status"] == "found"}
    kinds_by_template = {}
    for kind, name in found:
        kinds_by_template.setdefault(kind, set()).add(name)
    spend = summary["totals"]["spend_monthly_usd"]
    assert 80_000 < spend < 95_000
    for kind in ("exact_cache", "context_bloat", "precompute", "overpowered_model"):
        assert kind in kinds_by_template, kind
        best = max(f["savings_high_monthly_usd"] for (k, _), f in found.items() if k == kind)
        assert 100 < best < spend, (kind, best)
    stack = summary["savings_stack"]
    assert 0 < stack["savings_low_monthly_usd"] <= stack["savings_high_monthly_usd"] < spend


def test_headline_spend_is_the_sum_of_request_costs(analyzed):
    con, summary = analyzed
    by_sql = rows(con, """
        SELECT sum(c.cost_usd / r.sampled_fraction) * 30.0 / any_value(w.days) AS monthly
        FROM requests r JOIN request_costs c USING (request_id), analysis_window w
        WHERE r.started_at BETWEEN w.window_start AND w.window_end""")[0]["monthly"]
    assert summary["totals"]["spend_monthly_usd"] == pytest.approx(by_sql)
    by_templates = rows(con, "SELECT sum(spend_monthly_usd) AS s FROM templates")[0]["s"]
    assert by_templates == pytest.approx(by_sql)


def test_rerun_rewrites_the_same_rows(analyzed):
    con, summary = analyzed
    # Same rows to the cent (parallel sums may differ in the last float bits).
    query = ("SELECT finding_id, kind, round(savings_low_monthly_usd, 2) AS low, round(savings_high_monthly_usd, 2) AS high "
             "FROM findings ORDER BY ALL")
    before = rows(con, query)
    analyze(con)
    assert rows(con, query) == before
    assert rows(con, "SELECT count(*) AS n FROM request_costs")[0]["n"] == rows(con, "SELECT count(*) AS n FROM requests")[0]["n"]


def test_usage_only_ledger_says_which_detectors_could_not_look(tmp_path):
    usage_only = tmp_path / "usage.csv"
    usage_only.write_text("timestamp,model,input_tokens,output_tokens\n2025-06-01T10:00:00Z,gpt-4o,1200,80\n"
                          "2025-06-02T10:00:00Z,gpt-4o,900,60\n")
    con = audit_db.connect(tmp_path / "a.duckdb")
    ingest(con, [usage_only])
    summary = analyze(con)
    not_run = {f["kind"]: f["not_run_reason"] for f in summary["findings"] if f["status"] == "not-run"}
    assert "exact_cache" in not_run and "context_bloat" in not_run
    assert all(reason for reason in not_run.values())
    assert summary["totals"]["spend_monthly_usd"] > 0


def test_cli_on_an_empty_ledger_is_one_line(tmp_path):
    db = str(tmp_path / "empty.duckdb")
    assert run_audit("spend", "--db", db).returncode == 1  # no database yet
    audit_db.connect(db).close()
    result = run_audit("analyze", "--db", db)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["error: the ledger is empty: nothing to analyze (run `audit ingest LOGS...` first)"]


def test_cli_json_is_data_on_stdout(tmp_path):
    db = str(tmp_path / "a.duckdb")
    assert run_audit("ingest", str(REPO / "sample_logs"), "--db", db, "--sampled-fraction", str(SAMPLE_LOGS_FRACTION)).returncode == 0
    result = run_audit("analyze", "--db", db, "--json", "--invoice-total", "90000")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert 0.9 < data["reconciliation"]["invoice"]["explained_share"] < 1.0
    assert data["reconciliation"]["logged_cost"]["residual_usd"] == pytest.approx(0, abs=1e-9)
