"""Output verbosity: answers far longer than the task needs.

Reads: ``requests`` (output/reasoning tokens, ``max_tokens``),
``request_costs``, ``request_templates``, ``templates`` (task type),
``analysis_window``. Writes nothing (returns findings).

Method
------
Output tokens cost 4-5x input tokens, so a template whose answers sometimes
run on for pages pays for it. Per template × model, over the window's
successful, priced requests (at least ``MIN_ROWS`` of them), the *visible*
output (``output_tokens − reasoning_tokens``: reasoning has its own lever) is
compared with the template's own median:

- a request is *verbose* when its output exceeds ``factor × median`` and the
  median by at least ``MIN_EXCESS_TOKENS``; the factor is
  ``SHORT_TASK_FACTOR`` (2) for short-answer tasks (FAQ, classification,
  extraction), ``LONG_TASK_FACTOR`` (3) for the rest, whose lengths vary
  naturally;
- low = the verbose requests' tokens above ``factor × median`` (what a length
  instruction or a ``max_tokens`` at that level would cut);
- high = the verbose requests' tokens above the median (brought back to a
  typical answer); for classification, whose answer is a label, every
  request's tokens above ``LABEL_TOKENS`` when the median itself is above it
  (a model explaining its label).

Tokens are priced at each request's own paid output price (its
``output_cost_usd`` over its output tokens), monthly. ``max_tokens`` left unset
or at ``MAX_TOKENS_AT_MAXIMUM`` or more on a short task is reported as
evidence and in the action (with a suggested cap of 1.5 × p99), not priced on
its own: an unused limit costs nothing.
"""

from __future__ import annotations

import math
import re
from typing import Any

import duckdb

from audit.findings import IN_WINDOW, MONTHLY, Finding, Settings, not_run, precondition_failure, task_key

KIND = "output_verbosity"
MIN_ROWS = 20
SHORT_TASK_FACTOR = 2.0
LONG_TASK_FACTOR = 3.0
MIN_EXCESS_TOKENS = 20
LABEL_TOKENS = 10               # a class label, with room for a multi-word one
MAX_TOKENS_AT_MAXIMUM = 4096
EXAMPLES = 3
_SHORT_TASKS = re.compile(r"faq|classif|extract|label|tagging")
_LABEL_TASKS = re.compile(r"classif|label|tagging")


def not_run_reason(con: duckdb.DuckDBPyConnection) -> str | None:
    return precondition_failure(con, (
        "SELECT 1 FROM requests WHERE output_tokens IS NOT NULL",
        "no output token counts were logged or counted (responses not logged)"))

def _measure(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    # Factor per template from its task type, decided in Python over the few templates.
    tasks = con.execute("SELECT template_id, task_type FROM templates").fetchall()
    factors = [(t, SHORT_TASK_FACTOR if _SHORT_TASKS.search(task_key(k)) else LONG_TASK_FACTOR,
                bool(_LABEL_TASKS.search(task_key(k))), k) for t, k in tasks]
    con.execute("CREATE OR REPLACE TEMP TABLE verbosity_factors (template_id VARCHAR, factor DOUBLE, "
                "label_task BOOLEAN, task_type VARCHAR)")
    if factors:
        con.executemany("INSERT INTO verbosity_factors VALUES (?, ?, ?, ?)", factors)
    sql = f"""
    WITH base AS (
        SELECT r.request_id, t.template_id, r.model, r.max_tokens,
               (r.output_tokens - coalesce(r.reasoning_tokens, 0))::DOUBLE AS visible,
               c.cost_usd, {MONTHLY} AS weight,
               -- the price of one output token this request paid (batch discount included)
               c.output_cost_usd * c.cost_usd
                   / nullif(coalesce(c.input_cost_usd, 0) + coalesce(c.cached_input_cost_usd, 0)
                            + coalesce(c.cache_write_cost_usd, 0) + coalesce(c.output_cost_usd, 0), 0)
                   / nullif(r.output_tokens, 0) AS output_price
        FROM requests r JOIN request_templates t USING (request_id) JOIN request_costs c USING (request_id),
             analysis_window w
        WHERE {IN_WINDOW} AND r.status = 'ok' AND c.cost_usd IS NOT NULL AND r.output_tokens IS NOT NULL
    ),
    stats AS (
        SELECT template_id, model, count(*) AS rows, quantile_cont(visible, 0.5) AS p50,
               quantile_cont(visible, 0.9) AS p90, quantile_cont(visible, 0.99) AS p99, max(visible) AS max_output,
               avg((max_tokens IS NULL OR max_tokens >= {MAX_TOKENS_AT_MAXIMUM})::INT) AS max_tokens_unset_share,
               median(max_tokens) AS median_max_tokens
        FROM base GROUP BY ALL HAVING count(*) >= {MIN_ROWS}
    ),
    marked AS (
        SELECT b.*, s.rows, s.p50, s.p90, s.p99, s.max_output, s.max_tokens_unset_share, s.median_max_tokens,
               f.task_type, coalesce(f.factor, {LONG_TASK_FACTOR}) AS factor,
               coalesce(f.label_task, false) AND s.p50 > {LABEL_TOKENS} AS label_cap,
               b.visible > coalesce(f.factor, {LONG_TASK_FACTOR}) * s.p50
                   AND b.visible - s.p50 >= {MIN_EXCESS_TOKENS} AS is_verbose
        FROM base b JOIN stats s USING (template_id, model) LEFT JOIN verbosity_factors f USING (template_id)
    ),
    template_spend AS (SELECT template_id, sum(weight * cost_usd) AS spend FROM base GROUP BY ALL)
    SELECT m.template_id, m.model, any_value(factor) AS factor, any_value(label_cap) AS label_cap,
           any_value(task_type) AS task_type, any_value(rows) AS rows, any_value(p50) AS p50,
           any_value(p90) AS p90, any_value(p99) AS p99, any_value(max_output) AS max_output,
           any_value(max_tokens_unset_share) AS max_tokens_unset_share,
           any_value(median_max_tokens) AS median_max_tokens,
           count(*) FILTER (WHERE is_verbose) AS verbose_rows,
           count(*) FILTER (WHERE is_verbose OR (label_cap AND visible > {LABEL_TOKENS})) AS affected_rows,
           sum(weight) FILTER (WHERE is_verbose OR (label_cap AND visible > {LABEL_TOKENS})) AS affected_monthly,
           sum(weight * cost_usd) FILTER (WHERE is_verbose OR (label_cap AND visible > {LABEL_TOKENS})) AS affected_spend,
           sum(weight * (visible - factor * p50) * output_price) FILTER (WHERE is_verbose) AS low_usd,
           sum(weight * (visible - p50) * output_price) FILTER (WHERE is_verbose) AS high_outlier_usd,
           sum(weight * (visible - {LABEL_TOKENS}) * output_price)
               FILTER (WHERE label_cap AND visible > {LABEL_TOKENS}) AS high_label_usd,
           sum(weight * (visible - factor * p50)) FILTER (WHERE is_verbose) AS low_tokens,
           sum(weight * (visible - p50)) FILTER (WHERE is_verbose) AS high_outlier_tokens,
           sum(weight * (visible - {LABEL_TOKENS})) FILTER (WHERE label_cap AND visible > {LABEL_TOKENS})
               AS high_label_tokens,
           max_by(request_id, visible, {EXAMPLES}) FILTER (WHERE is_verbose) AS example_request_ids,
           any_value(ts.spend) AS template_spend
    FROM marked m LEFT JOIN template_spend ts USING (template_id)
    GROUP BY m.template_id, m.model
    ORDER BY m.template_id, m.model
    """
    try:
        cursor = con.execute(sql)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]
    finally:
        con.execute("DROP TABLE IF EXISTS verbosity_factors")


def _finding(g: dict[str, Any]) -> Finding | None:
    low = g["low_usd"] or 0.0
    high = max(g["high_outlier_usd"] or 0.0, g["high_label_usd"] or 0.0, low)
    if high <= 0:
        return None
    high_tokens = max(g["high_outlier_tokens"] or 0.0, g["high_label_tokens"] or 0.0)
    short_task = g["factor"] == SHORT_TASK_FACTOR
    suggested_cap = max(1, math.ceil(1.5 * (g["p99"] or 0.0)))
    parts = []
    if g["verbose_rows"]:
        parts.append(f"{g['verbose_rows']} of {g['rows']} answers run past {g['factor']:g}x the template's median of "
                     f"{g['p50']:.0f} tokens (p90 {g['p90']:.0f}, max {g['max_output']:.0f})")
    if g["label_cap"]:
        parts.append(f"a classification answer is a label, yet the median answer is {g['p50']:.0f} tokens")
    advice = "ask for the short form in the prompt (e.g. the label only, or a word limit)"
    if short_task and (g["max_tokens_unset_share"] or 0) > 0.5:
        advice += f" and set max_tokens near {suggested_cap} (it is unset or at the maximum on " \
                  f"{100 * g['max_tokens_unset_share']:.0f}% of calls)"
    action = "; ".join(parts) + f": {advice}. Quality-gated: replay to check nothing needed is cut."
    evidence = {
        "task_type": g["task_type"],
        "output_tokens_p50": g["p50"], "output_tokens_p90": g["p90"], "output_tokens_p99": g["p99"],
        "output_tokens_max": g["max_output"],
        "p90_to_median_ratio": round(g["p90"] / g["p50"], 2) if g["p50"] else None,
        "verbose_factor": g["factor"],
        "verbose_requests": g["verbose_rows"],
        "requests_measured": g["rows"],
        "label_cap_tokens": LABEL_TOKENS if g["label_cap"] else None,
        "output_tokens_removed_monthly_low": round(g["low_tokens"] or 0.0),
        "output_tokens_removed_monthly_high": round(high_tokens),
        "max_tokens_unset_or_maximum_share": round(g["max_tokens_unset_share"] or 0.0, 4),
        "median_max_tokens": g["median_max_tokens"],
        "suggested_max_tokens": suggested_cap,
        "template_spend_monthly_usd": round(g["template_spend"] or 0.0, 2),
        "example_request_ids": list(g["example_request_ids"] or []),
    }
    return Finding(kind=KIND, template_id=g["template_id"], model=g["model"], requests_affected=g["affected_rows"],
                   requests_affected_monthly=g["affected_monthly"] or 0.0,
                   spend_affected_monthly_usd=g["affected_spend"] or 0.0,
                   savings_low_monthly_usd=low, savings_high_monthly_usd=high, action=action, evidence=evidence)


def detect(con: duckdb.DuckDBPyConnection, settings: Settings) -> list[Finding]:
    reason = not_run_reason(con)
    if reason:
        return [not_run(KIND, reason)]
    findings = [_finding(g) for g in _measure(con)]
    return [f for f in findings if f is not None]
