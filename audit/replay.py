"""``audit replay``: the sampled requests, run for real through cheaper candidate models.

Reads: ``sample_sets`` and ``samples`` (written by ``audit sample``),
``requests`` (the conversation, temperature, max_tokens, logged token counts
and latency), ``request_costs`` (what the original call cost, for the
comparison) and ``analysis_runs`` (the price file of the last analyze: catalog
overrides and its ``[candidates]`` table). Writes: ``replay_runs`` (one row
per candidate per invocation: prices, device, throughput, cost) and
``replays`` (one row per sample set × request × candidate: the answer, or the
error and its kind).

Resuming
--------
Every answer is stored the moment it arrives (``INSERT OR REPLACE`` on the
key sample set × request × candidate), so a run killed in any way loses only
the calls in flight. A rerun sends only what is *pending*: requests of the
sample set without a row, or whose row is a transient error (timeout, rate
limit, server error, dropped connection: nothing was billed). ``ok`` rows and
final errors (context overflow, bad request, refusal) are never sent again
unless ``--retry-errors``. A run that was killed is found ``running`` by the
next one, marked ``interrupted`` and priced from what it had recorded.

Pricing (every candidate has a price, or the replay refuses to start)
--------------------------------------------------------------------
- ``input_price`` and ``output_price`` options (USD per 1M tokens): ``options``;
- ``pricing=gpu``, and by default every ``vllm`` candidate: ``gpu-hour``.
  DESIGN.md's formula, GPU $/hour ÷ (tokens/s × 3600) × 10⁶, with tokens/s
  = (prompt + output tokens) ÷ wall time *measured by this run* and the rate
  of ``--gpu-hourly-usd`` (default $3.00/h, a typical on-demand price for one
  data-centre GPU in 2025). The price therefore exists only once the run ends;
  a run's cost is exactly its wall time at the hourly rate. A small run
  under-fills the batch and measures a pessimistic throughput.
- otherwise (``openai`` candidates) the price catalog (``genai-prices``, with
  the price file's overrides and aliases) for the model named, on the
  ledger's last day, like the ledger itself; ``provider=`` picks the provider.

Cost control
------------
Before anything is sent the plan prints, per candidate, the requests pending
and the expected cost (the original's logged token counts at the candidate's
price) and the worst case (the original's input + 25% for another tokenizer, and
the full ``max_tokens``).
Candidates priced per token (catalog, options) are *paid*: if their summed
worst case exceeds ``max_cost_usd`` the replay refuses to start; during the
run, a request is only sent while spent + in-flight worst cases stay within
it (status ``stopped_at_budget`` otherwise: what was not sent stays pending).
A self-hosted (gpu-hour) candidate costs machine time, not an invoice: it is
estimated (from an earlier run's throughput when there is one), never refused.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from audit.backends import (
    TRANSIENT_ERRORS,
    Candidate,
    Engine,
    ReplayItem,
    ReplayResult,
    candidates_from_table,
    open_engine,
    parse_candidate,
    replay_max_tokens,
    replay_messages,
    request_seed,
)
from audit.db import fetch_dicts
from audit.sample import resolve_sample_set
from audit.errors import ConfigError
from audit.pricing import (
    PriceBook,
    load_price_book,
    price_book_of_last_run,
    price_quote,
    reference_day,
    self_hosted_price_per_million,
)

DEFAULT_CANDIDATE = "smollm2=vllm:smollm2"
DEFAULT_GPU_HOURLY_USD = 3.00
DEFAULT_MAX_COST_USD = 1.00
# The run row is refreshed this often, so a killed run can still be priced.
RUN_REFRESH_SECONDS = 5.0
WORST_CASE_INPUT_MARGIN = 1.25


# --------------------------------------------------------------------------- candidates and prices


def resolve_candidates(given: Sequence[str], book: PriceBook) -> list[Candidate]:
    """``--candidate`` values, else the price file's ``[candidates]``, else the packaged default."""
    if given:
        candidates = [parse_candidate(text) for text in given]
    elif book.candidates:
        candidates = candidates_from_table(book.candidates, str(book.path))
    else:
        candidates = [parse_candidate(DEFAULT_CANDIDATE)]
    names = Counter(c.name for c in candidates)
    twice = [name for name, n in names.items() if n > 1]
    if twice:
        raise ConfigError(f"candidate name {twice[0]!r} is given twice", "give each candidate its own NAME=")
    return candidates


@dataclass(frozen=True)
class CandidatePrice:
    pricing: str                      # 'catalog' | 'options' | 'gpu-hour'
    input_per_m: float | None         # USD per 1M tokens; gpu-hour: known after the run
    output_per_m: float | None
    gpu_hourly_usd: float | None
    source: str

    @property
    def paid_per_token(self) -> bool:
        return self.pricing != "gpu-hour"

    def cost(self, prompt_tokens: int | None, output_tokens: int | None) -> float | None:
        if self.input_per_m is None or self.output_per_m is None or prompt_tokens is None or output_tokens is None:
            return None
        return (prompt_tokens * self.input_per_m + output_tokens * self.output_per_m) / 1e6


def price_candidate(candidate: Candidate, *, gpu_hourly_usd: float, day: Any, book: PriceBook) -> CandidatePrice:
    """The price rule of this module's docstring; ConfigError when a candidate cannot be priced."""
    pricing = candidate.option("pricing")
    if pricing not in (None, "catalog", "gpu", "options"):
        raise ConfigError(f"candidate {candidate.name}: pricing={pricing!r}", "use pricing=catalog, pricing=gpu or pricing=options")
    input_price = candidate.float_option("input_price", None)
    output_price = candidate.float_option("output_price", None)
    if (input_price is None) != (output_price is None):
        raise ConfigError(f"candidate {candidate.name}: give both input_price and output_price (USD per 1M tokens)", None)
    if pricing == "options" or (pricing is None and input_price is not None):
        if input_price is None:
            raise ConfigError(f"candidate {candidate.name}: pricing=options needs input_price and output_price",
                              "add ?input_price=0.15&output_price=0.60 (USD per 1M tokens)")
        return CandidatePrice("options", input_price, output_price, None, "candidate options")
    if pricing == "gpu" or (pricing is None and candidate.engine in ("vllm", "fake")):
        if gpu_hourly_usd <= 0:
            raise ConfigError(f"--gpu-hourly-usd must be positive, not {gpu_hourly_usd}", "pass your GPU's price per hour, e.g. 3.00")
        return CandidatePrice("gpu-hour", None, None, gpu_hourly_usd,
                              f"${gpu_hourly_usd:g}/GPU-hour ÷ (measured tokens/s × 3600) × 10⁶")
    quoted = price_quote(candidate.option("provider"), candidate.model, day, book)
    if quoted is None:
        raise ConfigError(f"candidate {candidate.name}: no catalog price for {candidate.model!r}"
                          + (f" (provider {candidate.option('provider')})" if candidate.option("provider") else ""),
                          "name a catalog model (provider=... helps), add ?input_price=..&output_price=.. (USD per 1M), "
                          "or price a self-hosted server by GPU time with ?pricing=gpu")
    price, source = quoted
    return CandidatePrice("catalog", price.input, price.output, None, source)


def worst_case_cost(price: CandidatePrice, item: ReplayItem) -> float:
    """The most one request can cost: its logged input with a margin for the candidate's own tokenizer
    (they differ by 10-20% on English), and the whole max_tokens."""
    return price.cost(math.ceil(item.expected_input_tokens * WORST_CASE_INPUT_MARGIN), item.max_tokens) or 0.0


# --------------------------------------------------------------------------- the plan


@dataclass
class CandidatePlan:
    candidate: Candidate
    price: CandidatePrice
    items: list[ReplayItem]
    already_done: int                 # ok or final error rows from earlier runs
    expected_cost_usd: float | None
    worst_case_cost_usd: float | None
    expected_seconds: float | None
    basis: str                        # what the estimates rest on

    def as_dict(self) -> dict[str, Any]:
        c, p = self.candidate, self.price
        return {"candidate": c.name, "spec": c.spec, "engine": c.engine, "model": c.model,
                "pricing": p.pricing, "price_source": p.source, "input_price_per_m": p.input_per_m,
                "output_price_per_m": p.output_per_m, "gpu_hourly_usd": p.gpu_hourly_usd,
                "paid_per_token": p.paid_per_token, "pending": len(self.items), "already_done": self.already_done,
                "expected_cost_usd": self.expected_cost_usd, "worst_case_cost_usd": self.worst_case_cost_usd,
                "expected_seconds": self.expected_seconds, "estimate_basis": self.basis}


@dataclass
class ReplayPlan:
    sample_set_id: str
    per_template: int | None
    retry_errors: bool
    candidates: list[CandidatePlan]

    @property
    def paid_worst_case_usd(self) -> float:
        return sum(p.worst_case_cost_usd or 0.0 for p in self.candidates if p.price.paid_per_token)

    def as_dict(self) -> dict[str, Any]:
        return {"sample_set_id": self.sample_set_id, "per_template": self.per_template,
                "retry_errors": self.retry_errors, "paid_worst_case_usd": self.paid_worst_case_usd,
                "candidates": [p.as_dict() for p in self.candidates]}


def _check_same_model(con: duckdb.DuckDBPyConnection, set_id: str, candidate: Candidate) -> None:
    """A name means one engine:model within a sample set, or its rows would mix two models."""
    rows = con.execute("SELECT DISTINCT engine, model FROM replay_runs WHERE sample_set_id = ? AND candidate = ?",
                       [set_id, candidate.name]).fetchall()
    for engine, model in rows:
        if (engine, model) != (candidate.engine, candidate.model):
            raise ConfigError(f"candidate {candidate.name} was replayed on {set_id} as {engine}:{model}, "
                              f"not {candidate.engine}:{candidate.model}",
                              "give the new model another name (NAME=...)")


def _pending_rows(con: duckdb.DuckDBPyConnection, set_id: str, candidate: str, per_template: int | None,
                  retry_errors: bool) -> tuple[list[dict[str, Any]], int]:
    rows = fetch_dicts(con, """
        SELECT s.request_id, s.template_id, s.draw_rank, r.messages, r.temperature, r.max_tokens,
               r.input_tokens, r.output_tokens, r.latency_ms,
               p.status AS replay_status, p.error_kind
        FROM samples s JOIN requests r USING (request_id)
        LEFT JOIN replays p ON p.sample_set_id = s.sample_set_id AND p.request_id = s.request_id AND p.candidate = ?
        WHERE s.sample_set_id = ? AND (?::BIGINT IS NULL OR s.draw_rank <= ?)
        ORDER BY s.template_id, s.draw_rank""", [candidate, set_id, per_template, per_template])
    pending = [r for r in rows if r["replay_status"] is None
               or (r["replay_status"] == "error" and (retry_errors or r["error_kind"] in TRANSIENT_ERRORS))]
    return pending, len(rows) - len(pending)


def _item(row: dict[str, Any], candidate: Candidate) -> ReplayItem:
    max_tokens = replay_max_tokens(row["output_tokens"], row["max_tokens"])
    cap = candidate.int_option("max_tokens", None)
    if cap is not None:
        max_tokens = max(1, min(max_tokens, cap))
    temperature = candidate.float_option("temperature", None)
    if temperature is None and row["temperature"] is not None:
        temperature = float(row["temperature"])
    return ReplayItem(row["request_id"], replay_messages(row["messages"]), max_tokens, temperature,
                      request_seed(row["request_id"]), int(row["input_tokens"] or 0), int(row["output_tokens"] or 0))


def _last_throughput(con: duckdb.DuckDBPyConnection, candidate: Candidate) -> float | None:
    rows = con.execute(
        """SELECT tokens_per_second FROM replay_runs
           WHERE engine = ? AND model = ? AND tokens_per_second > 0 AND status IN ('finished', 'stopped_at_budget')
           ORDER BY run_id DESC LIMIT 1""", [candidate.engine, candidate.model]).fetchall()
    return rows[0][0] if rows else None


def plan_replay(
    con: duckdb.DuckDBPyConnection,
    candidates: Sequence[Candidate],
    *,
    book: PriceBook,
    sample_set_id: str | None = None,
    per_template: int | None = None,
    retry_errors: bool = False,
    gpu_hourly_usd: float = DEFAULT_GPU_HOURLY_USD,
) -> ReplayPlan:
    """What each candidate has left to replay, at what price, with cost and time estimates. Sends nothing."""
    if per_template is not None and per_template < 1:
        raise ConfigError(f"--per-template must be at least 1, not {per_template}", "e.g. --per-template 5")
    set_id = resolve_sample_set(con, sample_set_id)
    day = reference_day(con)
    plans = []
    for candidate in candidates:
        _check_same_model(con, set_id, candidate)
        price = price_candidate(candidate, gpu_hourly_usd=gpu_hourly_usd, day=day, book=book)
        rows, done = _pending_rows(con, set_id, candidate.name, per_template, retry_errors)
        items = [_item(row, candidate) for row in rows]
        expected_tokens = sum(i.expected_input_tokens + i.expected_output_tokens for i in items)
        if price.paid_per_token:
            expected = sum(price.cost(i.expected_input_tokens, i.expected_output_tokens) or 0.0 for i in items)
            worst = sum(worst_case_cost(price, i) for i in items)
            basis = "the originals' logged token counts at the candidate's price; worst case: +25% input, the full max_tokens"
        else:
            expected = worst = None
            basis = "self-hosted: priced by the throughput this run measures"
        seconds = None
        if candidate.engine == "openai":
            latencies = [r["latency_ms"] for r in rows if r["latency_ms"] is not None]
            if latencies:
                mean = sum(latencies) / len(latencies)
                seconds = mean * len(rows) / 1000 / max(1, candidate.int_option("concurrency", 8) or 1)
                basis += "; time from the originals' logged latency at the candidate's concurrency"
        else:
            throughput = _last_throughput(con, candidate)
            if throughput:
                seconds = expected_tokens / throughput
                if not price.paid_per_token:
                    expected = worst = seconds / 3600 * gpu_hourly_usd
                    basis = f"an earlier run's {throughput:,.0f} tokens/s at ${gpu_hourly_usd:g}/GPU-hour"
        plans.append(CandidatePlan(candidate, price, items, done, expected, worst, seconds, basis))
    return ReplayPlan(set_id, per_template, retry_errors, plans)


# --------------------------------------------------------------------------- running


@dataclass
class ReplayProgress:
    """What the CLI's progress display shows; the core never imports rich."""

    candidate: str
    phase: str                        # 'loading' | 'running' | 'done'
    done: int = 0
    total: int = 0
    ok: int = 0
    errors: int = 0
    tokens_per_second: float | None = None
    spent_usd: float = 0.0            # paid candidates: cost of the answers so far (all candidates of this replay)


@dataclass
class _RunCounters:
    ok: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    error_kinds: Counter = field(default_factory=Counter)


EngineFactory = Callable[[Candidate], Engine]


def replay(
    con: duckdb.DuckDBPyConnection,
    plan: ReplayPlan,
    *,
    max_cost_usd: float = DEFAULT_MAX_COST_USD,
    engine_factory: EngineFactory = open_engine,
    on_progress: Callable[[ReplayProgress], None] | None = None,
) -> dict[str, Any]:
    """Run every candidate's pending requests (one engine at a time) and return the summary."""
    if max_cost_usd < 0:
        raise ConfigError(f"--max-cost must be 0 or more, not {max_cost_usd}", "e.g. --max-cost 5")
    if plan.paid_worst_case_usd > max_cost_usd + 1e-12:
        raise ConfigError(f"this replay could cost up to ${plan.paid_worst_case_usd:,.2f} at API prices, above --max-cost "
                          f"${max_cost_usd:,.2f}",
                          f"raise --max-cost to {plan.paid_worst_case_usd:,.2f} or more, or replay fewer with --per-template K "
                          "(see the estimate with --dry-run)")
    close_stale_runs(con)
    report = on_progress or (lambda progress: None)
    budget = Budget(max_cost_usd)
    runs = []
    for candidate_plan in plan.candidates:
        if not candidate_plan.items:
            runs.append(None)
            continue
        runs.append(_run_candidate(con, plan.sample_set_id, candidate_plan, budget, engine_factory, report))
    return replay_summary(con, plan, runs)


class Budget:
    """Spend of paid answers so far plus the worst case of those in flight, against --max-cost."""

    def __init__(self, max_cost_usd: float) -> None:
        self.limit = max_cost_usd
        self.spent = 0.0
        self.reserved: dict[str, float] = {}

    def admit(self, request_id: str, worst_case: float) -> bool:
        if self.spent + sum(self.reserved.values()) + worst_case > self.limit + 1e-12:
            return False
        self.reserved[request_id] = worst_case
        return True

    def settle(self, request_id: str, cost: float | None) -> None:
        self.reserved.pop(request_id, None)
        self.spent += cost or 0.0


def prepare_items(engine: Engine, items: Sequence[ReplayItem],
                  on_unfit: Callable[[ReplayResult], None]) -> list[ReplayItem]:
    """Each item fitted to the engine's context window; one that cannot fit becomes a final error, handed
    to ``on_unfit`` at once (never sent)."""
    ready = []
    for item in items:
        prepared = engine.prepare(item)
        if isinstance(prepared, ReplayResult):
            on_unfit(prepared)
        else:
            ready.append(prepared)
    return ready


class Admitted:
    """The items an engine may send, in order: each only while the budget holds its worst case (paid
    prices); at the first that does not fit, the rest stay pending and ``stopped_at_budget`` is set."""

    def __init__(self, items: list[ReplayItem], price: CandidatePrice, budget: Budget) -> None:
        self.items, self.price, self.budget = items, price, budget
        self.stopped_at_budget = False

    def __iter__(self):
        for item in self.items:
            if self.price.paid_per_token and not self.budget.admit(item.request_id, worst_case_cost(self.price, item)):
                self.stopped_at_budget = True
                return
            yield item


def _run_candidate(con: duckdb.DuckDBPyConnection, set_id: str, candidate_plan: CandidatePlan, budget: Budget,
                   engine_factory: EngineFactory, report: Callable[[ReplayProgress], None]) -> int:
    candidate, price = candidate_plan.candidate, candidate_plan.price
    total = len(candidate_plan.items)
    report(ReplayProgress(candidate.name, "loading", total=total, spent_usd=budget.spent))
    run_id = con.execute(
        """INSERT INTO replay_runs (sample_set_id, candidate, engine, model, spec, pricing, input_price_per_m,
                                    output_price_per_m, gpu_hourly_usd, price_source, started_at, status,
                                    requests_planned, expected_cost_usd, worst_case_cost_usd)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, now()::TIMESTAMP, 'running', ?, ?, ?) RETURNING run_id""",
        [set_id, candidate.name, candidate.engine, candidate.model, candidate.spec, price.pricing, price.input_per_m,
         price.output_per_m, price.gpu_hourly_usd, price.source, total, candidate_plan.expected_cost_usd,
         candidate_plan.worst_case_cost_usd]).fetchall()[0][0]
    counters = _RunCounters()
    loading_started = time.monotonic()
    started = None
    status = "failed"
    try:
        engine = engine_factory(candidate)
        try:
            info = engine.info
            con.execute("UPDATE replay_runs SET device = ?, engine_version = ?, context_window = ?, startup_seconds = ? "
                        "WHERE run_id = ?", [info.device, info.version, info.context_window, time.monotonic() - loading_started, run_id])
            done = 0
            last_refresh = time.monotonic()

            def store(result: ReplayResult, item: ReplayItem) -> None:
                nonlocal done, last_refresh
                cost = price.cost(result.prompt_tokens, result.output_tokens) if price.paid_per_token else None
                _store(con, set_id, candidate.name, run_id, result, item, cost)
                if result.status == "ok":
                    counters.ok += 1
                else:
                    counters.errors += 1
                    counters.error_kinds[result.error_kind or "unknown"] += 1
                counters.prompt_tokens += result.prompt_tokens or 0
                counters.output_tokens += result.output_tokens or 0
                if price.paid_per_token:
                    budget.settle(result.request_id, cost)
                done += 1
                wall = time.monotonic() - started if started else 0.0
                now = time.monotonic()
                if now - last_refresh >= RUN_REFRESH_SECONDS:
                    _refresh_run(con, run_id, counters, wall)
                    last_refresh = now
                rate = (counters.prompt_tokens + counters.output_tokens) / wall if wall > 0 else None
                report(ReplayProgress(candidate.name, "running", done, total, counters.ok, counters.errors, rate, budget.spent))

            originals = {item.request_id: item for item in candidate_plan.items}
            admitted = Admitted(prepare_items(engine, candidate_plan.items, lambda r: store(r, originals[r.request_id])),
                                price, budget)
            by_id = {item.request_id: item for item in admitted.items}
            report(ReplayProgress(candidate.name, "running", done, total, spent_usd=budget.spent))
            started = time.monotonic()
            engine.run(admitted, lambda result: store(result, by_id[result.request_id]))
            status = "stopped_at_budget" if admitted.stopped_at_budget else "finished"
        finally:
            engine.close()
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        wall = time.monotonic() - started if started else None
        _refresh_run(con, run_id, counters, wall)
        finish_run(con, run_id, status)
        report(ReplayProgress(candidate.name, "done", counters.ok + counters.errors, total, counters.ok,
                              counters.errors, None, budget.spent))
    return run_id


def _store(con: duckdb.DuckDBPyConnection, set_id: str, candidate: str, run_id: int, result: ReplayResult,
           item: ReplayItem, cost: float | None) -> None:
    con.execute(
        """INSERT OR REPLACE INTO replays VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, now()::TIMESTAMP)""",
        [set_id, result.request_id, candidate, run_id, result.status, result.error_kind, result.error_message,
         result.response_text, result.finish_reason, result.prompt_tokens, result.output_tokens, result.latency_ms,
         cost, item.temperature, item.max_tokens, result.truncated_messages, result.attempts])


def _refresh_run(con: duckdb.DuckDBPyConnection, run_id: int, counters: _RunCounters, wall: float | None) -> None:
    con.execute(
        """UPDATE replay_runs SET requests_ok = ?, requests_error = ?, prompt_tokens = ?, output_tokens = ?,
                                  wall_seconds = ? WHERE run_id = ?""",
        [counters.ok, counters.errors, counters.prompt_tokens, counters.output_tokens, wall, run_id])


def finish_run(con: duckdb.DuckDBPyConnection, run_id: int, status: str) -> None:
    """Close a run: throughput from its recorded tokens and wall time; a gpu-hour run gets its price here,
    and so do its answers (cost = tokens × that price, so the run's cost is its wall time at the hourly rate)."""
    con.execute(
        """UPDATE replay_runs SET
               tokens_per_second = CASE WHEN wall_seconds > 0 THEN (prompt_tokens + output_tokens) / wall_seconds END,
               output_tokens_per_second = CASE WHEN wall_seconds > 0 THEN output_tokens / wall_seconds END
           WHERE run_id = ?""", [run_id])
    pricing, gpu_hourly, throughput = con.execute(
        "SELECT pricing, gpu_hourly_usd, tokens_per_second FROM replay_runs WHERE run_id = ?", [run_id]).fetchall()[0]
    if pricing == "gpu-hour" and throughput:
        per_million = self_hosted_price_per_million(gpu_hourly, throughput)
        con.execute("UPDATE replay_runs SET input_price_per_m = ?, output_price_per_m = ? WHERE run_id = ?",
                    [per_million, per_million, run_id])
        con.execute("""UPDATE replays SET cost_usd = (prompt_tokens + output_tokens) * ? / 1e6
                       WHERE run_id = ? AND prompt_tokens IS NOT NULL AND output_tokens IS NOT NULL""",
                    [per_million, run_id])
    con.execute(
        """UPDATE replay_runs SET status = ?, finished_at = now()::TIMESTAMP,
               cost_usd = (SELECT sum(cost_usd) FROM replays WHERE replays.run_id = replay_runs.run_id)
           WHERE run_id = ?""", [status, run_id])


def close_stale_runs(con: duckdb.DuckDBPyConnection) -> int:
    """Runs still 'running' were killed (the database admits one writer): mark them interrupted and price them."""
    stale = [r[0] for r in con.execute("SELECT run_id FROM replay_runs WHERE status = 'running'").fetchall()]
    for run_id in stale:
        finish_run(con, run_id, "interrupted")
    return len(stale)


# --------------------------------------------------------------------------- reading results back


def replay_totals(con: duckdb.DuckDBPyConnection, set_id: str) -> list[dict[str, Any]]:
    """Per candidate on a sample set: answers, errors by kind, tokens, cost, and what the originals of the
    answered requests cost (list price), read from ``replays`` and ``request_costs``."""
    rows = fetch_dicts(con, """
        WITH latest AS (
            SELECT candidate, arg_max(run_id, run_id) AS run_id FROM replay_runs WHERE sample_set_id = ? GROUP BY candidate)
        SELECT p.candidate,
               any_value(l.run_id) AS latest_run_id,
               (SELECT count(*) FROM samples WHERE sample_set_id = ?) AS samples,
               count(*) FILTER (WHERE p.status = 'ok') AS ok,
               count(*) FILTER (WHERE p.status = 'error') AS errors,
               count(*) FILTER (WHERE p.finish_reason = 'length') AS hit_max_tokens,
               count(*) FILTER (WHERE p.truncated_messages > 0) AS truncated,
               coalesce(sum(p.prompt_tokens), 0) AS prompt_tokens,
               coalesce(sum(p.output_tokens), 0) AS output_tokens,
               sum(p.cost_usd) FILTER (WHERE p.status = 'ok') AS cost_usd,
               count(*) FILTER (WHERE p.status = 'ok' AND p.cost_usd IS NULL) AS ok_unpriced,
               sum(c.cost_usd) FILTER (WHERE p.status = 'ok') AS original_cost_usd,
               count(*) FILTER (WHERE p.status = 'ok' AND c.cost_usd IS NULL) AS ok_original_unpriced
        FROM replays p LEFT JOIN request_costs c USING (request_id) LEFT JOIN latest l USING (candidate)
        WHERE p.sample_set_id = ?
        GROUP BY p.candidate ORDER BY p.candidate""", [set_id, set_id, set_id])
    kinds = con.execute("""SELECT candidate, error_kind, count(*) FROM replays
                           WHERE sample_set_id = ? AND status = 'error' GROUP BY ALL ORDER BY 3 DESC, 2""",
                        [set_id]).fetchall()
    for row in rows:
        row["error_kinds"] = {kind: n for candidate, kind, n in kinds if candidate == row["candidate"]}
        row["pending"] = row["samples"] - row["ok"] - row["errors"]
        both = row["cost_usd"] is not None and row["original_cost_usd"] and not row["ok_unpriced"] \
            and not row["ok_original_unpriced"]
        row["cost_ratio"] = row["cost_usd"] / row["original_cost_usd"] if both else None
    return rows


def replay_summary(con: duckdb.DuckDBPyConnection, plan: ReplayPlan, run_ids: list[int | None]) -> dict[str, Any]:
    totals = {row["candidate"]: row for row in replay_totals(con, plan.sample_set_id)}
    out = plan.as_dict()
    for entry, run_id in zip(out["candidates"], run_ids):
        entry["run"] = _run_row(con, run_id) if run_id is not None else None
        entry["totals"] = totals.get(entry["candidate"])
    return out


def _run_row(con: duckdb.DuckDBPyConnection, run_id: int) -> dict[str, Any]:
    row = fetch_dicts(con, "SELECT * FROM replay_runs WHERE run_id = ?", [run_id])[0]
    row["error_kinds"] = dict(con.execute(
        "SELECT error_kind, count(*) FROM replays WHERE run_id = ? AND status = 'error' GROUP BY ALL ORDER BY 2 DESC",
        [run_id]).fetchall())
    return row


def load_book(con: duckdb.DuckDBPyConnection, prices_path: Path | None) -> PriceBook:
    """``--prices`` when given, else the price file the last ``audit analyze`` used (else ./audit.toml)."""
    if prices_path is not None:
        return load_price_book(prices_path)
    return price_book_of_last_run(con)
