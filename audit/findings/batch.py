"""Batch-eligible: templates nobody waits for, sent through the real-time API.

Reads: ``requests`` (user/session ids, timestamps, ``is_batch``, provider),
``request_costs``, ``request_templates``, ``templates`` (task type),
``analysis_window``. Writes nothing (returns findings).

Method
------
Batch APIs (OpenAI, Anthropic, Gemini, Mistral) bill the same call at a
discount (half price) for an answer within 24 hours. Per template × model,
the candidates are the window's successful, priced requests *not* already sent
as batch (``is_batch`` false); the savings are the provider's batch discount
times their monthly cost. The discount table is ``audit.pricing.BATCH_DISCOUNTS``
when that module provides one, else ``FALLBACK_BATCH_DISCOUNTS`` below;
providers without a batch API get no finding.

Whether anyone waits for the answer is judged from evidence, strongest first:

- strong: the candidates carry no user or session id (share <= ``NO_USER_SHARE``)
  while the ledger's real-time traffic mostly does (a ledger without ids
  proves nothing), or they arrive in bursts at fixed hours (the busiest
  ``BURST_HOURS`` hours of the day hold >= ``BURST_SHARE`` of them: a
  scheduled job);
- moderate: the task type is offline by nature (summarising catalog content,
  classifying tickets, extracting fields), or part of the template already
  runs through the Batch API (the team accepts the latency for it).

Interactive task types (chat, FAQ answers) are never batch-eligible.
low = the discount on templates with strong evidence only; high = also on the
moderate ones.
"""

from __future__ import annotations

import re
from typing import Any

import duckdb

from audit.findings import IN_WINDOW, MONTHLY, Finding, Settings, not_run, precondition_failure, task_key

try:  # the price catalog's own table, when the pricing stage ships one
    from audit.pricing import BATCH_DISCOUNTS as _CATALOG_BATCH_DISCOUNTS
except ImportError:
    _CATALOG_BATCH_DISCOUNTS = None

KIND = "batch_eligible"
# Fraction taken off by each provider's Batch API (published list terms: OpenAI
# Batch API, Anthropic Message Batches, Gemini Batch Mode, Mistral batch: 50%).
FALLBACK_BATCH_DISCOUNTS = {"openai": 0.5, "azure": 0.5, "anthropic": 0.5, "google": 0.5, "mistral": 0.5}
NO_USER_SHARE = 0.05      # at most this share of candidates with a user/session id
LEDGER_USER_SHARE = 0.5   # ...while at least this share of the ledger's other requests has one
BURST_HOURS = 3
BURST_SHARE = 0.8
MIN_ROWS_FOR_PATTERN = 20  # arrival patterns need this many candidate requests
ALREADY_BATCHED_SHARE = 0.1
EXAMPLES = 3
_OFFLINE_TASKS = re.compile(r"summar|classif|structured_extract|^extraction$|tagging|labell?ing")
_INTERACTIVE_TASKS = re.compile(r"chat|conversation|faq|assistant|dialog")


def batch_discount(provider: str | None) -> float:
    """Fraction a provider's Batch API takes off (0 when it has none we know of)."""
    if not provider:
        return 0.0
    for table in (_CATALOG_BATCH_DISCOUNTS, FALLBACK_BATCH_DISCOUNTS):
        if not isinstance(table, dict) or provider not in table:
            continue
        value = table[provider]
        if isinstance(value, dict):
            value = value.get("discount")
        if isinstance(value, int | float) and 0 < value < 1:
            return float(value)
    return 0.0


def not_run_reason(con: duckdb.DuckDBPyConnection) -> str | None:
    return precondition_failure(con)

def _measure(con: duckdb.DuckDBPyConnection) -> tuple[list[dict[str, Any]], float]:
    sql = f"""
    WITH base AS (
        SELECT r.request_id, t.template_id, r.model, lower(coalesce(r.provider, c.price_provider, '')) AS provider,
               r.is_batch, (r.user_id IS NOT NULL OR r.session_id IS NOT NULL) AS has_user,
               hour(r.started_at) AS hour_of_day, c.cost_usd, {MONTHLY} AS weight
        FROM requests r JOIN request_templates t USING (request_id) JOIN request_costs c USING (request_id),
             analysis_window w
        WHERE {IN_WINDOW} AND r.status = 'ok' AND c.cost_usd IS NOT NULL
    ),
    per_template AS (
        SELECT template_id, avg(is_batch::INT) AS batched_share, sum(weight * cost_usd) AS template_spend
        FROM base GROUP BY ALL
    ),
    hours AS (
        SELECT template_id, model, hour_of_day, count(*) AS n FROM base WHERE NOT is_batch GROUP BY ALL
    ),
    bursts AS (
        SELECT template_id, model,
               sum(n) FILTER (WHERE rank <= {BURST_HOURS}) / sum(n) AS busiest_hours_share,
               list(hour_of_day ORDER BY rank) FILTER (WHERE rank <= {BURST_HOURS}) AS busiest_hours
        FROM (SELECT *, row_number() OVER (PARTITION BY template_id, model ORDER BY n DESC, hour_of_day) AS rank
              FROM hours)
        GROUP BY ALL
    )
    SELECT b.template_id, b.model, any_value(b.provider) AS provider, any_value(tp.task_type) AS task_type,
           count(*) AS rows, sum(b.weight) AS requests_monthly, sum(b.weight * b.cost_usd) AS spend,
           avg(b.has_user::INT) AS user_id_share,
           any_value(pt.batched_share) AS batched_share, any_value(pt.template_spend) AS template_spend,
           any_value(bu.busiest_hours_share) AS busiest_hours_share, any_value(bu.busiest_hours) AS busiest_hours,
           max_by(b.request_id, b.cost_usd, {EXAMPLES}) AS example_request_ids
    FROM base b JOIN per_template pt USING (template_id) JOIN bursts bu USING (template_id, model)
    LEFT JOIN templates tp USING (template_id)
    WHERE NOT b.is_batch
    GROUP BY b.template_id, b.model
    ORDER BY b.template_id, b.model
    """
    cursor = con.execute(sql)
    names = [d[0] for d in cursor.description]
    groups = [dict(zip(names, row)) for row in cursor.fetchall()]
    # Without ids anywhere, "no user id" says nothing about who waits.
    ledger_user_share = con.execute(
        f"""SELECT coalesce(avg((r.user_id IS NOT NULL OR r.session_id IS NOT NULL)::INT), 0)
            FROM requests r, analysis_window w WHERE {IN_WINDOW} AND NOT r.is_batch"""
    ).fetchone()[0]
    return groups, ledger_user_share


def _finding(g: dict[str, Any], ledger_user_share: float) -> Finding | None:
    discount = batch_discount(g["provider"])
    task = task_key(g["task_type"])
    if discount <= 0 or not g["spend"] or _INTERACTIVE_TASKS.search(task):
        return None
    reasons_strong, reasons_moderate = [], []
    if g["user_id_share"] <= NO_USER_SHARE and ledger_user_share >= LEDGER_USER_SHARE:
        reasons_strong.append(f"{100 * g['user_id_share']:.0f}% of its calls carry a user or session id "
                              f"(vs {100 * ledger_user_share:.0f}% of the ledger)")
    bursty = g["rows"] >= MIN_ROWS_FOR_PATTERN and (g["busiest_hours_share"] or 0) >= BURST_SHARE
    if bursty:
        reasons_strong.append(f"{100 * g['busiest_hours_share']:.0f}% of calls arrive in the same "
                              f"{BURST_HOURS} hours of the day (UTC {g['busiest_hours']})")
    if _OFFLINE_TASKS.search(task):
        reasons_moderate.append(f"task type '{g['task_type']}' has no one waiting on the answer")
    if (g["batched_share"] or 0) >= ALREADY_BATCHED_SHARE:
        reasons_moderate.append(f"{100 * g['batched_share']:.0f}% of this template already runs on the Batch API")
    if not reasons_strong and not reasons_moderate:
        return None
    high = discount * g["spend"]
    low = high if reasons_strong else 0.0
    already = (f" (the {100 * g['batched_share']:.0f}% already on the Batch API is not counted)"
               if g["batched_share"] else "")
    action = (f"Send these calls through {g['provider']}'s Batch API ({100 * discount:.0f}% off, answers within "
              f"24 h){already}: " + "; ".join(reasons_strong + reasons_moderate) + ".")
    evidence = {
        "user_id_share": round(g["user_id_share"], 4),
        "ledger_user_id_share": round(ledger_user_share, 4),
        "busiest_hours_share": round(g["busiest_hours_share"] or 0.0, 4),
        "busiest_hours_utc": g["busiest_hours"],
        "task_type": g["task_type"],
        "already_batched_share": round(g["batched_share"] or 0.0, 4),
        "batch_discount": discount,
        "evidence_strength": "strong" if reasons_strong else "moderate",
        "reasons": reasons_strong + reasons_moderate,
        "template_spend_monthly_usd": round(g["template_spend"] or 0.0, 2),
        "example_request_ids": list(g["example_request_ids"] or []),
    }
    return Finding(kind=KIND, template_id=g["template_id"], model=g["model"], requests_affected=g["rows"],
                   requests_affected_monthly=g["requests_monthly"], spend_affected_monthly_usd=g["spend"],
                   savings_low_monthly_usd=low, savings_high_monthly_usd=high, action=action, evidence=evidence)


def detect(con: duckdb.DuckDBPyConnection, settings: Settings) -> list[Finding]:
    reason = not_run_reason(con)
    if reason:
        return [not_run(KIND, reason)]
    groups, ledger_user_share = _measure(con)
    findings = [_finding(g, ledger_user_share) for g in groups]
    return [f for f in findings if f is not None]
