"""Over-powered model: small- or mid-tier tasks answered by a large, expensive model.

Reads: ``templates`` (``tier``, ``task_type`` set by ``audit.tasks``),
``request_templates``, ``requests``, ``request_costs``, ``analysis_window``,
``analysis_runs`` (the price file the run used). Writes nothing (returns
``Finding`` rows for ``write_findings``).

Method. For every template whose recommended tier is ``small`` or ``mid`` and
every model it runs on, over the analysis window:

- the model is *large-tier* when its list output price on the window's last
  day is at least ``LARGE_TIER_MIN_OUTPUT_USD_PER_M`` ($6 per 1M output
  tokens: every flagship is at or above it — Mistral Large $6, GPT-4.1 $8,
  GPT-4o and Gemini 2.5 Pro $10, Claude Sonnet $15 — and every small or mid
  model below it — Claude Haiku 4.5 $5, o4-mini $4.40, Gemini 2.5 Flash
  $2.50, GPT-4.1-mini $1.60). Price, not name, decides: it is what the
  finding is about, and it holds for models we have never heard of.
- the candidate is ``pricing.cheapest_for_tier(tier, provider, window end)``:
  the cheapest catalog model of the template's tier, from the same provider
  when it has one;
- savings = the monthly spend of those requests − the same tokens (uncached,
  cached, cache writes, output; the same batch discount per request) at the
  candidate's prices. Nothing about the traffic changes but the price.

The high estimate assumes every request moves; the low one that only
``ASSUMED_PASS_RATE`` (60%) of them do, the low end of DESIGN.md's "60–80% of
requests can go to a cheaper model". Risk is quality-gated: the replay stage
runs the candidate on sampled requests and confirms (or not) before anyone
switches.

Not run (with the reason) when no template has a tier, nothing is priced, or
there is no analysis window.
"""

from __future__ import annotations

import duckdb

from audit import pricing
from audit.db import fetch_dicts
from audit.findings import IN_WINDOW, MONTHLY, Finding, Settings, not_run

KIND = "overpowered_model"

# USD per 1M output tokens from which a model counts as large-tier (see the docstring).
LARGE_TIER_MIN_OUTPUT_USD_PER_M = 6.0
# Share of a template's requests assumed to pass on the cheaper model (low estimate).
ASSUMED_PASS_RATE = 0.6
EXAMPLE_REQUESTS = 5
DOWNSIZABLE_TIERS = ("small", "mid")


def _price_dict(price: pricing.PricePerMillion) -> dict[str, float]:
    return {"input": price.input, "cached_input": price.cached_input, "cache_write": price.cache_write,
            "output": price.output}


def detect(con: duckdb.DuckDBPyConnection, settings: Settings) -> list[Finding]:
    templates, tiered = con.execute(
        "SELECT count(*), count(*) FILTER (WHERE tier IS NOT NULL) FROM templates").fetchall()[0]
    if templates == 0:
        return [not_run(KIND, "no prompt templates were mined (the ledger has no prompts?)")]
    if tiered == 0:
        return [not_run(KIND, "no template has a task tier: task classification did not run or found nothing")]
    if con.execute("SELECT count(*) FROM request_costs WHERE priced").fetchall()[0][0] == 0:
        return [not_run(KIND, "no request is priced: the models are not in the price catalog")]
    window = con.execute("SELECT window_end FROM analysis_window").fetchall()
    if not window or window[0][0] is None:
        return [not_run(KIND, "no analysis window: the ledger has no timestamps")]
    window_end = window[0][0].date()
    book = pricing.price_book_of_last_run(con)

    # One pass over the window: per template × model, the monthly spend and the monthly tokens of
    # each kind, weighted by each request's share left after its batch discount; the template's
    # whole spend (every model, every tier) comes from the same pass.
    groups = fetch_dicts(con, f"""
        WITH per_model AS (
            SELECT t.template_id, any_value(tp.tier) AS tier, any_value(tp.task_type) AS task_type, r.model,
                   mode(r.provider) AS provider,
                   count(*) AS requests, sum({MONTHLY}) AS requests_monthly,
                   sum(c.cost_usd * {MONTHLY}) AS spend_monthly,
                   sum(greatest(coalesce(r.input_tokens, 0) - coalesce(r.cached_input_tokens, 0)
                                - coalesce(r.cache_write_tokens, 0), 0) * {MONTHLY} * (1 - c.batch_discount))
                       AS uncached_monthly,
                   sum(coalesce(r.cached_input_tokens, 0) * {MONTHLY} * (1 - c.batch_discount)) AS cached_monthly,
                   sum(coalesce(r.cache_write_tokens, 0) * {MONTHLY} * (1 - c.batch_discount)) AS written_monthly,
                   sum(coalesce(r.output_tokens, 0) * {MONTHLY} * (1 - c.batch_discount)) AS output_monthly,
                   min_by(r.request_id, (r.started_at, r.request_id), {EXAMPLE_REQUESTS}) AS example_request_ids
            FROM request_templates t JOIN templates tp USING (template_id)
            JOIN requests r USING (request_id) JOIN request_costs c USING (request_id), analysis_window w
            WHERE {IN_WINDOW} AND c.priced
            GROUP BY t.template_id, r.model
        )
        SELECT *, sum(spend_monthly) OVER (PARTITION BY template_id) AS template_spend_monthly
        FROM per_model
        QUALIFY tier IN {DOWNSIZABLE_TIERS} AND model IS NOT NULL
        ORDER BY spend_monthly DESC, template_id, model""")

    findings = []
    for g in groups:
        current = pricing.price_per_million(g["provider"], g["model"], window_end, book)
        if current is None or current.output < LARGE_TIER_MIN_OUTPUT_USD_PER_M:
            continue
        candidate = pricing.cheapest_for_tier(g["tier"], g["provider"], window_end, book)
        if candidate is None:
            continue
        candidate_provider, candidate_model, price = candidate
        candidate_monthly = (g["uncached_monthly"] * price.input + g["cached_monthly"] * price.cached_input
                             + g["written_monthly"] * price.cache_write + g["output_monthly"] * price.output) / 1e6
        savings = g["spend_monthly"] - candidate_monthly
        if savings <= 0:
            continue
        findings.append(Finding(
            kind=KIND, template_id=g["template_id"], model=g["model"],
            requests_affected=g["requests"], requests_affected_monthly=g["requests_monthly"],
            spend_affected_monthly_usd=g["spend_monthly"],
            savings_low_monthly_usd=savings * ASSUMED_PASS_RATE, savings_high_monthly_usd=savings,
            action=f"move to {candidate_model} ({g['tier']}-tier task); replay confirms quality first",
            evidence={
                "tier": g["tier"], "task_type": g["task_type"],
                "current_model": g["model"], "current_provider": g["provider"],
                "current_price_per_million": _price_dict(current),
                "candidate_model": candidate_model, "candidate_provider": candidate_provider,
                "candidate_price_per_million": _price_dict(price),
                "candidate_spend_monthly_usd": candidate_monthly,
                "price_date": window_end.isoformat(),
                "large_tier_min_output_usd_per_m": LARGE_TIER_MIN_OUTPUT_USD_PER_M,
                "assumed_pass_rate": ASSUMED_PASS_RATE,
                "requests": g["requests"], "requests_monthly": g["requests_monthly"],
                # batch calls count at their discounted share, so candidate prices apply as they are
                "billable_tokens_monthly": {"uncached_input": g["uncached_monthly"],
                                            "cached_input": g["cached_monthly"],
                                            "cache_write": g["written_monthly"], "output": g["output_monthly"]},
                "example_request_ids": g["example_request_ids"],
                "template_spend_monthly_usd": g["template_spend_monthly"],
            },
        ))
    return findings
