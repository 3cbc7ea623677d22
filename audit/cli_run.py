"""``audit run``: the whole pipeline in one command (a thin typer function over ``audit.run``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from audit import db as audit_db
from audit.cli_options import DbOption, JsonOption


def run(
    paths: Annotated[list[str], typer.Argument(help="Log files, globs or folders, as for `audit ingest`.", show_default=False)],
    *,
    db: DbOption = Path(audit_db.DEFAULT_DB),
    sampled_fraction: Annotated[float, typer.Option("--sampled-fraction", help="Share of all calls the export holds (0.01 = a 1% sample).")] = 1.0,
    prices: Annotated[Optional[Path], typer.Option("--prices", help="Price file (TOML): overrides, aliases, [candidates]. Default: ./audit.toml when present.")] = None,
    n: Annotated[int, typer.Option("--n", help="Requests to sample.")] = 500,
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same sample.")] = 7,
    candidate: Annotated[Optional[list[str]], typer.Option("--candidate", "-c", help="NAME=ENGINE:MODEL[?options] (repeatable). Default: the price file's [candidates], else smollm2=vllm:smollm2.")] = None,
    per_template: Annotated[Optional[int], typer.Option("--per-template", help="Replay only the first K sampled requests of each template.")] = None,
    judge: Annotated[Optional[str], typer.Option("--judge", help="An LLM judge, NAME=ENGINE:MODEL[?options]. Default: the automatic checks only.")] = None,
    threshold: Annotated[float, typer.Option("--threshold", help="Pass rate a template must clear, with 95% confidence, to switch.")] = 0.90,
    max_cost: Annotated[float, typer.Option("--max-cost", help="USD the paid candidates may cost at most, and (separately) the paid judge.")] = 1.00,
    gpu_hourly_usd: Annotated[float, typer.Option("--gpu-hourly-usd", help="What one GPU costs per hour: prices self-hosted candidates by their measured throughput.")] = 3.00,
    revenue_monthly: Annotated[Optional[float], typer.Option("--revenue-monthly", help="Monthly revenue in USD: the report shows LLM cost as a share of it.")] = None,
    growth: Annotated[Optional[float], typer.Option("--growth", help="Traffic growth in % per month for the projection. Default: fitted from the ledger.")] = None,
    revenue_growth: Annotated[float, typer.Option("--revenue-growth", help="Revenue growth in % per month for the projection (default: flat).")] = 0.0,
    out: Annotated[Optional[Path], typer.Option("--out", help="The report's path. Default: reports/audit-report-DATE.html.")] = None,
    routing_out: Annotated[Optional[Path], typer.Option("--routing-out", help="The routing plan's path. Default: routing.yaml next to the report.")] = None,
    no_redact: Annotated[bool, typer.Option("--no-redact", help="Show examples unredacted (emails, phone and card numbers, keys are masked by default).")] = False,
    json: JsonOption = False,
) -> None:
    """Ingest → analyze → sample → replay → judge → report, with defaults; the report's path on stdout.

    Rerunning reuses what is finished: files already ingested, an analysis of the same ledger, the sample
    set, answers and judge calls already stored. Paid APIs are estimated and capped by --max-cost.
    """
    from audit import console
    from audit.ingest import expand_paths
    from audit.run import RunOptions, check_options, run_pipeline

    files = expand_paths(paths)
    options = RunOptions(sampled_fraction=sampled_fraction, prices=prices, n=n, seed=seed, candidates=candidate or [],
                         per_template=per_template, judge_spec=judge, threshold=threshold, max_cost_usd=max_cost,
                         gpu_hourly_usd=gpu_hourly_usd, revenue_monthly_usd=revenue_monthly,
                         growth_pct_per_month=growth, revenue_growth_pct_per_month=revenue_growth, out=out,
                         routing_out=routing_out, redact=not no_redact)
    check_options(options)  # before the database is created: a run that cannot start leaves nothing behind
    con = audit_db.connect(db)
    with console.progress_bar("audit run", None) as bar:

        def on_event(event) -> None:
            if event.status == "progress":
                bar.set(completed=event.done, total=event.total, description=f"{event.stage}: {event.detail}")
            elif event.status == "running":
                bar.set(completed=0, total=event.total, description=f"{event.stage}: {event.detail}")
            else:
                mark = "[green]done[/]  " if event.status == "done" else "[dim]reused[/]"
                console.err.print(f"{mark} {event.stage:<8} {event.detail}")

        results = run_pipeline(con, files, options, on_event=on_event)
    if results["judge"]["decisions"]:
        from audit.tables import render_judge_summary

        render_judge_summary(results["judge"])
    console.err.print(f"routing plan: {results['report']['routing_path']}")
    if json:
        console.print_json(results)
    else:
        print(results["report"]["path"])
