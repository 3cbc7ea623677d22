"""``audit run``: ingest → analyze → sample → replay → judge → report, end to end, with defaults.

Reads and writes every stage's tables, through the stages themselves
(``audit.ingest``, ``audit.analyze``, ``audit.sample``, ``audit.replay``,
``audit.judge``, ``audit.report``, ``audit.exports``); it adds no table.

Rerunning reuses what is finished:
- ingest skips files already ingested (by content hash) and calls already in
  the ledger;
- analyze runs again only when the ledger changed since the last finished
  analysis (a file was ingested after it started) or its parameters (price
  file) differ;
- the sample set (``n``, ``seed``) is drawn again only when analyze ran;
  drawing is deterministic, so the same ledger gives the same requests and
  their replays stay valid;
- replay sends only what has no answer yet (``audit.replay``), the LLM judge
  only the calls not yet made (``audit.judge``); the checks, the decisions
  and the report are recomputed (seconds).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from audit.findings import Settings
from audit.judge.decisions import DEFAULT_THRESHOLD, check_threshold
from audit.replay import DEFAULT_GPU_HOURLY_USD, DEFAULT_MAX_COST_USD
from audit.sample import DEFAULT_MIN_PER_TEMPLATE, DEFAULT_N, DEFAULT_SEED, sample_set_id

STAGES = ("ingest", "analyze", "sample", "replay", "judge", "report")


@dataclass
class RunOptions:
    sampled_fraction: float = 1.0
    prices: Path | None = None
    n: int = DEFAULT_N
    seed: int = DEFAULT_SEED
    candidates: Sequence[str] = ()
    per_template: int | None = None
    judge_spec: str | None = None
    threshold: float = DEFAULT_THRESHOLD
    max_cost_usd: float = DEFAULT_MAX_COST_USD
    gpu_hourly_usd: float = DEFAULT_GPU_HOURLY_USD
    revenue_monthly_usd: float | None = None
    growth_pct_per_month: float | None = None
    revenue_growth_pct_per_month: float = 0.0
    out: Path | None = None
    routing_out: Path | None = None
    redact: bool = True
    settings: Settings = field(default_factory=Settings)


@dataclass
class StageEvent:
    """What the CLI's one progress display shows; the core never imports rich."""

    stage: str
    status: str              # 'running' | 'done' | 'reused' | 'progress'
    detail: str = ""
    done: float | None = None
    total: float | None = None


def analysis_is_current(con: duckdb.DuckDBPyConnection, prices: Path | None, settings: Settings) -> bool:
    """True when the last finished analysis saw this ledger, with these parameters."""
    rows = con.execute("""SELECT started_at, parameters FROM analysis_runs WHERE finished_at IS NOT NULL
                          ORDER BY run_id DESC LIMIT 1""").fetchall()
    if not rows:
        return False
    started_at, parameters = rows[0]
    parameters = json.loads(parameters) if isinstance(parameters, str) else parameters
    if parameters.get("prices") != (str(prices) if prices else None) or parameters.get("settings") != asdict(settings):
        return False
    newer = con.execute("SELECT count(*) FROM ingest_files WHERE ingested_at >= ?", [started_at]).fetchall()[0][0]
    return newer == 0


def check_options(options: RunOptions) -> None:
    """Options that would only fail at a late stage fail now, before any work (one-line errors)."""
    from audit.backends import parse_candidate
    from audit.report import check_revenue

    for spec in options.candidates:
        parse_candidate(spec)
    if options.judge_spec:
        parse_candidate(options.judge_spec)
    check_threshold(options.threshold)
    check_revenue(options.revenue_monthly_usd)


def run_pipeline(con: duckdb.DuckDBPyConnection, files: Sequence[Path], options: RunOptions, *,
                 on_event: Callable[[StageEvent], None] | None = None) -> dict[str, Any]:
    """Every stage in order; returns each stage's summary (and the report's path)."""
    from audit.analyze import analyze
    from audit.exports import write_routing_plan
    from audit.ingest import ingest
    from audit.judge import judge
    from audit.replay import load_book, plan_replay, replay, resolve_candidates
    from audit.report import ReportOptions
    from audit.report.render import write_report
    from audit.sample import draw_sample, sample_plan

    emit = on_event or (lambda event: None)
    results: dict[str, Any] = {}
    check_options(options)

    emit(StageEvent("ingest", "running", f"{len(files)} files"))
    summary = ingest(con, list(files), sampled_fraction=options.sampled_fraction,
                     on_progress=lambda path, phase, percent: emit(StageEvent("ingest", "progress", f"{phase} {path.name}")))
    results["ingest"] = summary.as_dict()
    totals = results["ingest"]["totals"]
    skipped = sum(1 for f in results["ingest"]["files"] if (f.get("skipped") or "").startswith("already ingested"))
    if skipped == len(files):
        emit(StageEvent("ingest", "reused", f"all {skipped} files were ingested before"))
    else:
        emit(StageEvent("ingest", "done", f"read {totals['read']:,} = stored {totals['stored']:,} + duplicate "
                                          f"{totals['duplicate']:,} + rejected {totals['rejected']:,}"
                                          + (f" ({skipped} files ingested before)" if skipped else "")))

    analysis_reused = analysis_is_current(con, options.prices, options.settings)
    if analysis_reused:
        emit(StageEvent("analyze", "reused", "the ledger has not changed since the last analysis"))
        results["analyze"] = None
    else:
        emit(StageEvent("analyze", "running", "prices, templates, task tiers, findings"))
        results["analyze"] = analyze(con, prices_path=options.prices, settings=options.settings)
        emit(StageEvent("analyze", "done", f"{len(results['analyze'].get('findings', []))} findings"))

    set_id = sample_set_id(options.n, options.seed, DEFAULT_MIN_PER_TEMPLATE)
    exists = con.execute("SELECT count(*) FROM sample_sets WHERE sample_set_id = ?", [set_id]).fetchall()[0][0]
    if analysis_reused and exists:
        results["sample"] = sample_plan(con, set_id)
        emit(StageEvent("sample", "reused", f"sample set {set_id}: {results['sample']['totals']['sampled']:,} requests"))
    else:
        emit(StageEvent("sample", "running", f"n={options.n}, seed={options.seed}"))
        results["sample"] = draw_sample(con, n=options.n, seed=options.seed)
        emit(StageEvent("sample", "done", f"sample set {set_id}: {results['sample']['totals']['sampled']:,} requests"))

    book = load_book(con, options.prices)
    plan = plan_replay(con, resolve_candidates(options.candidates, book), book=book, sample_set_id=set_id,
                       per_template=options.per_template, gpu_hourly_usd=options.gpu_hourly_usd)
    pending = sum(len(p.items) for p in plan.candidates)
    emit(StageEvent("replay", "running", f"{pending:,} requests pending, {len(plan.candidates)} candidates", 0, pending))

    def on_replay(p) -> None:
        rate = f" · {p.tokens_per_second:,.0f} tok/s" if p.tokens_per_second else ""
        phase = "loading the model" if p.phase == "loading" else f"{p.done}/{p.total}{rate} · ${p.spent_usd:,.2f} spent"
        emit(StageEvent("replay", "progress", f"{p.candidate}: {phase}", p.done, p.total))

    results["replay"] = replay(con, plan, max_cost_usd=options.max_cost_usd, on_progress=on_replay)
    emit(StageEvent("replay", "done" if pending else "reused",
                    f"{pending:,} sent" if pending else "every sampled request already has an answer"))

    emit(StageEvent("judge", "running", "checks" + (f" and the judge {options.judge_spec}" if options.judge_spec else "")))
    results["judge"] = judge(
        con, sample_set_id=set_id, judge_spec=options.judge_spec, threshold=options.threshold, book=book,
        max_cost_usd=options.max_cost_usd, gpu_hourly_usd=options.gpu_hourly_usd,
        on_progress=lambda p: emit(StageEvent("judge", "progress", p.phase, p.done, p.total)))
    decided = [d["decision"] for d in results["judge"]["decisions"]]
    emit(StageEvent("judge", "done", ", ".join(f"{decided.count(k)} {k}" for k in ("switch", "keep", "insufficient evidence"))))

    emit(StageEvent("report", "running", "the HTML report and the routing plan"))
    report_options = ReportOptions(revenue_monthly_usd=options.revenue_monthly_usd,
                                   growth_pct_per_month=options.growth_pct_per_month,
                                   revenue_growth_pct_per_month=options.revenue_growth_pct_per_month, sample_set_id=set_id)
    report_path = write_report(con, options.out, options=report_options, redact=options.redact)
    routing = write_routing_plan(con, options.routing_out or report_path.parent / "routing.yaml", sample_set_id=set_id)
    results["report"] = {"path": str(report_path), "routing_path": routing["path"]}
    emit(StageEvent("report", "done", str(report_path)))
    return results
