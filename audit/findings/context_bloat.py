"""Context bloat: conversations that re-send their whole history on every turn.

Reads: ``requests`` (messages, token counts), ``request_costs``,
``request_templates``, ``analysis_window``. Writes nothing (returns findings).

Method
------
Per template × model, over the successful, priced requests of the analysis
window, each request's ``messages`` list is split into

- the *prefix*: the first message when it is a system/developer prompt
  (kept as is, and usually already in the provider's prompt cache);
- the *history*: everything after the prefix up to and including the last
  assistant reply (earlier turns, and whatever was re-sent with them, such as
  per-turn retrieved articles);
- the *current turn*: what follows the last assistant reply.

A turn is one user question with its context and the assistant's reply, so a
request's turn count is its number of assistant replies + 1.

No tokenizer runs here: a segment's tokens are estimated as
``input_tokens × (its characters / all message characters)`` (content
characters; the 3-4 tokens of per-message overhead are spread evenly). The
test suite measures this against exact o200k counts on the sample logs.

Two remedies are priced, per request, at the prices that request really paid
(its ``request_costs`` components divided by its token counts), so history
that was served from the prompt cache is valued at the cache price:

- **low** (keep the last k turns, ``Settings.context_keep_turns``): requests
  with more than k turns drop the turns before the last k. Prompt caching is
  prefix-based (cache reads cover the first ``cached_input_tokens`` tokens,
  then cache writes, then uncached input), so the dropped span is priced by
  where it sat in the prompt. A sliding window changes the prompt right after
  the prefix on every turn, so the kept history that used to be a cache hit
  becomes uncached: that loss is subtracted.
- **high** (running summary): every earlier turn is replaced by a summary of
  ``SUMMARY_TOKENS`` (uncached, new on every turn); only the current turn is
  kept verbatim. Applied to requests whose history exceeds the summary. The
  summary is rewritten on each turn by the cheapest real-time model the
  ledger already uses (input: the old summary + one turn; output: the new
  summary), and that cost is subtracted. ``savings_high`` is the better of the
  two remedies, so it is never below ``savings_low``; both are in the evidence.

A template qualifies only when its turn counts vary (conversations grow turn
by turn); a fixed few-shot skeleton of user/assistant examples has one turn
count and is not history.

Scale: reading every message list of a million-request ledger costs more
than this detector's budget, so above ``MAX_PARSED`` requests the lists are
read for a deterministic sample of whole 2,048-row blocks (``sample_predicate``),
and each template × model's sums are scaled by its total monthly weight over
the parsed rows' weight (requests whose messages were not logged are assumed
to look like the parsed ones). Ledgers up to ``MAX_PARSED`` requests (the
sample logs) are measured exactly.
"""

from __future__ import annotations

from typing import Any

import duckdb

from audit.findings import IN_WINDOW, MONTHLY, Finding, Settings, not_run, precondition_failure

KIND = "context_bloat"
SUMMARY_TOKENS = 300          # size of a running conversation summary
MAX_PARSED = 120_000          # message lists parsed at most (a block sample above this)
# One JSON parse per request; non-text content (parts lists) comes back as its JSON text.
MESSAGE_SHAPE = '[{"role": "VARCHAR", "content": "VARCHAR"}]'
EXAMPLES = 3
_TEMP = "context_bloat_messages"


def _overlap(start: str, end: str, lo: str, hi: str) -> str:
    """SQL: tokens of the span [start, end) that fall inside [lo, hi)."""
    return f"greatest(0.0, least({end}, {hi}) - greatest({start}, {lo}))"


def _span_cost(start: str, end: str) -> str:
    """SQL: what the prompt tokens in [start, end) cost, by where they sat:
    cache reads first, then cache writes, then uncached input."""
    return (f"({_overlap(start, end, '0.0', 'cached')} * cached_price"
            f" + {_overlap(start, end, 'cached', 'cached + written')} * write_price"
            f" + {_overlap(start, end, 'cached + written', 'input_tokens')} * uncached_price)")


def not_run_reason(con: duckdb.DuckDBPyConnection) -> str | None:
    """Why this detector cannot look at the ledger, or None when it can (cheap existence checks)."""
    return precondition_failure(con, (
        "SELECT 1 FROM requests WHERE messages IS NOT NULL",
        "messages were not logged (usage-only export): conversation histories cannot be measured"))

def sample_predicate(con: duckdb.DuckDBPyConnection, max_rows: int) -> tuple[str, bool]:
    """SQL predicate on ``requests``: the analysis window, thinned to about ``max_rows`` rows
    in whole blocks of 2,048 when it holds more; and whether it thins.

    DuckDB decompresses a string column a vector (2,048 rows) at a time, so a
    row-level sample would still read every message list; whole vectors chosen
    by a hash of their number are skipped unread. Deterministic for a given
    table. Constants, not a join, so DuckDB pushes the predicate into the scan
    (run it in a statement of its own: inside a join the optimizer may lift it
    above the scan and read everything).
    """
    start, end = con.execute("SELECT window_start, window_end FROM analysis_window").fetchone()
    window = f"started_at BETWEEN TIMESTAMP '{start}' AND TIMESTAMP '{end}'"
    total = con.execute(f"SELECT count(*) FROM requests WHERE {window}").fetchone()[0]
    if total <= max_rows:
        return window, False
    per_million = int(1_000_000 * max_rows / total)
    return f"{window} AND hash(rowid // 2048) % 1000000 < {per_million}", True


def _parse_messages(con: duckdb.DuckDBPyConnection) -> None:
    """Roles and content lengths of the (sampled) window's message lists, into a temp table."""
    predicate, _ = sample_predicate(con, MAX_PARSED)
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE {_TEMP} AS
        SELECT request_id, list_transform(m, lambda x: x.role) AS roles,
               list_transform(m, lambda x: coalesce(length(x.content), 0)) AS chars
        FROM (SELECT request_id, from_json(messages, '{MESSAGE_SHAPE}') AS m FROM requests
              WHERE messages IS NOT NULL AND {predicate})"""
    )


def _measure(con: duckdb.DuckDBPyConnection, keep_turns: int) -> list[dict[str, Any]]:
    """One row per template × model: turn statistics, tokens removed and dollars saved (monthly)."""
    overlap_kept_cached = _overlap("prefix + trimmed", "prefix + history", "0.0", "cached")
    sql = f"""
    WITH base AS (
        SELECT r.request_id, t.template_id, r.model, r.is_batch,
               r.input_tokens::DOUBLE AS input_tokens,
               coalesce(r.cached_input_tokens, 0)::DOUBLE AS cached,
               coalesce(r.cache_write_tokens, 0)::DOUBLE AS written,
               coalesce(r.output_tokens, 0)::DOUBLE AS output_tokens,
               c.cost_usd,
               -- Components times this equal the billed cost whether or not the
               -- pricing stage folded the batch discount into them.
               c.cost_usd / nullif(coalesce(c.input_cost_usd, 0) + coalesce(c.cached_input_cost_usd, 0)
                                   + coalesce(c.cache_write_cost_usd, 0) + coalesce(c.output_cost_usd, 0), 0) AS scale,
               c.input_cost_usd, c.cached_input_cost_usd, c.cache_write_cost_usd, c.output_cost_usd,
               {MONTHLY} AS weight
        FROM requests r JOIN request_templates t USING (request_id) JOIN request_costs c USING (request_id),
             analysis_window w
        WHERE {IN_WINDOW} AND r.status = 'ok' AND c.cost_usd IS NOT NULL AND r.input_tokens > 0
    ),
    model_prices AS (   -- per model, what a token of each kind cost on average (fallback and summariser)
        SELECT model, NOT is_batch AS realtime,
               sum(input_cost_usd * scale) / nullif(sum(input_tokens - cached - written), 0) AS uncached_price,
               sum(output_cost_usd * scale) / nullif(sum(output_tokens), 0) AS output_price
        FROM base GROUP BY ALL
    ),
    summariser AS (     -- the cheapest real-time model already in use writes the running summary
        SELECT arg_min(uncached_price, output_price) AS input_price, min(output_price) AS output_price
        FROM model_prices WHERE realtime AND output_price IS NOT NULL AND uncached_price IS NOT NULL
    ),
    groups AS (
        SELECT template_id, model, count(*) AS rows_total, sum(weight) AS weight_total,
               sum(weight * input_tokens) AS input_tokens_total
        FROM base GROUP BY ALL
    ),
    parsed AS (
        SELECT b.*, g.rows_total, g.weight_total, g.input_tokens_total, s.roles, s.chars
        FROM {_TEMP} s JOIN base b USING (request_id) JOIN groups g USING (template_id, model)
    ),
    shaped AS (
        SELECT p.* EXCLUDE (roles, chars), len(roles) AS n_messages,
               -- positions of the assistant replies (a trailing assistant message is a prefill, not a turn)
               list_filter(range(1, len(roles) + 1), lambda i: roles[i] = 'assistant' AND i < len(roles)) AS replies,
               CASE WHEN roles[1] IN ('system', 'developer') THEN 2 ELSE 1 END AS history_from,
               list_sum(chars)::DOUBLE AS total_chars, chars
        FROM parsed p
    ),
    sized AS (
        SELECT s.* EXCLUDE (chars, replies), len(replies) + 1 AS turns,
               input_tokens / nullif(total_chars, 0) AS tokens_per_char,
               CASE WHEN history_from = 2 THEN chars[1] ELSE 0 END AS prefix_chars,
               CASE WHEN len(replies) > 0 THEN coalesce(list_sum(chars[history_from:replies[-1]]), 0) ELSE 0 END
                   AS history_chars,
               CASE WHEN len(replies) >= {keep_turns}
                    THEN coalesce(list_sum(chars[history_from:replies[len(replies) + 1 - {keep_turns}]]), 0)
                    ELSE 0 END AS trimmed_chars
        FROM shaped s
    ),
    tokens AS (
        SELECT z.*, coalesce(prefix_chars * tokens_per_char, 0) AS prefix,
               coalesce(history_chars * tokens_per_char, 0) AS history,
               coalesce(trimmed_chars * tokens_per_char, 0) AS trimmed,
               coalesce(z.input_cost_usd * z.scale / nullif(z.input_tokens - z.cached - z.written, 0),
                        m.uncached_price) AS uncached_price,
               coalesce(z.cached_input_cost_usd * z.scale / nullif(z.cached, 0), 0) AS cached_price,
               coalesce(z.cache_write_cost_usd * z.scale / nullif(z.written, 0), 0) AS write_price
        FROM sized z LEFT JOIN model_prices m ON m.model IS NOT DISTINCT FROM z.model AND m.realtime = NOT z.is_batch
    ),
    priced AS (
        SELECT t.*,
               CASE WHEN trimmed > 0 THEN
                   {_span_cost('prefix', 'prefix + trimmed')}
                   - {overlap_kept_cached} * greatest(uncached_price - cached_price, 0)
               ELSE 0 END AS keep_k_saving,
               CASE WHEN trimmed > 0 THEN {overlap_kept_cached} * greatest(uncached_price - cached_price, 0)
                    ELSE 0 END AS keep_k_cache_loss,
               CASE WHEN history > {SUMMARY_TOKENS} THEN
                   {_span_cost('prefix', 'prefix + history')} - {SUMMARY_TOKENS} * uncached_price
                   - ((({SUMMARY_TOKENS} + history / (turns - 1)) * s.input_price + {SUMMARY_TOKENS} * s.output_price))
               ELSE 0 END AS summary_saving,
               CASE WHEN history > {SUMMARY_TOKENS} THEN
                   ({SUMMARY_TOKENS} + history / (turns - 1)) * s.input_price + {SUMMARY_TOKENS} * s.output_price
               ELSE 0 END AS summariser_cost,
               {_overlap('prefix', 'prefix + history', '0.0', 'cached')} AS history_cached
        FROM tokens t, summariser s
    ),
    template_spend AS (
        SELECT template_id, sum(weight * cost_usd) AS spend FROM base GROUP BY ALL
    )
    SELECT p.template_id, p.model,
           any_value(rows_total) AS rows_total, count(*) AS rows_parsed,
           -- Sampled sums scale by input tokens (known for every row), a ratio
           -- estimator: blocks of long conversations weigh in with their size.
           any_value(input_tokens_total) / sum(weight * input_tokens) AS scale_up,
           any_value(weight_total) / sum(weight) AS rows_scale_up,
           any_value(weight_total) AS requests_monthly,
           count(DISTINCT turns) AS distinct_turn_counts,
           quantile_disc(turns, 0.5) AS median_turns, quantile_disc(turns, 0.9) AS p90_turns,
           max(turns) AS max_turns, quantile_disc(n_messages, 0.5) AS median_messages,
           sum(input_tokens) / nullif(sum(output_tokens), 0) AS input_output_ratio,
           sum(history) / sum(input_tokens) AS history_share,
           sum(history_cached) / nullif(sum(history), 0) AS history_cached_share,
           quantile_cont(history, 0.9) AS p90_history_tokens,
           count(*) FILTER (WHERE turns > 1) AS rows_with_history,
           count(*) FILTER (WHERE trimmed > 0) AS rows_trimmed,
           sum(weight) FILTER (WHERE turns > 1) AS with_history_monthly,
           sum(weight * cost_usd) AS spend_monthly,
           sum(weight * cost_usd) FILTER (WHERE turns > 1) AS with_history_spend_monthly,
           sum(weight * history) AS history_tokens_monthly,
           sum(weight * trimmed) AS keep_k_tokens_monthly,
           sum(weight * greatest(history - {SUMMARY_TOKENS}, 0)) AS summary_tokens_monthly,
           sum(weight * keep_k_saving) AS keep_k_saving_monthly,
           sum(weight * keep_k_cache_loss) AS keep_k_cache_loss_monthly,
           sum(weight * summary_saving) AS summary_saving_monthly,
           sum(weight * summariser_cost) AS summariser_cost_monthly,
           max_by(request_id, history, {EXAMPLES}) AS example_request_ids,
           any_value(ts.spend) AS template_spend_monthly
    FROM priced p LEFT JOIN template_spend ts USING (template_id)
    GROUP BY p.template_id, p.model
    ORDER BY p.template_id, p.model
    """
    cursor = con.execute(sql)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def _finding(g: dict[str, Any], keep_turns: int) -> Finding | None:
    scale = g["scale_up"] or 1.0
    low = max(0.0, (g["keep_k_saving_monthly"] or 0.0) * scale)
    summary = max(0.0, (g["summary_saving_monthly"] or 0.0) * scale)
    if g["distinct_turn_counts"] < 2 or (low <= 0 and summary <= 0):
        return None
    high = max(low, summary)
    rows_ratio = g["rows_total"] / g["rows_parsed"]
    history_pct = 100 * (g["history_share"] or 0.0)
    action = (
        f"Stop re-sending the whole conversation: history is {history_pct:.0f}% of input tokens "
        f"(median {g['median_turns']} turns, p90 {g['p90_turns']}; input:output {g['input_output_ratio']:.0f}:1). "
        f"Send the system prompt and the last {keep_turns} turns, or a running ~{SUMMARY_TOKENS}-token summary "
        f"of earlier turns plus the current one. Quality-gated: replay conversations that refer back to early turns."
    )
    evidence = {
        "median_turns": g["median_turns"],
        "p90_turns": g["p90_turns"],
        "max_turns": g["max_turns"],
        "median_messages": g["median_messages"],
        "input_output_ratio": round(g["input_output_ratio"] or 0.0, 2),
        "history_share_of_input": round(g["history_share"] or 0.0, 4),
        "history_cached_share": round(g["history_cached_share"] or 0.0, 4),
        "p90_history_tokens": round(g["p90_history_tokens"] or 0.0),
        "history_tokens_monthly": round((g["history_tokens_monthly"] or 0.0) * scale),
        "keep_turns": keep_turns,
        "requests_over_keep_turns": round(g["rows_trimmed"] * rows_ratio),
        "tokens_removed_monthly_low": round((g["keep_k_tokens_monthly"] or 0.0) * scale),
        "tokens_removed_monthly_high": round((g["summary_tokens_monthly"] or 0.0) * scale),
        "last_k_turns_savings_monthly_usd": round(low, 2),
        "last_k_turns_cache_loss_monthly_usd": round((g["keep_k_cache_loss_monthly"] or 0.0) * scale, 2),
        "running_summary_savings_monthly_usd": round(summary, 2),
        "summary_tokens": SUMMARY_TOKENS,
        "summariser_cost_monthly_usd": round((g["summariser_cost_monthly"] or 0.0) * scale, 2),
        "template_spend_monthly_usd": round(g["template_spend_monthly"] or 0.0, 2),
        "template_model_spend_monthly_usd": round(g["spend_monthly"] * scale, 2),
        "requests_parsed": g["rows_parsed"],
        "requests_in_window": g["rows_total"],
        "example_request_ids": list(g["example_request_ids"] or []),
        "method": "history tokens = input_tokens x character share of messages before the current turn; "
                  "dollars at each request's own paid prices by position in the prompt (cache reads first)",
    }
    return Finding(
        kind=KIND, template_id=g["template_id"], model=g["model"],
        requests_affected=round(g["rows_with_history"] * rows_ratio),
        requests_affected_monthly=(g["with_history_monthly"] or 0.0) * (g["rows_scale_up"] or 1.0),
        spend_affected_monthly_usd=(g["with_history_spend_monthly"] or 0.0) * scale,
        savings_low_monthly_usd=low, savings_high_monthly_usd=high, action=action, evidence=evidence,
    )


def detect(con: duckdb.DuckDBPyConnection, settings: Settings) -> list[Finding]:
    reason = not_run_reason(con)
    if reason:
        return [not_run(KIND, reason)]
    keep_turns = max(1, int(settings.context_keep_turns))
    try:
        _parse_messages(con)
        groups = _measure(con, keep_turns)
    finally:
        con.execute(f"DROP TABLE IF EXISTS {_TEMP}")
    if not groups:
        return [not_run(KIND, "no successful, priced, templated request with messages in the analysis window")]
    findings = [_finding(g, keep_turns) for g in groups]
    return [f for f in findings if f is not None]
