"""``audit judge``: is each candidate's answer good enough, and with what confidence per template?

Reads: ``replays`` (the candidates' answers), ``requests`` (the conversation
and the production answer), ``samples`` and ``templates`` (task type, spend),
``request_costs``, ``analysis_runs`` (the price file, for a paid judge).
Writes: ``verdicts`` (per request × candidate: one row per automatic check,
``source = 'check'``; the LLM judge's, ``'judge'``; and the ``'final'``
pass/fail), ``judge_calls`` (the LLM judge's calls, resumable),
``decisions`` (per template × candidate) and ``movable_spend`` (per
candidate). Human verdicts (``source = 'human'``) are written by
``audit.review`` and override the others.

The stage, in order:
1. automatic, task-aware checks (``audit.judge.checks``) on every ok answer,
   recomputed each run (deterministic, no API, seconds);
2. the LLM judge (``audit.judge.llm_judge``), when one is given: pairwise,
   both orders, priced and budgeted like a replay; a rerun pays only for
   calls not yet made;
3. the final verdict per request and the decisions (``audit.judge.decisions``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import duckdb

from audit.backends import Candidate, Engine, last_user_text, open_engine, parse_candidate
from audit.errors import AuditError
from audit.judge.decisions import (
    DEFAULT_THRESHOLD,
    check_threshold,
    replace_verdicts,
    write_decisions,
    write_final_verdicts,
    write_movable_spend,
)
from audit.pricing import PriceBook
from audit.replay import DEFAULT_GPU_HOURLY_USD, DEFAULT_MAX_COST_USD
from audit.sample import resolve_sample_set

CHECK_BATCH = 256  # answer pairs checked (and embedded) at once


@dataclass
class JudgeProgress:
    """What the CLI shows; the core never imports rich."""

    phase: str          # 'checks' | 'judge' | 'decisions'
    done: int
    total: int
    spent_usd: float = 0.0


def run_checks(con: duckdb.DuckDBPyConnection, set_id: str, *, embedder: Any = None,
               on_progress: Callable[[int, int], None] | None = None) -> int:
    """Rewrite the ``source = 'check'`` verdicts of the sample set; returns the answers checked."""
    from audit.judge.checks import AnswerPair, check_answers
    from audit.judge.llm_judge import sample_pairs

    pairs = sample_pairs(con, set_id)
    rows = []  # embedder None: check_answers loads the packaged one, only if a free-text pair needs it
    for start in range(0, len(pairs), CHECK_BATCH):
        batch = pairs[start:start + CHECK_BATCH]
        results = check_answers([AnswerPair(p["task_type"], last_user_text(p["messages"]) or "", p["original_answer"] or "",
                                            p["candidate_answer"] or "") for p in batch], embedder)
        for pair, checks in zip(batch, results):
            rows.extend([set_id, pair["request_id"], pair["candidate"], "check", c.metric, c.score, c.threshold,
                         c.passed, c.gating, c.reason] for c in checks)
        if on_progress:
            on_progress(min(start + CHECK_BATCH, len(pairs)), len(pairs))
    replace_verdicts(con, set_id, "check", rows)
    return len(pairs)


def plan_llm_judge(con: duckdb.DuckDBPyConnection, set_id: str, judge_spec: str, *, book: PriceBook,
                   gpu_hourly_usd: float):
    """The judge calls still to make, priced (sends nothing)."""
    from audit.judge.llm_judge import plan_judge, sample_pairs

    return plan_judge(con, set_id, parse_candidate(judge_spec), sample_pairs(con, set_id), book=book,
                      gpu_hourly_usd=gpu_hourly_usd, count_tokens=count_tokens)


def count_tokens(texts: list[str]) -> list[int]:
    """Token counts for estimates (o200k_base: another judge's tokenizer is covered by the worst-case margin)."""
    from audit.tokens import get_encoding

    return [len(ids) for ids in get_encoding("o200k_base").encode_ordinary_batch(texts)]


def judge(
    con: duckdb.DuckDBPyConnection,
    *,
    sample_set_id: str | None = None,
    judge_spec: str | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    book: PriceBook | None = None,
    max_cost_usd: float = DEFAULT_MAX_COST_USD,
    gpu_hourly_usd: float = DEFAULT_GPU_HOURLY_USD,
    embedder: Any = None,
    engine_factory: Callable[[Candidate], Engine] = open_engine,
    on_progress: Callable[[JudgeProgress], None] | None = None,
) -> dict[str, Any]:
    """Checks, the LLM judge (when ``judge_spec``), final verdicts and decisions; returns the summary."""
    check_threshold(threshold)
    set_id = resolve_sample_set(con, sample_set_id)
    replayed = con.execute("SELECT count(*) FROM replays WHERE sample_set_id = ?", [set_id]).fetchall()[0][0]
    if not replayed:
        raise AuditError(f"nothing to judge: sample set {set_id} has no replays", "run `audit replay` first")
    report = on_progress or (lambda progress: None)
    plan = None
    if judge_spec:
        # Priced and refused (above --max-cost) before any work.
        plan = plan_llm_judge(con, set_id, judge_spec, book=book or PriceBook(), gpu_hourly_usd=gpu_hourly_usd)
        plan.check_budget(max_cost_usd)
    checked = run_checks(con, set_id, embedder=embedder,
                         on_progress=lambda done, total: report(JudgeProgress("checks", done, total)))
    judge_run = None
    if plan is not None:
        from audit.judge.llm_judge import run_judge, write_judge_verdicts

        judge_run = {**plan.as_dict(), **run_judge(
            con, set_id, plan, max_cost_usd=max_cost_usd, engine_factory=engine_factory,
            on_progress=lambda done, total, spent: report(JudgeProgress("judge", done, total, spent)))}
        judge_run["verdicts"] = write_judge_verdicts(con, set_id, plan.judge)
    evidence = write_final_verdicts(con, set_id)
    decisions = write_decisions(con, set_id, threshold)
    movable = write_movable_spend(con, set_id)
    report(JudgeProgress("decisions", len(decisions), len(decisions)))
    return judge_summary(con, set_id, checked=checked, evidence=evidence, judge_run=judge_run,
                         decisions=decisions, movable=movable)


def judge_summary(con: duckdb.DuckDBPyConnection, set_id: str, *, checked: int, evidence: dict[str, int],
                  judge_run: dict[str, Any] | None, decisions: list[dict[str, Any]],
                  movable: list[dict[str, Any]]) -> dict[str, Any]:
    names = dict(con.execute("SELECT template_id, name FROM templates").fetchall())
    task_types = dict(con.execute("SELECT template_id, task_type FROM templates").fetchall())
    not_judged = con.execute("""
        SELECT count(*) FROM replays p WHERE p.sample_set_id = ? AND NOT EXISTS (
            SELECT 1 FROM verdicts v WHERE v.sample_set_id = p.sample_set_id AND v.request_id = p.request_id
              AND v.candidate = p.candidate AND v.source = 'final')""", [set_id]).fetchall()[0][0]
    return {
        "sample_set_id": set_id,
        "answers_checked": checked,
        "final_verdicts_by_evidence": evidence,
        "replays_not_judged": not_judged,
        "judge": judge_run,
        "decisions": [{**d, "template_name": names.get(d["template_id"]), "task_type": task_types.get(d["template_id"])}
                      for d in decisions],
        "movable_spend": movable,
    }
