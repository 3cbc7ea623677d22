"""``audit judge`` and ``audit judge calibrate``: thin typer functions over ``audit.judge``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from audit import db as audit_db
from audit.cli_options import DbOption, JsonOption

judge_app = typer.Typer(no_args_is_help=False, invoke_without_command=True, rich_markup_mode="markdown")

JudgeOption = Annotated[Optional[str], typer.Option("--judge", help="An LLM judge, NAME=ENGINE:MODEL[?options] like a candidate (e.g. strong=openai:gpt-4o): pairwise, both orders. Default: the automatic checks only.")]
MaxCostOption = Annotated[float, typer.Option("--max-cost", help="Refuse to start when the judge's worst-case cost exceeds this many USD, and never spend more.")]
GpuOption = Annotated[float, typer.Option("--gpu-hourly-usd", help="What the machine of a self-hosted judge costs per hour.")]
PricesOption = Annotated[Optional[Path], typer.Option("--prices", help="Price file (TOML) to price a hosted judge. Default: the one the last `audit analyze` used, else ./audit.toml.")]


@judge_app.callback()
def judge(
    ctx: typer.Context,
    *,
    db: DbOption = Path(audit_db.DEFAULT_DB),
    sample: Annotated[Optional[str], typer.Option("--sample", help="The sample set to judge. Default: the latest drawn.")] = None,
    judge: JudgeOption = None,
    threshold: Annotated[float, typer.Option("--threshold", help="Pass rate a template must clear, with 95% confidence, to switch.")] = 0.90,
    max_cost: MaxCostOption = 1.00,
    gpu_hourly_usd: GpuOption = 3.00,
    prices: PricesOption = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="With --judge: print what judging would cost; judge nothing.")] = False,
    json: JsonOption = False,
) -> None:
    """Judge the replayed answers: task-aware checks (and an LLM judge), then per template: switch, keep or insufficient evidence.

    Writes `verdicts`, `decisions`, `movable_spend` (and `judge_calls`). Human reviews (`audit review`) override
    automatic verdicts. `audit judge calibrate FILE` measures a judging method against human labels.
    """
    if ctx.invoked_subcommand:
        return
    from audit import console
    from audit.judge import judge as run_judge
    from audit.judge import plan_llm_judge
    from audit.replay import load_book
    from audit.sample import resolve_sample_set
    from audit.tables import render_judge_summary

    con = audit_db.connect(db)
    book = load_book(con, prices) if judge else None
    if dry_run:
        if not judge:
            console.err.print("dry run: the automatic checks cost nothing; give --judge to estimate an LLM judge")
            return
        plan = plan_llm_judge(con, resolve_sample_set(con, sample), judge, book=book, gpu_hourly_usd=gpu_hourly_usd)
        p = plan.as_dict()
        console.err.print(f"judge {p['judge']}: {p['pending_calls']:,} calls pending ({p['already_done']:,} done), "
                          f"expected ${p['expected_cost_usd'] or 0:,.2f}, worst case ${p['worst_case_cost_usd'] or 0:,.2f} "
                          f"({p['price_source']}); dry run: nothing sent")
        if json:
            console.print_json(p)
        return
    with console.progress_bar("judge", None) as bar:

        def on_progress(p) -> None:
            label = {"checks": "checks", "judge": f"LLM judge · ${p.spent_usd:,.2f}", "decisions": "decisions"}[p.phase]
            bar.set(completed=p.done, total=p.total, description=f"judge: {label}")

        summary = run_judge(con, sample_set_id=sample, judge_spec=judge, threshold=threshold, book=book,
                            max_cost_usd=max_cost, gpu_hourly_usd=gpu_hourly_usd, on_progress=on_progress)
    render_judge_summary(summary)
    if json:
        console.print_json(summary)


@judge_app.command()
def calibrate(
    file: Annotated[Path, typer.Argument(help="Labelled pairs: a JSON array (or JSON lines) of {input, output_1, output_2, label: 1|2}.")],
    *,
    db: DbOption = Path(audit_db.DEFAULT_DB),
    judge: JudgeOption = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Use only the first N pairs.")] = None,
    max_cost: MaxCostOption = 1.00,
    gpu_hourly_usd: GpuOption = 3.00,
    prices: PricesOption = None,
    json: JsonOption = False,
) -> None:
    """Agreement of the automatic checks (and of --judge) with human labels: accuracy, tie rate, Cohen's kappa.

    Stored in `judge_calibrations`; the report shows it next to the verdicts.
    """
    from audit import console
    from audit.judge.calibrate import calibrate as run_calibrate
    from audit.judge.calibrate import load_labelled_pairs
    from audit.replay import load_book
    from audit.tables import render_calibration

    load_labelled_pairs(file)  # a bad file is reported before a database is created for it
    con = audit_db.connect(db)
    book = load_book(con, prices) if judge else None
    with console.progress_bar("calibrate", None) as bar:
        result = run_calibrate(con, file, judge_spec=judge, limit=limit, book=book, max_cost_usd=max_cost,
                               gpu_hourly_usd=gpu_hourly_usd,
                               on_progress=lambda done, total, spent: bar.set(completed=done, total=total,
                                                                              description=f"judge calls · ${spent:,.2f}"))
    render_calibration(result)
    if json:
        console.print_json(result)
