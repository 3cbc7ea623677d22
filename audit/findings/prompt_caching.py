"""Provider prompt caching unused: long shared prefixes billed as uncached input.

Reads: ``requests`` (messages, token counts, provider), ``request_costs``,
``request_templates``, ``analysis_window``. Writes nothing (returns findings;
temporary tables live for the duration of one call).

Method
------
Providers bill a prompt's prefix at a fraction of the input price when it was
seen recently: OpenAI (and DeepSeek, Gemini, xAI) automatically for prompts of
at least ``CACHE_MIN_TOKENS`` = 1024 tokens, in 128-token steps; Anthropic only
where the request marks a ``cache_control`` breakpoint, with a premium on the
write.

Per template × model, over the window's successful, priced requests of at
least 1024 input tokens (*long* requests):

- the *hit rate* is the share of long requests that read or wrote cache
  tokens (token columns only, every row);
- the *shared prefix* is the longest common prefix (in characters) of the
  group's system prompts, found as the common prefix of their lexicographic
  minimum and maximum (the common prefix of a set of strings is that of its
  two extremes). It is a lower bound: a system prompt that starts with
  variable text shares nothing, correctly, since caching needs identical
  leading bytes;
- a long request is *cold* when it read nothing from the cache and wrote
  nothing, and it is priced when its first message is a system prompt whose
  shared part is >= 1024 tokens; its prefix tokens ≈ ``input_tokens × shared
  characters / all message characters`` (no tokenizer), rounded down to
  128-token steps.

Savings of a cold request = prefix tokens × its uncached input price (from its
own ``request_costs``) × (1 − cache price ratio). The ratio is measured per
model on the ledger's cache hits where there are any, else taken from
``CACHED_PRICE_RATIO`` (documented list prices). A group must carry at least
one request per 5-minute cache lifetime on average (``MIN_REQUESTS_PER_HOUR``
at full traffic), or the prefix would be evicted between calls.

- Automatic caching (OpenAI...): the finding is about the cache *hit rate*.
  high = every cold request becomes a hit; low = the group reaches the best
  hit rate another template of the same ledger already achieves on a long
  prefix (median cache read >= 1024 tokens; 0 when this group is the best):
  evidence, not an assumed rate.
- Explicit caching (Anthropic...): low = high = savings minus the cache-write
  premium (``WRITE_PREMIUM`` × prefix at the input price) for one write per
  5-minute window of the month.

Scale: only cold long requests are parsed (a block sample above
``MAX_PARSED``, sums scaled by the group's cold input tokens), and the system
prompts of a block sample of ``PREFIX_SAMPLE_ROWS`` requests are compared (see
``context_bloat.sample_predicate``). A template absent from that sample gets
no prefix, hence no finding.
"""

from __future__ import annotations

import os
from typing import Any

import duckdb

from audit.findings import IN_WINDOW, MONTHLY, Finding, Settings, not_run, precondition_failure
from audit.findings.context_bloat import MESSAGE_SHAPE, sample_predicate

KIND = "prompt_caching_unused"
CACHE_MIN_TOKENS = 1024       # OpenAI's threshold; Anthropic's minimum for Sonnet/Opus
CACHE_STEP_TOKENS = 128       # OpenAI serves cached prefixes in 128-token steps
MIN_REQUESTS_PER_HOUR = 12.0  # one per 5-minute cache lifetime, at full traffic
WINDOWS_PER_MONTH = 30 * 24 * 12  # 5-minute cache lifetimes in 30 days
WRITE_PREMIUM = 0.25          # Anthropic bills a 5-minute cache write at 1.25x input
MAX_PARSED = 120_000           # cold long requests parsed at most (a block sample above this)
PREFIX_SAMPLE_ROWS = 20_000    # requests whose system prompts are compared for the shared prefix
MIN_ROWS_FOR_HIT_RATE = 10    # long requests a template needs for its hit rate to set the in-house best
EXAMPLES = 3
AUTOMATIC_CACHING = {"openai", "azure", "deepseek", "google", "x-ai"}
# Cache-read price / input price, used only when the ledger has no cache hit
# on the model to measure it: OpenAI's GPT-4o generation 0.5 (newer models
# discount more: 0.5 is the conservative end), Anthropic 0.1, Gemini 0.25,
# DeepSeek 0.1.
CACHED_PRICE_RATIO = {"openai": 0.5, "azure": 0.5, "anthropic": 0.1, "google": 0.25, "deepseek": 0.1, "x-ai": 0.25}
DEFAULT_CACHED_PRICE_RATIO = 0.5
_TEMP = "prompt_caching"


def not_run_reason(con: duckdb.DuckDBPyConnection) -> str | None:
    """Why this detector cannot look at the ledger, or None when it can."""
    return precondition_failure(
        con,
        ("SELECT 1 FROM requests WHERE messages IS NOT NULL",
         "messages were not logged (usage-only export): shared prompt prefixes cannot be measured"),
        ("SELECT 1 FROM requests WHERE cached_input_tokens IS NOT NULL",
         "no request logged its cached input tokens: cache use cannot be told apart"))

def _base_sql() -> str:
    """Successful, priced, templated requests of the window with their per-token paid prices."""
    return f"""
        SELECT r.request_id, t.template_id, r.model, lower(coalesce(r.provider, c.price_provider, '')) AS provider,
               r.is_batch, r.input_tokens::DOUBLE AS input_tokens,
               r.cached_input_tokens::DOUBLE AS cached, coalesce(r.cache_write_tokens, 0)::DOUBLE AS written,
               c.cost_usd, {MONTHLY} AS weight,
               -- components x scale = billed cost, whether or not the batch discount is in them
               c.cost_usd / nullif(coalesce(c.input_cost_usd, 0) + coalesce(c.cached_input_cost_usd, 0)
                                   + coalesce(c.cache_write_cost_usd, 0) + coalesce(c.output_cost_usd, 0), 0) AS scale,
               c.input_cost_usd, c.cached_input_cost_usd
        FROM requests r JOIN request_templates t USING (request_id) JOIN request_costs c USING (request_id),
             analysis_window w
        WHERE {IN_WINDOW} AND r.status = 'ok' AND c.cost_usd IS NOT NULL AND r.input_tokens > 0"""


def _parse(con: duckdb.DuckDBPyConnection) -> bool:
    """Parse what the estimate needs, into temp tables; True when block-sampled.

    ``_cold``: the long requests that read and wrote nothing from the cache,
    with their first message's role and size (a block sample above
    ``MAX_PARSED`` rows). ``_prompts``: the system prompts of a smaller block
    sample of long requests, for the shared prefix. Each parse is a statement
    of its own so the sample predicate stays in the scan (see
    ``context_bloat.sample_predicate``).
    """
    cold_sample, sampled = sample_predicate(con, MAX_PARSED)
    prompt_sample, _ = sample_predicate(con, PREFIX_SAMPLE_ROWS)
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE {_TEMP}_cold AS
        SELECT request_id, m[1].role AS first_role, coalesce(length(m[1].content), 0) AS system_chars,
               list_sum(list_transform(m, lambda x: coalesce(length(x.content), 0)))::DOUBLE AS total_chars
        FROM (SELECT request_id, from_json(messages, '{MESSAGE_SHAPE}') AS m FROM requests
              WHERE messages IS NOT NULL AND input_tokens >= {CACHE_MIN_TOKENS} AND cached_input_tokens = 0
                    AND coalesce(cache_write_tokens, 0) = 0 AND {cold_sample})"""
    )
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE {_TEMP}_prompts AS
        SELECT request_id, model, m[1].role AS first_role, m[1].content AS system_prompt
        FROM (SELECT request_id, model, from_json(messages, '{MESSAGE_SHAPE}') AS m FROM requests
              WHERE messages IS NOT NULL AND input_tokens >= {CACHE_MIN_TOKENS} AND {prompt_sample})"""
    )
    return sampled


def _shared_prefix_chars(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str, int]]:
    """(template, model, characters every sampled system prompt of the group starts with)."""
    rows = con.execute(
        f"""SELECT t.template_id, p.model, min(p.system_prompt), max(p.system_prompt)
            FROM {_TEMP}_prompts p JOIN request_templates t USING (request_id)
            WHERE p.first_role IN ('system', 'developer') AND p.system_prompt IS NOT NULL
            GROUP BY ALL HAVING count(*) >= 2"""
    ).fetchall()
    return [(template, model, len(os.path.commonprefix([low, high]))) for template, model, low, high in rows]


def _measure(con: duckdb.DuckDBPyConnection, prefixes: list[tuple[str, str, int]]) -> list[dict[str, Any]]:
    con.execute(f"CREATE OR REPLACE TEMP TABLE {_TEMP}_prefixes (template_id VARCHAR, model VARCHAR, "
                "prefix_chars BIGINT)")
    if prefixes:  # no template shares a system prompt: nothing to insert (executemany refuses [])
        con.executemany(f"INSERT INTO {_TEMP}_prefixes VALUES (?, ?, ?)", prefixes)
    ratio_fallback = " ".join(f"WHEN '{p}' THEN {r}" for p, r in CACHED_PRICE_RATIO.items())
    automatic = ", ".join(f"'{p}'" for p in sorted(AUTOMATIC_CACHING))
    cold = "cached = 0 AND written = 0"
    eligible = f"first_role IN ('system', 'developer') AND prefix_tokens >= {CACHE_MIN_TOKENS}"
    cacheable = f"floor(prefix_tokens / {CACHE_STEP_TOKENS}) * {CACHE_STEP_TOKENS}"
    sql = f"""
    WITH base AS ({_base_sql()}),
    measured_ratio AS (  -- cache price / input price, from the ledger's own cache hits
        SELECT model,
               (sum(cached_input_cost_usd * scale) / sum(cached))
               / nullif(sum(input_cost_usd * scale) / nullif(sum(input_tokens - cached - written), 0), 0) AS ratio
        FROM base WHERE cached > 0 AND input_tokens - cached - written > 0 GROUP BY ALL
    ),
    groups AS (          -- every long request of each group: hit rate, and totals to scale the sample by
        SELECT template_id, model, any_value(provider) AS provider, count(*) AS long_rows,
               count(*) FILTER (WHERE NOT ({cold})) AS warm_rows, sum(weight) AS long_weight,
               median(cached) FILTER (WHERE cached > 0) AS median_cached_tokens,
               sum(weight * input_tokens) FILTER (WHERE {cold}) AS cold_input_total,
               count(*) FILTER (WHERE {cold}) AS cold_rows_total
        FROM base WHERE input_tokens >= {CACHE_MIN_TOKENS} AND cached IS NOT NULL GROUP BY ALL
    ),
    rated AS (
        SELECT *, warm_rows / long_rows AS hit_rate, provider IN ({automatic}) AS automatic FROM groups
    ),
    sized AS (
        SELECT b.*, c.first_role,
               least(p.prefix_chars, c.system_chars) * b.input_tokens / nullif(c.total_chars, 0) AS prefix_tokens,
               b.input_cost_usd * b.scale / nullif(b.input_tokens - b.cached - b.written, 0) AS uncached_price,
               coalesce(m.ratio, CASE b.provider {ratio_fallback} ELSE {DEFAULT_CACHED_PRICE_RATIO} END) AS price_ratio,
               m.ratio IS NOT NULL AS ratio_measured
        FROM {_TEMP}_cold c JOIN base b USING (request_id)
        LEFT JOIN {_TEMP}_prefixes p USING (template_id, model)
        LEFT JOIN measured_ratio m USING (model)
    ),
    per_group AS (
        SELECT template_id, model, count(*) AS cold_rows_parsed,
               sum(weight * input_tokens) AS cold_input_parsed,
               quantile_cont(prefix_tokens, 0.5) FILTER (WHERE {eligible}) AS median_prefix_tokens,
               any_value(price_ratio) AS price_ratio, bool_and(ratio_measured) AS ratio_measured,
               count(*) FILTER (WHERE {eligible}) AS cold_eligible_rows,
               sum(weight) FILTER (WHERE {eligible}) AS cold_weight,
               sum(weight * cost_usd) FILTER (WHERE {eligible}) AS cold_spend,
               sum(weight * {cacheable} * uncached_price * (1 - price_ratio)) FILTER (WHERE {eligible}) AS gross_saving,
               sum(weight * {cacheable} * uncached_price) FILTER (WHERE {eligible})
                   / nullif(sum(weight) FILTER (WHERE {eligible}), 0) AS prefix_cost_per_request,
               sum(weight * {cacheable}) FILTER (WHERE {eligible}) AS prefix_tokens_monthly,
               max_by(request_id, prefix_tokens, {EXAMPLES}) FILTER (WHERE {eligible}) AS example_request_ids
        FROM sized GROUP BY ALL
    ),
    template_spend AS (SELECT template_id, sum(weight * cost_usd) AS spend FROM base GROUP BY ALL)
    SELECT g.*, p.* EXCLUDE (template_id, model),
           g.cold_input_total / nullif(p.cold_input_parsed, 0) AS scale_up,
           g.cold_rows_total / nullif(p.cold_rows_parsed, 0) AS rows_scale_up,
           -- the best hit rate another group of this ledger reaches with automatic caching of a long prefix
           (SELECT max(o.hit_rate) FROM rated o
             WHERE o.automatic AND o.long_rows >= {MIN_ROWS_FOR_HIT_RATE}
               AND o.median_cached_tokens >= {CACHE_MIN_TOKENS}
               AND NOT (o.template_id = g.template_id AND o.model IS NOT DISTINCT FROM g.model)) AS best_other_hit_rate,
           s.spend AS template_spend
    FROM rated g JOIN per_group p USING (template_id, model) LEFT JOIN template_spend s USING (template_id)
    ORDER BY g.template_id, g.model
    """
    cursor = con.execute(sql)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def _finding(g: dict[str, Any], sampled: bool) -> Finding | None:
    if not g["cold_eligible_rows"] or not g["gross_saving"] or g["gross_saving"] <= 0:
        return None
    if (g["long_weight"] or 0.0) / (30 * 24) < MIN_REQUESTS_PER_HOUR:
        return None
    # Exact when every message list was read; else scaled up from the parsed blocks.
    scale = (g["scale_up"] or 1.0) if sampled else 1.0
    rows_scale = (g["rows_scale_up"] or 1.0) if sampled else 1.0
    gross = g["gross_saving"] * scale
    prefix = round(g["median_prefix_tokens"] or 0)
    hit_rate = g["hit_rate"] or 0.0
    cold_monthly = (g["cold_weight"] or 0.0) * rows_scale
    if g["automatic"]:
        best = g["best_other_hit_rate"]
        recoverable = 0.0 if best is None or best <= hit_rate else (best - hit_rate) / (1 - hit_rate)
        low, high = gross * recoverable, gross
        action = (
            f"{g['provider'] or 'This provider'} caches prompts of >= {CACHE_MIN_TOKENS} tokens automatically, "
            f"but {100 * (1 - hit_rate):.0f}% of this template's long requests read nothing from the cache "
            f"(cached_tokens = 0) although they start with the same ~{prefix}-token system prompt: "
            f"raise the cache hit rate (now {100 * hit_rate:.0f}%). Keep that prefix byte-identical and first "
            f"(put variable text after it) and send a stable prompt_cache_key per template so calls reach a warm cache."
        )
        premium = 0.0
    else:
        premium = (min(cold_monthly, WINDOWS_PER_MONTH) * WRITE_PREMIUM * (g["prefix_cost_per_request"] or 0.0))
        low = high = max(0.0, gross - premium)
        action = (
            f"The ~{prefix}-token system prompt is re-sent uncached on every call: mark it cacheable "
            f"(a cache_control breakpoint after the system prompt on Anthropic) so repeats are billed at the "
            f"cache-read price."
        )
    if high <= 0:
        return None
    evidence = {
        "long_requests": g["long_rows"],
        "cold_requests": round(g["cold_eligible_rows"] * rows_scale),
        "cache_hit_rate": round(hit_rate, 4),
        "best_other_template_hit_rate": g["best_other_hit_rate"],
        "shared_prefix_tokens_median": prefix,
        "prefix_tokens_uncached_monthly": round((g["prefix_tokens_monthly"] or 0.0) * scale),
        "requests_per_hour_full_traffic": round((g["long_weight"] or 0.0) / (30 * 24), 1),
        "cache_price_ratio": round(g["price_ratio"], 4),
        "cache_price_ratio_source": "measured on this ledger's cache hits" if g["ratio_measured"] else "list-price table",
        "automatic_caching": bool(g["automatic"]),
        "cache_write_premium_monthly_usd": round(premium, 2),
        "template_spend_monthly_usd": round(g["template_spend"] or 0.0, 2),
        "example_request_ids": list(g["example_request_ids"] or []),
        "method": "shared prefix = common prefix of the group's system prompts; tokens = input_tokens x its "
                  "character share, rounded down to 128",
    }
    return Finding(
        kind=KIND, template_id=g["template_id"], model=g["model"],
        requests_affected=round(g["cold_eligible_rows"] * rows_scale), requests_affected_monthly=cold_monthly,
        spend_affected_monthly_usd=(g["cold_spend"] or 0.0) * scale,
        savings_low_monthly_usd=low, savings_high_monthly_usd=high, action=action, evidence=evidence,
    )


def detect(con: duckdb.DuckDBPyConnection, settings: Settings) -> list[Finding]:
    reason = not_run_reason(con)
    if reason:
        return [not_run(KIND, reason)]
    try:
        sampled = _parse(con)
        groups = _measure(con, _shared_prefix_chars(con))
    finally:
        for table in (f"{_TEMP}_cold", f"{_TEMP}_prompts", f"{_TEMP}_prefixes"):
            con.execute(f"DROP TABLE IF EXISTS {table}")
    findings = [_finding(g, sampled) for g in groups]
    return [f for f in findings if f is not None]
