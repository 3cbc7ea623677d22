"""Rich tables for the terminal (stderr). UI only: the core never imports this."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table

from audit.console import err


def _money(value: float | None) -> str:
    return "-" if value is None else f"${value:,.2f}"


def _n(value: float | int | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _usage_table(title: str, key: str, rows: list[dict[str, Any]]) -> Table:
    table = Table(title=title, title_justify="left", header_style="bold")
    table.add_column(key)
    for column in ("calls", "calls (scaled)", "failed", "input tok", "cached", "output tok", "logged cost"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            str(row.get(key.lower(), row.get(key)) or "(none)"), _n(row["calls"]), _n(row["calls_scaled"]),
            _n(row["failed"]), _n(row["input_tokens"]), _n(row["cached_input_tokens"]),
            _n(row["output_tokens"]), _money(row["logged_cost_usd"]),
        )
    return table


def render_spend(summary: dict[str, Any], *, days: int) -> None:
    ingest, totals = summary["ingest"], summary["totals"]
    err.print(
        f"[bold]{ingest['files']:,} files[/]: read {ingest['read']:,} = stored {ingest['stored']:,} "
        f"+ duplicate {ingest['duplicate']:,} + rejected {ingest['rejected']:,}"
        + (f" [dim](stored includes {ingest['batch_prompts']:,} Batch API prompts joined to their outputs)[/]"
           if ingest["batch_prompts"] else "")
    )
    fractions = [f for f in ingest["sampled_fractions"] or [] if f != 1]
    if fractions:
        err.print("sampled exports: " + ", ".join(f"{f:g} of traffic" for f in fractions)
                  + "; scaled figures divide by it")
    if totals["calls"] == 0:
        err.print("The ledger is empty: run `audit ingest LOGS...` first.")
        return
    err.print(
        f"{totals['calls']:,} calls ({totals['calls_scaled']:,.0f} after scaling by sampled fraction) "
        f"from {totals['first_call']} to {totals['last_call']}"
        + (f", {totals['undated']:,} undated" if totals["undated"] else "")
        + f"; tokens not logged (counted) for {totals['tokens_not_logged']:,}"
    )
    err.print(_usage_table("By model", "model", summary["by_model"]))
    err.print(_usage_table(f"By day (last {days})", "day", summary["by_day"][-days:]))
    if summary["reject_reasons"]:
        table = Table(title="Rejected records", title_justify="left", header_style="bold")
        table.add_column("reason")
        table.add_column("records", justify="right")
        for row in summary["reject_reasons"]:
            table.add_row(row["reason"], _n(row["records"]))
        err.print(table)


def render_analysis(summary: dict[str, Any]) -> None:
    totals, stack = summary["totals"], summary["savings_stack"]
    window = summary["window"]
    spend = totals["spend_monthly_usd"] or 0.0
    err.print(
        f"[bold]Monthly spend[/] (last {window['days']:.0f} days to {window['end']:%Y-%m-%d}, full traffic): "
        f"[bold]{_money(spend)}[/]"
        + (f" · [yellow]{totals['unpriced_requests']:,} calls not priced[/] (unknown models: see --json pricing)"
           if totals["unpriced_requests"] else "")
    )
    pricing, reconciliation = summary.get("pricing") or {}, summary.get("reconciliation") or {}
    for model in pricing.get("unpriced_models") or []:
        err.print(f"[yellow]unpriced[/] {escape(str(model['model']))}: {model['requests']:,} calls, "
                  f"{model['share_of_tokens']:.1%} of tokens; {escape(model['reason'])}")
    logged = reconciliation.get("logged_cost") or {}
    if logged.get("requests"):
        err.print(f"logged cost vs recomputed on {logged['requests']:,} calls that logged one: "
                  f"{_money(logged['logged_cost_usd'])} vs {_money(logged['recomputed_cost_usd'])} "
                  f"(residual {_money(logged['residual_usd'])})")
    invoice = reconciliation.get("invoice")
    if invoice:
        err.print(f"the ledger explains {invoice['explained_share']:.0%} of the "
                  f"{_money(invoice['invoice_total_monthly_usd'])} monthly invoice "
                  f"({_money(invoice['unexplained_monthly_usd'])} unexplained)")
    table = Table(title="Where the money goes: top templates", title_justify="left", header_style="bold")
    for column in ("template", "source", "model", "task", "tier", "calls", "$/month", "share"):
        table.add_column(column, justify="right" if column in ("calls", "$/month", "share") else "left")
    for t in summary["top_templates"]:
        table.add_row(t["name"], t["source"], t["main_model"] or "-", t["task_type"] or "-", t["tier"] or "-",
                      _n(t["calls"]), _money(t["spend_monthly_usd"]),
                      "-" if t["share_of_spend"] is None else f"{t['share_of_spend']:.0%}")
    err.print(table)
    table = Table(title="Findings, ranked by dollars per month (after stacking)", title_justify="left",
                  header_style="bold")
    # Stacking runs twice: with every step at its low estimate, and at its high
    # one; a later step saves less in the high case because earlier ones took more.
    for column in ("kind", "template", "model", "spend affected", "saves alone", "stacked, low case",
                   "stacked, high case", "risk"):
        table.add_column(column, justify="right" if "sav" in column or "spend" in column or "case" in column else "left")
    found = [f for f in summary["findings"] if f["status"] == "found"]
    for f in found:
        table.add_row(
            f["kind"], f["template_name"] or "-", f["model"] or "-", _money(f["spend_affected_monthly_usd"]),
            f"{_money(f['savings_low_monthly_usd'])}–{_money(f['savings_high_monthly_usd'])}",
            _money(f["stacked_savings_low_monthly_usd"]), _money(f["stacked_savings_high_monthly_usd"]),
            f["risk"] or "-",
        )
    err.print(table)
    for f in found[:5]:
        err.print(f"[bold]→[/] {f['kind']} on {f['template_name'] or '-'}: {f['action']}")
    for f in summary["findings"]:
        if f["status"] == "not-run":
            err.print(f"[yellow]not run[/] {f['kind']}: {f['not_run_reason']}")
    low, high = stack["savings_low_monthly_usd"], stack["savings_high_monthly_usd"]
    err.print(
        f"[bold]Savings[/], stacked: {_money(low)}–{_money(high)} per month "
        f"(no quality risk up to {_money(stack['no_risk_high_monthly_usd'])}, quality-gated up to "
        f"{_money(stack['quality_gated_high_monthly_usd'])}); the bill becomes "
        f"{_money(max(spend - high, 0))}–{_money(max(spend - low, 0))} per month."
    )

def _whole_money(value: float | None) -> str:
    if value is None:
        return "-"
    return f"${value:,.0f}" if abs(value) >= 100 else f"${value:,.2f}"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _excluded(counts: dict[str, int]) -> str:
    return ", ".join(f"{count:,} {reason}" for reason, count in counts.items()) or "-"


def render_sample_plan(plan: dict[str, Any]) -> None:
    """Per template: ledger rows, excluded (by reason), eligible population, sampled, spend covered."""
    totals = plan["totals"]
    err.print(
        f"[bold]Sample set {escape(plan['sample_set_id'])}[/]: {totals['sampled']:,} of {totals['population']:,} "
        f"replayable requests (n = {plan['n_requested']:,}, seed {plan['seed']}, at least "
        f"{plan['min_per_template']} per template); {totals['excluded']:,} of {totals['requests']:,} excluded"
    )
    table = Table(title="Sample plan by template (spend: list price, full traffic, whole ledger)",
                  title_justify="left", header_style="bold", show_footer=True)
    columns = [
        ("template", "total", "left"),
        ("requests", f"{totals['requests']:,}", "right"),
        ("excluded", _excluded(totals["excluded_by_reason"]), "left"),
        ("population", f"{totals['population']:,}", "right"),
        ("sampled", f"{totals['sampled']:,}", "right"),
        ("weight", "", "right"),
        ("spend", _whole_money(totals["spend_usd"]), "right"),
        ("sampled rows", _whole_money(totals["sampled_spend_usd"]), "right"),
        ("share", _share(totals["sampled_spend_share"]), "right"),
        ("weighted", _whole_money(totals["weighted_spend_usd"]), "right"),
        ("± s.e.", _whole_money(totals["weighted_spend_se_usd"]), "right"),
        ("covered", _share(totals["spend_covered_share"]), "right"),
    ]
    for header, footer, justify in columns:
        table.add_column(header, footer=footer, justify=justify,  # type: ignore[arg-type]
                         no_wrap=header != "excluded", max_width=32 if header == "template" else None,
                         min_width=16 if header == "excluded" else None, overflow="ellipsis")
    for t in plan["templates"]:
        weight = f"{1 / t['inclusion_probability']:,.1f}" if t["inclusion_probability"] else "-"
        table.add_row(
            escape(t["name"]), f"{t['requests']:,}", _excluded(t["excluded_by_reason"]), f"{t['population']:,}",
            f"{t['sampled']:,}", weight, _whole_money(t["spend_usd"]), _whole_money(t["sampled_spend_usd"]),
            _share(t["sampled_spend_share"]), _whole_money(t["weighted_spend_usd"]), _whole_money(t["weighted_spend_se_usd"]),
            _share(t["spend_covered_share"]),
        )
    err.print(table)
    if plan["excluded_without_template"]:
        err.print(f"[yellow]no template[/]: {_excluded(plan['excluded_without_template'])}")
    for reason in totals["excluded_by_reason"]:
        err.print(f"[dim]{reason}: {escape(plan['exclusion_reasons'][reason])}[/]")
    for note in plan["notes"]:
        err.print(f"[yellow]note[/] {escape(note)}")
    err.print("[dim]weight: ledger rows each sampled request stands for; sampled rows: their own spend and its "
              "share of the template's; weighted: Σ cost × weight / sampled fraction, the sample's estimate of the "
              "spend (± one standard error); covered: weighted / spend, 100% in expectation less what is excluded[/]")
