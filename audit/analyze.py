"""``audit analyze``: the priced ledger, prompt templates, task tiers and waste findings.

Reads: ``requests``. Writes: ``analysis_window``, ``request_costs``
(``audit.pricing``), ``templates`` and ``request_templates``
(``audit.templates``, rolled up here), task types on ``templates``
(``audit.tasks``), ``findings`` (``audit.findings``), ``analysis_runs``.

Every table is rewritten from the ledger on each run: re-running is safe
and gives the same rows for the same ledger, prices and settings.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import duckdb

from audit.db import fetch_dicts
from audit.errors import AuditError
from audit.findings import (
    IN_WINDOW,
    MONTHLY,
    Settings,
    detectors,
    not_run,
    write_findings,
)

WINDOW_DAYS = 30


def compute_window(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """The last 30 days of the ledger (or all of it when shorter): the basis of every monthly figure."""
    con.execute("DELETE FROM analysis_window")
    con.execute(
        f"""INSERT INTO analysis_window
        SELECT greatest(min(started_at), max(started_at) - INTERVAL {WINDOW_DAYS} DAY), max(started_at),
               greatest(epoch(max(started_at) - greatest(min(started_at), max(started_at) - INTERVAL {WINDOW_DAYS} DAY))
                        / 86400.0, 1.0)
        FROM requests WHERE started_at IS NOT NULL"""
    )
    start, end, days = con.execute("SELECT * FROM analysis_window").fetchall()[0]
    return {"start": start, "end": end, "days": days}


def roll_up_templates(con: duckdb.DuckDBPyConnection) -> None:
    """Calls and (scaled) spend per template, whole ledger and per month."""
    con.execute(
        f"""UPDATE templates SET calls = s.calls, calls_scaled = s.calls_scaled, spend_usd = s.spend_usd,
                                spend_monthly_usd = s.spend_monthly_usd, main_model = s.main_model
        FROM (
            SELECT t.template_id, count(*) AS calls, sum(1.0 / r.sampled_fraction) AS calls_scaled,
                   sum(c.cost_usd / r.sampled_fraction) AS spend_usd,
                   coalesce(sum(c.cost_usd * {MONTHLY}) FILTER (WHERE {IN_WINDOW}), 0) AS spend_monthly_usd,
                   mode(r.model) AS main_model
            FROM request_templates t JOIN requests r USING (request_id)
            LEFT JOIN request_costs c USING (request_id), analysis_window w
            GROUP BY t.template_id) s
        WHERE templates.template_id = s.template_id"""
    )


def analyze(
    con: duckdb.DuckDBPyConnection,
    *,
    prices_path: Path | None = None,
    settings: Settings | None = None,
    invoice_total_monthly: float | None = None,
) -> dict[str, Any]:
    """Run every analysis step; return the summary the CLI prints."""
    from audit import pricing, tasks, templates

    settings = settings or Settings()
    calls = con.execute("SELECT count(*) FROM requests").fetchall()[0][0]
    if calls == 0:
        raise AuditError("the ledger is empty: nothing to analyze", "run `audit ingest LOGS...` first")
    run_id = con.execute("SELECT coalesce(max(run_id), 0) + 1 FROM analysis_runs").fetchall()[0][0]
    parameters = {"prices": str(prices_path) if prices_path else None, "settings": asdict(settings),
                  "invoice_total_monthly": invoice_total_monthly}
    con.execute("INSERT INTO analysis_runs VALUES (?, now()::TIMESTAMP, NULL, ?)", [run_id, json.dumps(parameters)])
    window = compute_window(con)
    price_book = pricing.load_price_book(prices_path)
    pricing_summary = pricing.price_requests(con, price_book)
    template_summary = templates.mine_templates(con)
    roll_up_templates(con)
    task_summary = tasks.classify_templates(con)
    findings = []
    for name, detect in detectors():
        # One detector's failure must not hide the others' findings: it is
        # reported as not run, with the error, and the run goes on.
        try:
            findings.extend(detect(con, settings))
        except (duckdb.Error, ValueError, ZeroDivisionError, KeyError, TypeError) as exc:
            findings.append(not_run(name, f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"))
    write_findings(con, findings)
    con.execute("UPDATE analysis_runs SET finished_at = now()::TIMESTAMP WHERE run_id = ?", [run_id])
    return {
        "window": window,
        "pricing": pricing_summary,
        "reconciliation": pricing.reconcile(con, invoice_total_monthly),
        "template_mining": template_summary,
        "tasks": task_summary,
        **summary_from_tables(con),
    }


def summary_from_tables(con: duckdb.DuckDBPyConnection, *, top: int = 15) -> dict[str, Any]:
    """What analyze found, read back from its tables (the CLI and the report show this)."""
    totals = fetch_dicts(
        con,
        f"""SELECT sum(c.cost_usd * {MONTHLY}) FILTER (WHERE {IN_WINDOW}) AS spend_monthly_usd,
                   sum(c.cost_usd / r.sampled_fraction) AS spend_ledger_usd,
                   count(*) FILTER (WHERE NOT c.priced) AS unpriced_requests,
                   count(*) AS requests
            FROM requests r JOIN request_costs c USING (request_id), analysis_window w""",
    )[0]
    templates = fetch_dicts(
        con,
        f"""SELECT template_id, name, source, calls, calls_scaled, main_model, task_type, tier,
                   task_confidence, spend_monthly_usd,
                   spend_monthly_usd / nullif(sum(spend_monthly_usd) OVER (), 0) AS share_of_spend
            FROM templates ORDER BY spend_monthly_usd DESC NULLS LAST, template_id LIMIT {int(top)}""",
    )
    findings = fetch_dicts(
        con,
        """SELECT f.*, t.name AS template_name FROM findings f LEFT JOIN templates t USING (template_id)
           ORDER BY f.status, f.stacked_savings_high_monthly_usd DESC NULLS LAST, f.kind, f.template_id""",
    )
    found = [f for f in findings if f["status"] == "found"]
    stack = {
        "savings_low_monthly_usd": sum(f["stacked_savings_low_monthly_usd"] or 0 for f in found),
        "savings_high_monthly_usd": sum(f["stacked_savings_high_monthly_usd"] or 0 for f in found),
        "no_risk_high_monthly_usd": sum(f["stacked_savings_high_monthly_usd"] or 0 for f in found if f["risk"] == "none"),
        "quality_gated_high_monthly_usd": sum(f["stacked_savings_high_monthly_usd"] or 0 for f in found
                                              if f["risk"] == "quality-gated"),
    }
    return {"totals": totals, "top_templates": templates, "findings": findings, "savings_stack": stack}
