"""The ``audit report`` command: one thin typer function over ``audit.report`` (no SQL here).

Registered in ``audit/cli.py``; stdout carries the report's path (or, with
``--json``, its figures), everything else goes to stderr.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from audit import db as audit_db
from audit.cli_options import ExistingDbOption


def report(
    *,
    db: ExistingDbOption = Path(audit_db.DEFAULT_DB),
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Where to write the HTML file. Default: reports/audit-report-YYYY-MM-DD.html (today).")] = None,
    revenue_monthly: Annotated[Optional[float], typer.Option("--revenue-monthly", help="Your monthly revenue in USD: shows LLM cost as a share of it, and when it passes 25% / 50%.")] = None,
    growth: Annotated[Optional[float], typer.Option("--growth", help="Traffic growth in % per month for the projection. Default: fitted on the ledger's daily spend.")] = None,
    revenue_growth: Annotated[float, typer.Option("--revenue-growth", help="Revenue growth in % per month for the projection (default: flat).")] = 0.0,
    no_redact: Annotated[bool, typer.Option("--no-redact", help="Show example texts as logged: e-mails, phone numbers, card numbers and keys are NOT masked.")] = False,
    pdf: Annotated[bool, typer.Option("--pdf", help="Also print a PDF next to the HTML with headless Chromium.")] = False,
    routing_out: Annotated[Optional[Path], typer.Option("--routing-out", help="Where to write the routing plan (LiteLLM config). Default: routing.yaml next to the report.")] = None,
    sample: Annotated[Optional[str], typer.Option("--sample", help="The sample set whose trials to report (e.g. n500-s7). Default: the one decided (or replayed, or drawn) last.")] = None,
    json: Annotated[bool, typer.Option("--json", help="Print the report's figures as JSON on stdout instead of writing HTML.")] = False,
) -> None:
    """Write the self-contained HTML report for the CFO meeting: spend, waste, trials, twelve-month projection.

    Every figure is computed from the database now; sections whose stage has not run say how to run it
    (only `audit analyze` is required). Example texts are redacted unless --no-redact. The file loads
    nothing from the network and runs no script.
    """
    from audit import console
    from audit.report import ReportOptions, build_report
    from audit.report.render import print_pdf, redact_report, write_report

    # Not read-only: a database from an older version gets the newer (empty) tables the report reads.
    con = audit_db.connect(db, must_exist=True)
    options = ReportOptions(revenue_monthly_usd=revenue_monthly, growth_pct_per_month=growth,
                            revenue_growth_pct_per_month=revenue_growth, sample_set_id=sample)
    with console.progress_bar("building the report", None, show_count=False):
        data = build_report(con, options=options)
    if json:
        console.print_json(data if no_redact else redact_report(data))
        return
    path = write_report(con, out, data=data, redact=not no_redact)
    h = data["headline"]
    console.err.print(
        f"monthly spend ${h['spend_monthly_usd']:,.0f}; savings ${h['savings_low_usd']:,.0f}–${h['savings_high_usd']:,.0f} "
        f"per month; the bill becomes ${h['bill_after_low_usd']:,.0f}–${h['bill_after_high_usd']:,.0f}"
        + ("" if not no_redact else " [yellow](examples NOT redacted)[/]"))
    console.out.print(str(path), markup=False)
    # The routing plan goes with the report; it needs replays (the trials it routes by).
    from audit.errors import AuditError
    from audit.exports import write_routing_plan

    try:
        routing = write_routing_plan(con, routing_out or path.parent / "routing.yaml", sample_set_id=data["meta"]["sample_set_id"])
        console.err.print(f"routing plan: {routing['path']}")
    except AuditError as error:
        console.err.print(f"[dim]routing plan not written: {error.one_line()}[/]")
    if pdf:
        console.out.print(str(print_pdf(path)), markup=False)
