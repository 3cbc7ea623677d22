"""Waste detectors: each finds one kind of waste and prices it per month.

Reads: ``requests``, ``request_costs``, ``templates``, ``request_templates``,
``analysis_window``. Writes: ``findings`` (through ``write_findings``).

A detector is a function ``detect(con, settings) -> list[Finding]`` in its own
module, registered in ``DETECTORS``. It returns ``Finding`` rows with
``status='found'``, or a single ``not_run(kind, reason)`` row when it cannot
run (no prompts logged, no costs, ...): a detector never reports $0 for
"could not look".

Money is always monthly and scaled to the full traffic: over the analysis
window (the ledger's last 30 days), each request counts 1 / sampled_fraction
and the window's total is multiplied by 30 / window days. ``MONTHLY`` is that
factor as SQL, to be summed: ``sum(cost_usd * MONTHLY)``.

Savings are never double counted: ``stack`` applies them in the order cache →
precompute → batch → context → model → other, each step to the spend that
the earlier steps left on the same template (see ``stack``).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import duckdb

# Per-request weight turning window sums into monthly, full-traffic figures.
# Use inside queries that join ``analysis_window w`` and ``requests r``.
MONTHLY = "(1.0 / r.sampled_fraction) * 30.0 / w.days"
IN_WINDOW = "r.started_at BETWEEN w.window_start AND w.window_end"

# The order savings are applied in, and their risk.
STACK_STEPS = {
    "exact_cache": (1, "none"),
    "near_duplicate_cache": (1, "none"),
    "precompute": (2, "none"),
    "batch_eligible": (3, "none"),
    "prompt_caching_unused": (3, "none"),
    "context_bloat": (4, "quality-gated"),
    "output_verbosity": (4, "quality-gated"),
    "overpowered_model": (5, "quality-gated"),
}


@dataclass
class Finding:
    kind: str
    template_id: str | None
    model: str | None
    requests_affected: int
    requests_affected_monthly: float
    spend_affected_monthly_usd: float
    savings_low_monthly_usd: float
    savings_high_monthly_usd: float
    action: str
    evidence: dict[str, Any] = field(default_factory=dict)
    status: str = "found"
    not_run_reason: str | None = None

    @property
    def finding_id(self) -> str:
        key = f"{self.kind}:{self.template_id}:{self.model}"
        return hashlib.md5(key.encode()).hexdigest()[:12]


def not_run(kind: str, reason: str) -> Finding:
    """The one row a detector returns when it cannot look: says why, no dollars."""
    return Finding(kind=kind, template_id=None, model=None, requests_affected=0, requests_affected_monthly=0.0,
                   spend_affected_monthly_usd=0.0, savings_low_monthly_usd=0.0, savings_high_monthly_usd=0.0,
                   action="", status="not-run", not_run_reason=reason)


@dataclass
class Settings:
    """Knobs of the detectors (CLI options of ``audit analyze``)."""

    cache_ttl_hours: float = 24.0
    near_duplicate_threshold: float = 0.92
    context_keep_turns: int = 4
    precompute_refresh_hours: float | None = None   # None: daily (low) and weekly (high)


def precondition_failure(con: duckdb.DuckDBPyConnection, *own_checks: tuple[str, str]) -> str | None:
    """Why a detector cannot look at the ledger, or None when it can.

    The shared checks (a dated window, mined templates), then the detector's
    own ``(sql that must return a row, reason)`` pairs, then priced requests.
    """
    checks = [
        ("SELECT 1 FROM analysis_window", "no analysis window: the ledger has no dated requests"),
        ("SELECT 1 FROM request_templates", "no prompt templates were mined (no prompts in the ledger)"),
        *own_checks,
        ("SELECT 1 FROM request_costs WHERE cost_usd IS NOT NULL", "no request could be priced"),
    ]
    for sql, reason in checks:
        if not con.execute(f"SELECT EXISTS ({sql})").fetchall()[0][0]:
            return reason
    return None


def task_key(task_type: str | None) -> str:
    """A task type as a plain key (``'Slot extraction'`` → ``slot_extraction``)."""
    return re.sub(r"[^a-z]+", "_", (task_type or "").lower()).strip("_")


Detector = Callable[[duckdb.DuckDBPyConnection, Settings], list[Finding]]


def detectors() -> list[tuple[str, Detector]]:
    """(name, detect) of every detector module that exists, in stacking order."""
    import importlib

    found = []
    for module_name in ("cache", "near_duplicates", "precompute", "batch", "prompt_caching",
                        "context_bloat", "verbosity", "overpowered"):
        try:
            module = importlib.import_module(f"audit.findings.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"audit.findings.{module_name}":
                continue
            raise
        found.append((module_name, module.detect))
    return found


def stack(findings: list[Finding], group_spend: dict[tuple[str | None, str | None], float]
          ) -> list[tuple[Finding, float, float]]:
    """Savings after earlier steps: each finding's share of what is left of its spend.

    Within a (template, model) group, steps apply in ``STACK_STEPS`` order; a
    later step's savings shrink by the share of the group's monthly spend
    (``group_spend``) the earlier steps already removed. Findings without a
    template stack on their own.
    """
    order = sorted((f for f in findings if f.status == "found"),
                   key=lambda f: (STACK_STEPS.get(f.kind, (6, ""))[0], f.kind))
    left: dict[tuple[str | None, str | None], tuple[float, float]] = {}
    out = []
    for f in order:
        group = (f.template_id, f.model)
        low_left, high_left = left.get(group, (1.0, 1.0))
        stacked_low, stacked_high = f.savings_low_monthly_usd * low_left, f.savings_high_monthly_usd * high_left
        out.append((f, stacked_low, stacked_high))
        spend = group_spend.get(group) or f.spend_affected_monthly_usd
        if f.template_id is not None and spend > 0:
            left[group] = (max(0.0, low_left - stacked_low / spend), max(0.0, high_left - stacked_high / spend))
    return out


def group_spend(con: duckdb.DuckDBPyConnection) -> dict[tuple[str | None, str | None], float]:
    """Monthly spend per (template, model): what stacking shares out."""
    rows = con.execute(
        f"""SELECT t.template_id, r.model, sum(c.cost_usd * {MONTHLY})
            FROM requests r JOIN request_templates t USING (request_id) JOIN request_costs c USING (request_id),
                 analysis_window w
            WHERE {IN_WINDOW} GROUP BY ALL"""
    ).fetchall()
    return {(template, model): spend or 0.0 for template, model, spend in rows}


def write_findings(con: duckdb.DuckDBPyConnection, findings: list[Finding]) -> None:
    """Replace the ``findings`` table's rows with these (stacked)."""
    con.execute("DELETE FROM findings")
    rows = []
    stacked = {id(f): (low, high) for f, low, high in stack(findings, group_spend(con))}
    for f in findings:
        step, risk = STACK_STEPS.get(f.kind, (6, "quality-gated"))
        low, high = stacked.get(id(f), (None, None))
        rows.append((f.finding_id, f.kind, f.status, f.not_run_reason, f.template_id, f.model,
                     f.requests_affected, f.requests_affected_monthly, f.spend_affected_monthly_usd,
                     f.savings_low_monthly_usd, f.savings_high_monthly_usd, risk if f.status == "found" else None,
                     step, low, high, f.action, json.dumps(f.evidence, default=str)))
    if rows:
        con.executemany("INSERT INTO findings VALUES (" + ", ".join("?" * 17) + ")", rows)


__all__ = ["Finding", "Settings", "precondition_failure", "task_key", "MONTHLY", "IN_WINDOW", "STACK_STEPS", "not_run", "detectors", "stack",
           "group_spend", "write_findings"]
