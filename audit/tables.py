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


def _price(entry: dict[str, Any]) -> str:
    if entry["input_price_per_m"] is None:
        return f"${entry['gpu_hourly_usd']:g}/GPU-h" if entry.get("gpu_hourly_usd") else "-"
    if entry["input_price_per_m"] == entry["output_price_per_m"]:
        return f"${entry['input_price_per_m']:,.3g}/M"
    return f"${entry['input_price_per_m']:,.3g} / ${entry['output_price_per_m']:,.3g} per M"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:,.0f} s" if seconds < 120 else f"{seconds / 60:,.1f} min"


def render_replay_plan(plan: dict[str, Any]) -> None:
    """Before anything is sent: per candidate, what is pending, its price and the estimates."""
    scope = f", first {plan['per_template']} per template" if plan["per_template"] else ""
    err.print(f"[bold]Replay of sample set {escape(plan['sample_set_id'])}[/]{scope}")
    table = Table(header_style="bold")
    for column in ("candidate", "model", "pricing", "price", "pending", "done before", "expected", "worst case", "time"):
        table.add_column(column, justify="left" if column in ("candidate", "model", "pricing") else "right")
    for c in plan["candidates"]:
        table.add_row(escape(c["candidate"]), escape(f"{c['engine']}:{c['model']}"), c["pricing"], _price(c),
                      f"{c['pending']:,}", f"{c['already_done']:,}", _money(c["expected_cost_usd"]),
                      _money(c["worst_case_cost_usd"]), _duration(c["expected_seconds"]))
    err.print(table)
    for c in plan["candidates"]:
        err.print(f"[dim]{escape(c['candidate'])}: price from {escape(c['price_source'])}; estimate: {escape(c['estimate_basis'])}[/]")


def render_replay_summary(summary: dict[str, Any]) -> None:
    """After the run: this run per candidate, then everything replayed on the sample set so far."""
    runs = Table(title="This run", title_justify="left", header_style="bold")
    for column in ("candidate", "status", "sent", "ok", "errors", "tokens in/out", "wall", "tokens/s", "out tok/s",
                   "$/1M", "cost", "device"):
        runs.add_column(column, justify="left" if column in ("candidate", "status", "errors", "device") else "right")
    any_run = False
    for c in summary["candidates"]:
        run = c["run"]
        if run is None:
            continue
        any_run = True
        errors = ", ".join(f"{n} {kind}" for kind, n in run["error_kinds"].items()) or "0"
        runs.add_row(escape(c["candidate"]), run["status"], f"{run['requests_ok'] + run['requests_error']:,}",
                     f"{run['requests_ok']:,}", errors, f"{run['prompt_tokens']:,} / {run['output_tokens']:,}",
                     _duration(run["wall_seconds"]), _n(run["tokens_per_second"]), _n(run["output_tokens_per_second"]),
                     _price(run), _money(run["cost_usd"]), escape(run["device"] or "-"))
    if any_run:
        err.print(runs)
    else:
        err.print("nothing pending: every sampled request already has an answer or a final error "
                  "(--retry-errors sends the errors again)")
    totals = Table(title=f"Sample set {escape(summary['sample_set_id'])}, all runs", title_justify="left", header_style="bold")
    for column in ("candidate", "samples", "ok", "errors", "pending", "hit max_tokens", "truncated", "candidate cost",
                   "originals' cost", "ratio"):
        totals.add_column(column, justify="left" if column in ("candidate", "errors") else "right")
    for c in summary["candidates"]:
        t = c["totals"]
        if t is None:
            continue
        errors = ", ".join(f"{n} {kind}" for kind, n in t["error_kinds"].items()) or "0"
        ratio = "-" if t["cost_ratio"] is None else f"{t['cost_ratio']:.1%}"
        totals.add_row(escape(c["candidate"]), f"{t['samples']:,}", f"{t['ok']:,}", errors, f"{t['pending']:,}",
                       f"{t['hit_max_tokens']:,}", f"{t['truncated']:,}", _money(t["cost_usd"]),
                       _money(t["original_cost_usd"]), ratio)
    err.print(totals)
    err.print("[dim]cost: answered requests only, at the candidate's price (self-hosted: wall time at the GPU rate); "
              "originals' cost: the same requests at list price; quality is judged next, by `audit judge`[/]")


def render_judge_summary(summary: dict[str, Any]) -> None:
    """Per template × candidate: n, pass rate and its interval, the decision, the top failure reasons."""
    evidence = ", ".join(f"{n:,} by {source}" for source, n in sorted(summary["final_verdicts_by_evidence"].items()))
    err.print(f"[bold]Judged sample set {escape(summary['sample_set_id'])}[/]: {summary['answers_checked']:,} answers "
              f"checked; final verdicts {evidence or 'none'}"
              + (f"; {summary['replays_not_judged']:,} replays not judged (transient errors or nothing to judge by)"
                 if summary["replays_not_judged"] else ""))
    judge = summary.get("judge")
    if judge:
        err.print(f"LLM judge {escape(judge['judge'])} ({escape(judge['spec'])}): {judge['calls']:,} calls this run "
                  f"({judge['already_done']:,} before), {judge['error']:,} errors, {judge['unparsable']:,} without a "
                  f"verdict, {_money(judge['cost_usd'])}, {_duration(judge['wall_seconds'])}; "
                  f"{judge['verdicts']:,} pairs with both orders"
                  + ("; [bold]stopped at --max-cost[/]" if judge["stopped_at_budget"] else ""))
    table = Table(header_style="bold")
    for column in ("template", "task", "candidate", "n", "pass", "95% interval", "decision", "spend", "top failures"):
        table.add_column(column, justify="right" if column in ("n", "pass", "95% interval", "spend") else "left")
    style = {"switch": "green", "keep": "red", "insufficient evidence": "yellow"}
    for d in summary["decisions"]:
        interval = "-" if d["ci_low"] is None else f"{d['ci_low']:.0%}–{d['ci_high']:.0%}"
        failures = "; ".join(f"{f['reason']} ×{f['count']}" for f in d["top_failures"]) or "-"
        table.add_row(escape(d["template_name"] or d["template_id"]), escape(d["task_type"] or "-"), escape(d["candidate"]),
                      f"{d['judged']:,}", _share(d["pass_rate"]), interval,
                      f"[{style[d['decision']]}]{d['decision']}[/]", _whole_money(d["template_spend_usd"]), escape(failures))
    err.print(table)
    if summary["decisions"]:
        err.print(f"[dim]switch: the interval's lower bound ≥ {summary['decisions'][0]['threshold']:.0%}; keep: its upper "
                  "bound below; otherwise insufficient evidence (replay more with a larger sample)[/]")
    for m in summary["movable_spend"]:
        if m["passing_share"] is None or not m["tried_spend_usd"]:
            err.print(f"{escape(m['candidate'])}: the templates it was tried on hold no priced spend")
            continue
        err.print(f"{escape(m['candidate'])}: templates that switch hold {_share(m['switch_share'])} of all spend "
                  f"({_whole_money(m['switch_spend_usd'])}); the spend whose requests pass is estimated at "
                  f"{_share(m['passing_share'])} ({_share(m['passing_share_low'])}–{_share(m['passing_share_high'])}, 95%) "
                  f"of all spend, tried on templates holding {_share(m['tried_spend_usd'] / m['total_spend_usd'] if m['total_spend_usd'] else None)}")


def render_calibration(result: dict[str, Any]) -> None:
    labels = result["human_labels"]
    err.print(f"[bold]{escape(result['file'])}[/]: {result['pairs']:,} labelled pairs "
              f"(humans preferred output 1 in {labels['output_1']:,}, output 2 in {labels['output_2']:,})")
    table = Table(header_style="bold")
    for column in ("method", "pairs", "decided", "accuracy (decided)", "tie rate", "Cohen's kappa"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for m in result["methods"]:
        kappa = "-" if m["kappa"] is None else f"{m['kappa']:.2f}"
        table.add_row(escape(m["method"]), f"{m['pairs']:,}", f"{m['decided']:,}", _share(m["accuracy"]),
                      _share(m["tie_rate"]), kappa)
    err.print(table)
    err.print("[dim]kappa counts a tie as a disagreement: 0 is chance, 1 perfect agreement[/]")
