"""The ``audit`` command: one thin function per stage, no SQL here.

stdout is data (``--json``); messages, tables and progress go to stderr.
Every ``AuditError`` is printed once as a one-line message with what to do,
and the process exits non-zero without a traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from audit import db as audit_db
from audit.errors import AuditError

app = typer.Typer(
    name="audit",
    help=(
        "Audit what your company spends on LLM APIs, from your own request logs.\n\n"
        "Typical run: `audit run LOGS...` (ingest → analyze → sample → replay → judge → report), or each stage on its own. Every command takes `--db PATH`.\n\n"
        "Exit codes: 0 success; 1 a problem with input, options or the database (one line on stderr "
        "says what to do); 2 wrong usage; 3 an internal error (AUDIT_DEBUG=1 shows the traceback); "
        "130 interrupted."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)

from audit.cli_options import DbOption, JsonOption  # noqa: E402


@app.command()
def ingest(
    paths: Annotated[list[str], typer.Argument(help="Log files, globs or folders (recursive); .gz and .zst are read as is.", show_default=False)],
    *,
    db: DbOption = Path(audit_db.DEFAULT_DB),
    format: Annotated[Optional[str], typer.Option("--format", "-f", help="Force a format instead of detecting it. " + "Formats: see `audit formats`.")] = None,
    map: Annotated[Optional[list[str]], typer.Option("--map", help="For CSV/Parquet/JSONL tables: SOURCE_COLUMN=LEDGER_FIELD (repeatable).")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="The model that served calls whose log does not name one (ShareGPT, HF datasets, tables without a model column); never overrides a logged model.")] = None,
    sampled_fraction: Annotated[float, typer.Option("--sampled-fraction", help="Share of all calls the export holds (0.01 = a 1% sample); totals are scaled by 1/fraction.")] = 1.0,
    replace: Annotated[bool, typer.Option("--replace", help="Re-ingest a changed file: first remove what earlier versions of the same path stored.")] = False,
    json: JsonOption = False,
) -> None:
    """Read log exports into the ledger (`requests`); bad records go to `ingest_rejects`.

    Re-running is safe: files already ingested are skipped and calls already in
    the ledger are not added twice.
    """
    from audit import console
    from audit.formats.generic import parse_mapping
    from audit.ingest import expand_paths
    from audit.ingest import ingest as run_ingest

    mapping = parse_mapping(map or [])
    # Paths are checked (and folders walked, once) before the database is created.
    files = expand_paths(paths)
    n_files = len(files)
    con = audit_db.connect(db)
    # Each file is worth 100 units: half reading, half storing.
    with console.progress_bar("ingesting", n_files * 100, show_count=False) as bar:
        done_files = 0

        def on_progress(path, phase, percent) -> None:
            offset = 0 if phase == "reading" else 50
            bar.set(completed=done_files * 100 + offset + percent / 2,
                    description=f"{phase} {path.name} ({done_files + 1}/{n_files})")

        def on_file(result) -> None:
            nonlocal done_files
            done_files += 1
            bar.set(completed=done_files * 100)
            if result.skipped:
                console.err.print(f"[dim]skip[/] {result.path}: {result.skipped}")
            else:
                line = (f"[green]ok[/]   {result.path} [dim]({result.format})[/]: read {result.read:,} = "
                        f"stored {result.stored:,} + duplicate {result.duplicate:,} + rejected {result.rejected:,}")
                if result.counted:
                    line += f" [dim]· tokens counted for {result.counted:,}[/]"
                console.err.print(line)
                for reason, count in result.reject_reasons.items():
                    console.err.print(f"       [yellow]rejected[/] {count:,} × {reason}")

        summary = run_ingest(con, files, forced_format=format, mapping=mapping, default_model=model,
                             sampled_fraction=sampled_fraction, replace=replace, on_file=on_file,
                             on_progress=on_progress)
    t = summary.as_dict()["totals"]
    console.err.print(
        f"[bold]total[/]: read {t['read']:,} = stored {t['stored']:,} + duplicate {t['duplicate']:,} "
        f"+ rejected {t['rejected']:,} into {db}"
        + (" [dim](see rejects with `audit rejects`)[/]" if t["rejected"] else "")
    )
    if json:
        console.print_json(summary.as_dict())


@app.command()
def spend(*, db: DbOption = Path(audit_db.DEFAULT_DB), json: JsonOption = False,
          days: Annotated[int, typer.Option(help="How many of the latest days to list.")] = 14) -> None:
    """What was ingested: rows, rejects, date range; calls, tokens and logged cost by model and by day."""
    from audit import console
    from audit.spend import spend_summary

    summary = spend_summary(audit_db.connect(db, read_only=True))
    if json:
        console.print_json(summary)
        return
    from audit.tables import render_spend

    render_spend(summary, days=days)


@app.command()
def analyze(
    *,
    db: DbOption = Path(audit_db.DEFAULT_DB),
    prices: Annotated[Optional[Path], typer.Option("--prices", help="Price overrides (TOML): negotiated rates, model aliases, self-hosted GPU prices. Default: ./audit.toml when present.")] = None,
    invoice_total: Annotated[Optional[float], typer.Option("--invoice-total", help="Your monthly invoice in USD: shows how much of it the ledger explains.")] = None,
    cache_ttl_hours: Annotated[float, typer.Option("--cache-ttl-hours", help="Response-cache lifetime the cache detectors simulate.")] = 24.0,
    keep_turns: Annotated[int, typer.Option("--keep-turns", help="Turns of history the context-trimming estimate keeps.")] = 4,
    json: JsonOption = False,
) -> None:
    """Price every call, mine prompt templates, classify their task and tier, and find priced waste.

    Writes `request_costs`, `templates`, `request_templates` and `findings`; re-running rewrites them.
    """
    from audit import console
    from audit.analyze import analyze as run_analyze
    from audit.findings import Settings

    con = audit_db.connect(db)
    settings = Settings(cache_ttl_hours=cache_ttl_hours, context_keep_turns=keep_turns)
    with console.progress_bar("analyzing", None, show_count=False):
        summary = run_analyze(con, prices_path=prices, settings=settings, invoice_total_monthly=invoice_total)
    if json:
        console.print_json(summary)
        return
    from audit.tables import render_analysis

    render_analysis(summary)


@app.command()
def sample(
    *,
    db: DbOption = Path(audit_db.DEFAULT_DB),
    n: Annotated[int, typer.Option("--n", help="How many requests to sample; the per-template minimum can add a few.")] = 500,
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same sample.")] = 7,
    min_per_template: Annotated[int, typer.Option("--min-per-template", help="Take at least this many from every template with replayable requests (all of them when it has fewer).")] = 5,
    json: JsonOption = False,
) -> None:
    """Draw a seeded sample of replayable requests, stratified by template and allocated by spend.

    Writes `samples`, `sample_exclusions` and `sample_sets`; drawing the same `--n` and `--seed` again
    replaces that sample set. Requests that cannot be replayed faithfully (failed calls, tool calls,
    images or audio, no prompt or no reply) are excluded and counted by reason. Run `audit analyze` first.
    """
    from audit import console
    from audit.sample import draw_sample

    con = audit_db.connect(db)
    with console.progress_bar("sampling", None, show_count=False):
        plan = draw_sample(con, n=n, seed=seed, min_per_template=min_per_template)
    if json:
        console.print_json(plan)
        return
    from audit.tables import render_sample_plan

    render_sample_plan(plan)


@app.command()
def replay(
    *,
    db: DbOption = Path(audit_db.DEFAULT_DB),
    candidate: Annotated[Optional[list[str]], typer.Option("--candidate", "-c", help="NAME=ENGINE:MODEL[?key=value&...] (repeatable); ENGINE is vllm, openai or fake. Default: the [candidates] of the price file, else smollm2=vllm:smollm2.")] = None,
    sample: Annotated[Optional[str], typer.Option("--sample", help="The sample set to replay (e.g. n500-s7). Default: the latest drawn.")] = None,
    per_template: Annotated[Optional[int], typer.Option("--per-template", help="Replay only the first K sampled requests of each template (still an equal-probability sample).")] = None,
    gpu_hourly_usd: Annotated[float, typer.Option("--gpu-hourly-usd", help="What one GPU (or the machine serving a self-hosted candidate) costs per hour: prices self-hosted candidates with the measured throughput.")] = 3.00,
    max_cost: Annotated[float, typer.Option("--max-cost", help="Refuse to start when the worst case of the paid (per-token) candidates exceeds this many USD, and never spend more.")] = 1.00,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan and the estimate; send nothing.")] = False,
    retry_errors: Annotated[bool, typer.Option("--retry-errors", help="Send requests whose replay ended in a final error (context overflow, bad request, refusal) again.")] = False,
    prices: Annotated[Optional[Path], typer.Option("--prices", help="Price file (TOML) for catalog overrides and [candidates]. Default: the one the last `audit analyze` used, else ./audit.toml.")] = None,
    json: JsonOption = False,
) -> None:
    """Run the sampled requests through cheaper candidate models, for real; store every answer.

    Writes `replays` (one row per sample × candidate) and `replay_runs`. Resumable: a rerun sends only
    what has no answer yet (and transient errors). Paid APIs get an estimate first and a budget (--max-cost).
    Run `audit sample` first.
    """
    from audit import console
    from audit.replay import load_book, plan_replay, resolve_candidates
    from audit.replay import replay as run_replay
    from audit.tables import render_replay_plan, render_replay_summary

    con = audit_db.connect(db)
    book = load_book(con, prices)
    plan = plan_replay(con, resolve_candidates(candidate or [], book), book=book, sample_set_id=sample,
                       per_template=per_template, retry_errors=retry_errors, gpu_hourly_usd=gpu_hourly_usd)
    render_replay_plan(plan.as_dict())
    if dry_run:
        console.err.print("dry run: nothing sent")
        if json:
            console.print_json(plan.as_dict())
        return
    with console.progress_bar("replay", None) as bar:

        def on_progress(p) -> None:
            if p.phase == "loading":
                bar.set(completed=0, total=p.total, description=f"replay {p.candidate}: loading the model")
                return
            rate = f" · {p.tokens_per_second:,.0f} tok/s" if p.tokens_per_second else ""
            errors = f" · {p.errors} errors" if p.errors else ""
            bar.set(completed=p.done, total=p.total,
                    description=f"replay {p.candidate}{rate}{errors} · ${p.spent_usd:,.2f} spent")

        summary = run_replay(con, plan, max_cost_usd=max_cost, on_progress=on_progress)
    render_replay_summary(summary)
    if json:
        console.print_json(summary)


@app.command()
def rejects(*, db: DbOption = Path(audit_db.DEFAULT_DB), json: JsonOption = False,
            limit: Annotated[int, typer.Option(help="How many to list.")] = 50) -> None:
    """List records that could not be stored: file, line, reason."""
    from audit import console

    con = audit_db.connect(db, read_only=True)
    rows = con.execute(
        "SELECT path, line_no, reason, left(raw, 120) FROM ingest_rejects ORDER BY path, line_no LIMIT ?", [limit]
    ).fetchall()
    if json:
        console.print_json([dict(zip(["path", "line", "reason", "raw"], r)) for r in rows])
        return
    for path, line, reason, raw in rows:
        console.out.print(f"{path}:{line}: {reason}", markup=False)


@app.command()
def formats() -> None:
    """List the log formats `audit ingest` understands."""
    from audit import console
    from audit.formats import registry

    for f in registry():
        console.out.print(f"{f.name:24} {f.description}", markup=False)


@app.command()
def synth(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the generated export into.")],
    *,
    seed: Annotated[int, typer.Option(help="Same seed, same bytes.")] = 7,
    sampled_fraction: Annotated[Optional[float], typer.Option("--sampled-fraction", help="Share of the modelled traffic to emit (default: the committed sample's).")] = None,
    days: Annotated[int, typer.Option(help="Days of traffic, ending on --end-date.")] = 90,
    truth: Annotated[Optional[Path], typer.Option(help="Also write the ground truth (template of each request) here.")] = None,
    chat_jsonl: Annotated[Optional[int], typer.Option("--chat-jsonl", help="Instead: write N uncompressed OpenAI chat lines to OUT_DIR/chat.jsonl (benchmarks).")] = None,
) -> None:
    """Generate realistic, deterministic request logs (the committed `sample_logs/` come from here)."""
    from audit import console, synth as synth_module

    out_dir.mkdir(parents=True, exist_ok=True)
    if chat_jsonl:
        n = synth_module.generate_chat_jsonl(out_dir / "chat.jsonl", chat_jsonl, seed=seed)
        console.err.print(f"wrote {n:,} lines to {out_dir / 'chat.jsonl'}")
        return
    fraction = sampled_fraction if sampled_fraction is not None else synth_module.SAMPLE_LOGS_FRACTION
    summary = synth_module.generate(out_dir, seed=seed, sampled_fraction=fraction, days=days, truth_path=truth)
    console.err.print(
        f"wrote {summary.records:,} records ({fraction:g} of {summary.full_traffic_requests:,} modelled calls) "
        f"in {len(summary.files)} files under {out_dir}; last 30 days at list prices: ${summary.last30_full_cost_usd:,.0f}"
    )


# --------------------------------------------------------------------------- commands in their own modules
# (each module holds the thin typer functions of one stage; they import their options from cli_options)
from audit.cli_exports import export_dataset, export_routing  # noqa: E402
from audit.cli_judge import judge_app  # noqa: E402
from audit.cli_report import report  # noqa: E402
from audit.cli_review import review_app  # noqa: E402
from audit.cli_run import run  # noqa: E402

app.add_typer(judge_app, name="judge")
app.add_typer(review_app, name="review")
app.command(name="report")(report)
app.command(name="run")(run)
app.command(name="export-routing")(export_routing)
app.command(name="export-dataset")(export_dataset)


def main() -> None:
    """Entry point: run the app, turning AuditError into one line on stderr."""
    try:
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except AuditError as error:
        from audit import console

        console.print_error(error)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    except Exception as error:  # click's usage errors and aborts
        import click

        if isinstance(error, click.exceptions.ClickException):
            error.show()
            sys.exit(error.exit_code)
        if isinstance(error, click.exceptions.Abort):
            sys.exit(130)
        if os.environ.get("AUDIT_DEBUG"):
            raise
        # A bug of ours: still one line, and a way to see the details.
        sys.stderr.write(f"error: internal error {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''} "
                         "(rerun with AUDIT_DEBUG=1 for the traceback and report it)\n")
        sys.exit(3)
