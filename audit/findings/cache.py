"""Exact-repeat queries: what a response cache with a TTL would have saved.

Reads: ``requests``, ``request_costs``, ``request_templates``, ``templates``
(through ``request_templates``), ``analysis_window``. Writes: nothing (returns
``Finding`` rows of kind ``exact_cache``; ``audit.findings.write_findings``
stores them). Creates and drops its own TEMP tables (``_exact_cache_*``), and
keeps ``_findings_scan`` (``prompt_scan``: every prompt hashed once, shared
with ``near_duplicates`` and ``precompute`` while the ledger is unchanged).

The cache simulated
-------------------
Per template × model, a call is a cache *hit* when the same prompt (same model,
same full ``messages``) was seen less than ``settings.cache_ttl_hours`` before
it and the logged responses agree. The cache keeps the most recent response of
each prompt, so "seen within the TTL" is the gap to the previous copy (a
``lag`` over the partition (template, model, prompt hash) ordered by time);
a gap of exactly the TTL has expired. Responses *agree* when their normalised
texts are equal (lower case, punctuation and whitespace removed): only such
hits count, so a cache never serves an answer the model would not have given.
Failed calls and calls without a logged response are not cached.

Two variants are simulated:

- ``exact``: the prompt key is a hash of the whole ``messages`` JSON;
- ``normalised``: user messages are compared lower-cased, without punctuation
  and with whitespace collapsed (what a cache that normalises the typed
  question would see); other messages stay exact. The variant parses the
  messages, so on big ledgers it runs on at most ``SUBSET_ROWS`` calls per
  template × model (chosen by a hash of the request id, i.e. a uniform random
  subset; see ``prompt_scan``) and is treated as a sample of that fraction
  (``q``) below.

Why a sample underestimates, and the estimator
-----------------------------------------------
A call in a 0.015 % sample is a hit only if an earlier copy of its prompt was
*also* sampled within the TTL. A prompt asked 1,000 times a day shows up about
once a week in such a sample, so the sample's own timeline shows few repeats
within 24 h although in the full traffic nearly every copy is a hit. The
sample-measured hit rate is kept in the evidence (``measured_on_sample``);
savings use an estimate of the full traffic's hits:

Each sampled call stands for ``1/p`` calls (``p`` = ``sampled_fraction`` × the
variant's ``q``). For a prompt with ``n`` sampled calls in the analysis window
of ``H`` hours, ``F = Σ 1/p`` estimates its full-traffic calls in the window.
If its calls arrive as a Poisson process, a call is a hit (previous copy less
than ``T`` = TTL before it) with probability ``h(F) = 1 − exp(−F·T/H)``: a
prompt asked ``f = F·T/H`` times per TTL window gives about ``f − 1`` hits per
window (``h ≈ (f − 1)/f`` for large ``f``). Estimated savings are
``Σ_calls cost × monthly weight × h(F) × a``, where ``a`` is the share of
consecutive copies of the prompt (in the sample, any gap) whose responses
agree, shrunk towards the template's pooled share with ``AGREEMENT_PRIOR_PAIRS``
pseudo-pairs (a prompt seen twice gives one noisy pair).

- A prompt seen at least twice in the sample is certainly repeated (two draws
  at ``p`` rarely land on the same unique prompt); its ``F`` is ``n/p``.
- A prompt seen once is ambiguous: unique in the full traffic, or asked
  thousands of times. The *low* estimate counts it as unique (no hits). The
  *high* estimate uses Robbins' (Good–Turing) estimate of the mean full
  frequency of a prompt seen once, ``E[F | n = 1] = 2·n₂ / (n₁·p)`` (``n₁``,
  ``n₂``: prompts seen once and twice), and ``h`` of that mean. ``h`` is
  concave, so by Jensen's inequality this bounds the mean hit share from
  above; it is also the largest hit share that the observed ``n₂`` allows.
  Templates whose prompts never repeat in the sample (``n₂ = 0``) get nothing.

Low = exact prompts, repeats seen in the sample only; high = normalised
prompts, with the upper bound for prompts seen once (never below low). When
the ledger is the whole traffic (``p = 1`` for every call and no subset taken)
the simulation on the real timeline is exact and is used as it is.

Assumptions: the export is a uniform random sample of calls (Bernoulli, as
``sampled_fraction`` says); calls of one prompt spread over the window like a
Poisson process (growth and daily peaks only bunch them, which raises real
hit rates of frequent prompts, where ``h`` is already ~1); a cache keyed on the
prompt alone (sampling parameters ignored: the agreement rule catches prompts
whose answers vary).

Savings are the monthly cost of the hit calls at the calls' own prices; the
evidence carries ``template_spend_monthly_usd`` (all models of the template),
which ``audit.findings.stack`` uses to stack later steps.

The helpers ``missing_inputs``, ``normalised_text_sql``, ``template_spend``
and ``hit_probability`` are shared with ``near_duplicates`` and ``precompute``.
"""

from __future__ import annotations

import math
from typing import Any

import duckdb

from audit.findings import IN_WINDOW, MONTHLY, Finding, Settings, not_run

KIND = "exact_cache"

# Texts are parsed (normalised variant, near-duplicates) for at most this many
# calls per template × model: a uniform subset, scaled back as a sample.
SUBSET_ROWS = 1000
# Pseudo-pairs of the template's pooled agreement added to each prompt's own pairs.
AGREEMENT_PRIOR_PAIRS = 4
EXAMPLES = 3
TOP_REPEATED = 5
TEXT_PREVIEW = 160

AGREEMENT_RULE = "normalised response texts equal (lower case; punctuation and whitespace removed)"
CACHE_RULE = ("hit: the same prompt (template, model, messages) was answered less than the TTL before, "
              "and both logged responses agree; the cache keeps each prompt's latest response")


# --------------------------------------------------------------------------- shared helpers


def normalised_text_sql(expr: str) -> str:
    """SQL for the comparison form of a text: lower case, only letters and digits kept.

    Dropping whitespace entirely (rather than collapsing it) is one regex pass
    instead of two, and equal texts stay equal; it only also merges texts that
    differ in where words break ("log in" / "login"), which is what we want.
    """
    return f"regexp_replace(lower({expr}), '[^\\p{{L}}\\p{{N}}]+', '', 'g')"


def normalised_words_sql(expr: str) -> str:
    """SQL for a text as words: lower case, every run of non-letters/digits one space (one regex pass)."""
    return f"trim(regexp_replace(lower({expr}), '[^\\p{{L}}\\p{{N}}]+', ' ', 'g'))"


def user_text_sql(parsed: str) -> str:
    """SQL: the user messages' contents of a parsed ``messages`` list (``JSON[]``), joined by newlines."""
    return (f"array_to_string(list_transform(list_filter({parsed}, lambda m: m->>'role' = 'user'), "
            f"lambda m: m->>'content'), chr(10))")


def prompt_skeleton_sql(parsed: str) -> str:
    """SQL: a parsed ``messages`` list with each user message replaced by its role (the rest exact)."""
    return f"list_transform({parsed}, lambda m: CASE WHEN m->>'role' = 'user' THEN 'user' ELSE m::VARCHAR END)"


def missing_inputs(con: duckdb.DuckDBPyConnection) -> str | None:
    """Why a repeat-based detector cannot look at this ledger, or None when it can."""
    if con.execute("SELECT count(*) FROM analysis_window").fetchall()[0][0] == 0:
        return "no analysis window: the ledger has no timestamps (or compute_window has not run)"
    logged = con.execute(
        f"""SELECT count(*) FROM (SELECT 1 FROM requests r, analysis_window w
            WHERE {IN_WINDOW} AND r.status = 'ok' AND r.messages IS NOT NULL AND r.response_text IS NOT NULL
            LIMIT 1)"""
    ).fetchall()[0][0]
    if logged == 0:
        return ("prompts and responses were not logged (usage-only export): repeated prompts and their "
                "answers cannot be compared")
    if con.execute("SELECT count(*) FROM (SELECT 1 FROM request_templates LIMIT 1)").fetchall()[0][0] == 0:
        return "no prompt templates: request_templates is empty (template mining has not run or found none)"
    priced = con.execute(
        f"""SELECT count(*) FROM (SELECT 1 FROM requests r JOIN request_costs c USING (request_id), analysis_window w
            WHERE {IN_WINDOW} AND c.cost_usd IS NOT NULL LIMIT 1)"""
    ).fetchall()[0][0]
    if priced == 0:
        return "no request in the analysis window has a price: savings cannot be put in dollars"
    return None


def template_spend(con: duckdb.DuckDBPyConnection) -> dict[str, float]:
    """Monthly, full-traffic spend of each template over all its models (what stacking divides by).

    ``templates.spend_monthly_usd`` when the roll-up has filled it for every
    template (``audit.analyze`` does, before the detectors); else summed here.
    """
    rolled = con.execute(
        "SELECT template_id, spend_monthly_usd FROM templates WHERE spend_monthly_usd IS NOT NULL").fetchall()
    missing = con.execute(
        """SELECT count(*) FROM (SELECT DISTINCT template_id FROM request_templates)
           WHERE template_id NOT IN (SELECT template_id FROM templates WHERE spend_monthly_usd IS NOT NULL)"""
    ).fetchall()[0][0]
    if rolled and not missing:
        return dict(rolled)
    return dict(con.execute(
        f"""SELECT t.template_id, coalesce(sum(c.cost_usd * {MONTHLY}) FILTER (WHERE {IN_WINDOW}), 0)
            FROM request_templates t JOIN requests r USING (request_id)
            LEFT JOIN request_costs c USING (request_id), analysis_window w
            GROUP BY t.template_id"""
    ).fetchall())


def window_hours(con: duckdb.DuckDBPyConnection) -> float:
    return float(con.execute("SELECT days FROM analysis_window").fetchall()[0][0]) * 24.0


def hit_probability(scaled_calls: float, ttl_hours: float, hours: float) -> float:
    """Share of a prompt's calls that find a copy less than the TTL old: Poisson arrivals over the window."""
    if scaled_calls <= 0 or hours <= 0:
        return 0.0
    return 1.0 - math.exp(-scaled_calls * ttl_hours / hours)


def drop_temp(con: duckdb.DuckDBPyConnection, *names: str) -> None:
    for name in names:
        con.execute(f"DROP TABLE IF EXISTS {name}")


# --------------------------------------------------------------------------- simulation


def prompt_scan(con: duckdb.DuckDBPyConnection, lookback_hours: float) -> str:
    """The name of a TEMP table holding what the repeat detectors compare, for every successful call with
    messages and a response from ``lookback_hours`` before the analysis window to its end.

    Columns: ``ledger_row`` (the request's rowid), ``request_id``, ``model``,
    ``started_at``, ``sampled_fraction``, ``exact_key`` (hash of the messages
    JSON), ``response_key`` (hash of the raw response); and, for a uniform
    subset of at most ``SUBSET_ROWS`` calls per template × model (a hash of the
    request id below the group's fraction: deterministic, independent of the
    text), ``template_id``, ``subset_fraction``, ``user_words`` and
    ``response_words`` (``normalised_words_sql`` of the user messages and of
    the response), ``normalised_key`` (hash of the prompt's skeleton, see
    ``prompt_skeleton_sql``, and the user words without spaces, which is
    ``normalised_text_sql``'s form) and ``response_normalised`` (likewise).
    Other calls have NULL there.

    Reading the messages column is the expensive part (~3 s per million chat
    calls, whatever is done with it; fetching a scattered subset by rowid costs
    as much as reading all), so it is read once: the subset's texts are parsed
    in the same scan as every call's hash. The table is kept on the connection
    and reused by the other detectors while the ledger, the templates and the
    window are unchanged (a fingerprint of them is checked).
    """
    fingerprint = str(con.execute(
        """SELECT (SELECT (count(*), max(rowid), sum(hash(request_id)), count(messages), count(response_text))
                   FROM requests),
                  (SELECT (count(*), sum(hash(request_id, template_id))) FROM request_templates),
                  (SELECT (min(window_start), min(window_end)) FROM analysis_window)"""
    ).fetchall()[0]) + f"/{SUBSET_ROWS}"
    if con.execute("SELECT count(*) FROM duckdb_tables() WHERE temporary AND table_name = '_findings_scan_state'"
                   ).fetchall()[0][0]:
        known = con.execute("SELECT fingerprint, lookback_hours FROM _findings_scan_state").fetchall()
        if known and known[0][0] == fingerprint and known[0][1] >= lookback_hours:
            return "_findings_scan"
    since = "w.window_start - to_microseconds(CAST(? * 3600e6 AS BIGINT))"
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _findings_picked AS
        WITH calls AS (
            SELECT r.request_id, t.template_id, coalesce(r.model, '(unknown)') AS model
            FROM requests r JOIN request_templates t USING (request_id), analysis_window w
            WHERE r.status = 'ok' AND r.messages IS NOT NULL AND r.response_text IS NOT NULL
              AND r.started_at <= w.window_end AND r.started_at >= {since}),
        fractions AS (
            SELECT template_id, model, least(1.0, {SUBSET_ROWS} / count(*)) AS q FROM calls GROUP BY ALL)
        SELECT c.request_id, c.template_id, f.q AS subset_fraction
        FROM calls c JOIN fractions f USING (template_id, model)
        WHERE f.q >= 1.0 OR hash(c.request_id) % 1000000 < f.q * 1000000""",
        [lookback_hours],
    )
    # The picked calls are few, so they are the join's build side and the ledger streams past them;
    # the picked calls' texts are copied out in the same pass and parsed afterwards.
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _findings_scan_raw AS
        SELECT r.rowid AS ledger_row, r.request_id, r.model, r.started_at, r.sampled_fraction,
               hash(r.messages) AS exact_key, hash(r.response_text) AS response_key,
               p.template_id, p.subset_fraction,
               CASE WHEN p.subset_fraction IS NOT NULL THEN r.messages END AS picked_messages,
               CASE WHEN p.subset_fraction IS NOT NULL THEN r.response_text END AS picked_response
        FROM requests r LEFT JOIN _findings_picked p USING (request_id), analysis_window w
        WHERE r.status = 'ok' AND r.messages IS NOT NULL AND r.response_text IS NOT NULL
          AND r.started_at <= w.window_end AND r.started_at >= {since}""",
        [lookback_hours],
    )
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _findings_scan AS
        WITH texts AS (
            SELECT ledger_row, json_extract(picked_messages, '$[*]')::JSON[] AS parsed, picked_response
            FROM _findings_scan_raw WHERE subset_fraction IS NOT NULL),
        words AS (
            SELECT ledger_row, {prompt_skeleton_sql('parsed')} AS skeleton,
                   {normalised_words_sql(user_text_sql('parsed'))} AS user_words,
                   {normalised_words_sql('picked_response')} AS response_words
            FROM texts),
        parsed AS (
            -- without the spaces the words are normalised_text_sql's form: one regex pass serves both
            SELECT ledger_row, hash(skeleton, replace(user_words, ' ', '')) AS normalised_key, user_words,
                   response_words, hash(replace(response_words, ' ', '')) AS response_normalised
            FROM words)
        SELECT s.* EXCLUDE (picked_messages, picked_response), p.* EXCLUDE (ledger_row)
        FROM _findings_scan_raw s LEFT JOIN parsed p USING (ledger_row)"""
    )
    con.execute("CREATE OR REPLACE TEMP TABLE _findings_scan_state AS SELECT ? AS fingerprint, "
                "?::DOUBLE AS lookback_hours", [fingerprint, lookback_hours])
    drop_temp(con, "_findings_picked", "_findings_scan_raw")
    return "_findings_scan"


def _calls_table(con: duckdb.DuckDBPyConnection, ttl_hours: float) -> str:
    """Cacheable calls of templated requests in the window, plus one TTL before it (the look-back).

    Returns the name of the scan table they come from.
    """
    scan = prompt_scan(con, ttl_hours)
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _exact_cache_calls AS
        SELECT r.ledger_row, r.request_id, t.template_id, coalesce(r.model, '(unknown)') AS model, r.started_at,
               r.sampled_fraction, {IN_WINDOW} AS in_window,
               CASE WHEN {IN_WINDOW} THEN coalesce(c.cost_usd, 0) * {MONTHLY} ELSE 0 END AS spend_monthly,
               CASE WHEN {IN_WINDOW} THEN {MONTHLY} ELSE 0 END AS calls_monthly,
               c.cost_usd IS NULL AS unpriced, r.exact_key, r.response_key, 1.0 AS subset_fraction,
               r.subset_fraction AS picked_fraction, r.normalised_key
        FROM {scan} r JOIN request_templates t USING (request_id)
        LEFT JOIN request_costs c USING (request_id), analysis_window w
        WHERE r.started_at >= w.window_start - to_microseconds(CAST(? * 3600e6 AS BIGINT))""",
        [ttl_hours],
    )
    # The normalised variant runs on the scan's subset (its texts were parsed in the same pass).
    con.execute(
        """CREATE OR REPLACE TEMP TABLE _exact_cache_norm_calls AS
        SELECT * EXCLUDE (subset_fraction, picked_fraction), picked_fraction AS subset_fraction
        FROM _exact_cache_calls WHERE picked_fraction IS NOT NULL"""
    )
    return scan


def _simulate(con: duckdb.DuckDBPyConnection, source: str, key: str, target: str, ttl_hours: float) -> None:
    """``target``: each call of the window with the previous copy of its prompt, the gap, and agreement.

    Raw response hashes settle most comparisons; texts are normalised only for
    the distinct responses that differ from their predecessor's, so the regex
    work follows the number of distinct differing answers, not the ledger.
    """
    # Only prompts seen twice or more can repeat: the window function sorts just those.
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE {target}_lag AS
        WITH counted AS (
            SELECT *, count(*) OVER (PARTITION BY template_id, model, {key}) AS copies FROM {source})
        SELECT ledger_row, request_id, template_id, model, {key} AS prompt_key, started_at, sampled_fraction,
               subset_fraction, in_window, spend_monthly, calls_monthly, unpriced, response_key,
               lag(request_id) OVER k AS previous_id, lag(started_at) OVER k AS previous_at,
               lag(response_key) OVER k AS previous_response_key
        FROM counted WHERE copies >= 2
        WINDOW k AS (PARTITION BY template_id, model, {key} ORDER BY started_at, request_id)
        UNION ALL
        SELECT ledger_row, request_id, template_id, model, {key}, started_at, sampled_fraction, subset_fraction,
               in_window, spend_monthly, calls_monthly, unpriced, response_key, NULL, NULL, NULL
        FROM counted WHERE copies < 2"""
    )
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE {target}_texts AS
        WITH differing AS (
            SELECT DISTINCT response_key, previous_response_key FROM {target}_lag
            WHERE in_window AND previous_id IS NOT NULL AND response_key <> previous_response_key),
        keys AS (SELECT response_key AS k FROM differing UNION SELECT previous_response_key FROM differing),
        representative AS (
            SELECT response_key, min(ledger_row) AS ledger_row FROM {source}
            WHERE response_key IN (SELECT k FROM keys) GROUP BY response_key)
        SELECT p.response_key, n.normalised
        FROM representative p JOIN (
            SELECT rowid AS ledger_row, hash({normalised_text_sql('response_text')}) AS normalised
            FROM requests WHERE rowid IN (SELECT ledger_row FROM representative)) n USING (ledger_row)"""
    )
    ttl_us = round(ttl_hours * 3600e6)
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE {target} AS
        SELECT s.* EXCLUDE (previous_at, previous_response_key, in_window), s.previous_id IS NOT NULL AS repeat,
               CASE WHEN s.previous_id IS NULL THEN NULL
                    WHEN s.response_key = s.previous_response_key THEN true
                    ELSE coalesce(a.normalised = b.normalised, false) END AS agree,
               s.previous_id IS NOT NULL
                   AND epoch_us(s.started_at) - epoch_us(s.previous_at) < {ttl_us} AS within_ttl
        FROM {target}_lag s
        LEFT JOIN {target}_texts a ON a.response_key = s.response_key
        LEFT JOIN {target}_texts b ON b.response_key = s.previous_response_key
        WHERE s.in_window"""
    )
    drop_temp(con, f"{target}_lag", f"{target}_texts")


_GROUP_COLUMNS = [
    "template_id", "model", "calls_in_sample", "distinct_prompts", "repeated_prompts", "n1", "n2", "fraction",
    "min_fraction", "subset_fraction", "agreement", "pairs", "agreeing_pairs", "calls_monthly", "spend_monthly",
    "repeated_rows", "repeated_calls", "repeated_spend", "single_rows", "single_calls", "single_spend",
    "repeated_savings", "repeated_hits", "measured_hits", "measured_rejected", "measured_savings",
    "measured_hit_calls", "unpriced_calls",
]


def _estimate(con: duckdb.DuckDBPyConnection, rows: str, ttl_hours: float, hours: float) -> dict[tuple, dict]:
    """Per template × model: hits measured on the ledger's timeline, and the full-traffic estimate.

    See the module docstring: prompts seen twice or more get ``h(F)`` times
    their shrunk agreement; prompts seen once are summed apart for Robbins'
    upper bound, which is applied here in Python (one number per group).
    """
    t_over_h = ttl_hours / hours
    result = con.execute(
        f"""WITH keys AS (
            SELECT template_id, model, prompt_key, count(*) AS n,
                   sum(1.0 / (sampled_fraction * subset_fraction)) AS scaled,
                   count(*) FILTER (WHERE repeat) AS pairs, count(*) FILTER (WHERE agree) AS agreeing,
                   sum(1.0 / subset_fraction) AS rows_scaled,
                   sum(calls_monthly / subset_fraction) AS calls, sum(spend_monthly / subset_fraction) AS spend
            FROM {rows} GROUP BY ALL),
        pooled AS (
            SELECT template_id, model, sum(agreeing) / nullif(sum(pairs), 0) AS agreement
            FROM keys GROUP BY ALL),
        estimated AS (
            SELECT k.*, (k.agreeing + {AGREEMENT_PRIOR_PAIRS} * coalesce(p.agreement, 0))
                        / (k.pairs + {AGREEMENT_PRIOR_PAIRS}) AS agreement_shrunk,
                   1 - exp(-k.scaled * {t_over_h}) AS hit_share
            FROM keys k JOIN pooled p USING (template_id, model)),
        per_key AS (
            SELECT template_id, model, sum(n) AS calls_in_sample, count(*) AS distinct_prompts,
                   count(*) FILTER (WHERE n >= 2) AS repeated_prompts,
                   count(*) FILTER (WHERE n = 1) AS n1, count(*) FILTER (WHERE n = 2) AS n2,
                   sum(n) / sum(scaled) AS fraction,
                   sum(pairs) AS pairs, sum(agreeing) AS agreeing_pairs,
                   sum(calls) AS calls_monthly, sum(spend) AS spend_monthly,
                   sum(rows_scaled) FILTER (WHERE n >= 2) AS repeated_rows,
                   sum(calls) FILTER (WHERE n >= 2) AS repeated_calls,
                   sum(spend) FILTER (WHERE n >= 2) AS repeated_spend,
                   sum(rows_scaled) FILTER (WHERE n = 1) AS single_rows,
                   sum(calls) FILTER (WHERE n = 1) AS single_calls,
                   sum(spend) FILTER (WHERE n = 1) AS single_spend,
                   sum(spend * hit_share * agreement_shrunk) FILTER (WHERE n >= 2) AS repeated_savings,
                   sum(calls * hit_share * agreement_shrunk) FILTER (WHERE n >= 2) AS repeated_hits
            FROM estimated GROUP BY ALL),
        per_call AS (
            SELECT template_id, model, min(sampled_fraction * subset_fraction) AS min_fraction,
                   avg(subset_fraction) AS subset_fraction,
                   count(*) FILTER (WHERE within_ttl AND agree) AS measured_hits,
                   count(*) FILTER (WHERE within_ttl AND NOT agree) AS measured_rejected,
                   sum(spend_monthly / subset_fraction) FILTER (WHERE within_ttl AND agree) AS measured_savings,
                   sum(calls_monthly / subset_fraction) FILTER (WHERE within_ttl AND agree) AS measured_hit_calls,
                   count(*) FILTER (WHERE unpriced) AS unpriced_calls
            FROM {rows} GROUP BY ALL)
        SELECT k.template_id, k.model, k.calls_in_sample, k.distinct_prompts, k.repeated_prompts, k.n1, k.n2,
               k.fraction, c.min_fraction, c.subset_fraction, p.agreement, k.pairs, k.agreeing_pairs,
               k.calls_monthly, k.spend_monthly, k.repeated_rows, k.repeated_calls, k.repeated_spend,
               k.single_rows, k.single_calls, k.single_spend, k.repeated_savings, k.repeated_hits,
               c.measured_hits, c.measured_rejected, c.measured_savings, c.measured_hit_calls, c.unpriced_calls
        FROM per_key k JOIN per_call c USING (template_id, model) JOIN pooled p USING (template_id, model)"""
    ).fetchall()
    out = {}
    for row in result:
        s = {name: (0 if value is None else value) for name, value in zip(_GROUP_COLUMNS, row)}
        s["agreement"] = s["agreement"] or 0.0
        # Only a ledger that is the whole traffic (no sampling, no subset) has the real timeline.
        s["whole_traffic"] = s["min_fraction"] >= 1.0
        # Robbins: the mean full-traffic calls, in the window, of a prompt seen once.
        s["single_mean_scaled"] = 2.0 * s["n2"] / (s["n1"] * s["fraction"]) if s["n1"] and s["fraction"] else 0.0
        s["single_hit_share"] = hit_probability(s["single_mean_scaled"], ttl_hours, hours)
        s["single_savings"] = s["single_spend"] * s["single_hit_share"] * s["agreement"]
        s["single_hits"] = s["single_calls"] * s["single_hit_share"] * s["agreement"]
        out[(s["template_id"], s["model"])] = s
    return out


def _examples(con: duckdb.DuckDBPyConnection, rows: str) -> dict[tuple, list[dict[str, str]]]:
    """The first hits per template × model: the call and the earlier copy whose answer it would have reused."""
    out: dict[tuple, list[dict[str, str]]] = {}
    for template_id, model, pairs in con.execute(
        f"""SELECT template_id, model, min_by((request_id, previous_id), (started_at, request_id), {EXAMPLES})
            FROM {rows} WHERE within_ttl AND agree GROUP BY ALL"""
    ).fetchall():
        out[(template_id, model)] = [{"request_id": p[0], "repeat_of": p[1]} for p in pairs]
    return out


def _top_repeated(con: duckdb.DuckDBPyConnection, rows: str, scan: str) -> dict[tuple, list[dict[str, Any]]]:
    """The most repeated prompts (normalised) per template × model, with their user text (normalised words)."""
    top = con.execute(
        f"""WITH keys AS (
            SELECT template_id, model, prompt_key, count(*) AS n, sum(calls_monthly / subset_fraction) AS monthly,
                   count(*) FILTER (WHERE agree) / nullif(count(*) FILTER (WHERE repeat), 0) AS agreement,
                   arg_min(request_id, (started_at, request_id)) AS example
            FROM {rows} GROUP BY ALL HAVING count(*) >= 2)
        SELECT k.template_id, k.model, k.n, k.monthly, k.agreement, k.example, left(s.user_words, {TEXT_PREVIEW})
        FROM keys k JOIN {scan} s ON s.request_id = k.example
        QUALIFY row_number() OVER (PARTITION BY k.template_id, k.model ORDER BY k.n DESC, k.example) <= {TOP_REPEATED}
        ORDER BY k.template_id, k.model, k.n DESC, k.example"""
    ).fetchall()
    out: dict[tuple, list[dict[str, Any]]] = {}
    for template_id, model, n, monthly, agreement, example, text in top:
        out.setdefault((template_id, model), []).append({
            "text": text, "calls_in_sample": n, "calls_monthly": round(monthly, 1),
            "response_agreement": None if agreement is None else round(agreement, 3),
            "example_request_id": example})
    return out


# --------------------------------------------------------------------------- detector

_TEMP = ("_exact_cache_calls", "_exact_cache_norm_calls", "_exact_cache_exact", "_exact_cache_norm")


def detect(con: duckdb.DuckDBPyConnection, settings: Settings) -> list[Finding]:
    reason = missing_inputs(con)
    if reason:
        return [not_run(KIND, reason)]
    ttl = float(settings.cache_ttl_hours)
    hours = window_hours(con)
    try:
        scan = _calls_table(con, ttl)
        _simulate(con, "_exact_cache_calls", "exact_key", "_exact_cache_exact", ttl)
        _simulate(con, "_exact_cache_norm_calls", "normalised_key", "_exact_cache_norm", ttl)
        exact = _estimate(con, "_exact_cache_exact", ttl, hours)
        normalised = _estimate(con, "_exact_cache_norm", ttl, hours)
        examples = _examples(con, "_exact_cache_exact")
        normalised_examples = _examples(con, "_exact_cache_norm")
        top = _top_repeated(con, "_exact_cache_norm", scan)
        spend_by_template = template_spend(con)
    finally:
        drop_temp(con, *_TEMP)
    findings = []
    for group in sorted(exact):
        finding = _finding(exact[group], normalised.get(group), ttl, hours)
        if finding is None:
            continue
        finding.evidence.update(
            examples=examples.get(group) or normalised_examples.get(group, []),
            top_repeated=top.get(group, []),
            template_spend_monthly_usd=round(spend_by_template.get(group[0], 0.0), 2),
        )
        findings.append(finding)
    return findings


def _variant_savings(s: dict, *, with_singles: bool) -> tuple[float, float]:
    """(savings, hit calls) per month of one variant: measured when the ledger is the whole traffic."""
    if s["whole_traffic"]:
        return s["measured_savings"], s["measured_hit_calls"]
    savings, hits = s["repeated_savings"], s["repeated_hits"]
    if with_singles:
        savings, hits = savings + s["single_savings"], hits + s["single_hits"]
    return savings, hits


def _variant_evidence(s: dict) -> dict[str, Any]:
    calls = s["calls_in_sample"]
    return {
        "calls_examined": calls,
        "subset_fraction": round(s["subset_fraction"], 6),
        "distinct_prompts": s["distinct_prompts"],
        "repeated_prompts": s["repeated_prompts"],
        "prompts_seen_once": s["n1"],
        "prompts_seen_twice": s["n2"],
        "response_agreement_rate": round(s["agreeing_pairs"] / s["pairs"], 4) if s["pairs"] else None,
        "measured_hits": s["measured_hits"],
        "measured_hit_rate": round(s["measured_hits"] / calls, 4) if calls else 0.0,
        "measured_repeats_rejected_disagreeing": s["measured_rejected"],
        "measured_savings_monthly_usd": round(s["measured_savings"], 2),
    }


def _finding(exact: dict, normalised: dict | None, ttl: float, hours: float) -> Finding | None:
    template_id, model = exact["template_id"], exact["model"]
    low, low_hits = _variant_savings(exact, with_singles=False)
    high, high_hits = low, low_hits
    basis = exact
    if normalised is not None:
        normalised_high, normalised_hits = _variant_savings(normalised, with_singles=True)
        if normalised_high > high:
            high, high_hits, basis = normalised_high, normalised_hits, normalised
    if high <= 0:
        return None
    # The calls the high estimate draws on: repeated prompts, plus prompts seen once when it credits them.
    singles = basis is normalised and not basis["whole_traffic"] and basis["single_hit_share"] > 0
    affected_rows = basis["repeated_rows"] + (basis["single_rows"] if singles else 0)
    affected_calls = basis["repeated_calls"] + (basis["single_calls"] if singles else 0)
    affected_spend = max(basis["repeated_spend"] + (basis["single_spend"] if singles else 0), high)
    calls_monthly = exact["calls_monthly"]
    evidence: dict[str, Any] = {
        "ttl_hours": ttl,
        "cache_rule": CACHE_RULE,
        "agreement_rule": AGREEMENT_RULE,
        "window_days": round(hours / 24, 3),
        "sampled_fraction": round(exact["fraction"], 8),
        "calls_in_window": exact["calls_in_sample"],
        "calls_monthly": round(calls_monthly, 1),
        "spend_monthly_usd": round(exact["spend_monthly"], 2),
        "unpriced_calls": exact["unpriced_calls"],
        "measured_on_sample": {
            "exact": _variant_evidence(exact),
            **({"normalised": _variant_evidence(normalised)} if normalised else {}),
            "note": ("hits on the ledger's own timeline; a sampled export shows only the repeats whose earlier "
                     "copy was sampled too, so on a sample this underestimates the full traffic's hit rate"),
        },
        "estimated_full_traffic": {
            "method": ("measured: the ledger is the whole traffic" if exact["whole_traffic"] else
                       "per prompt: scaled calls F = n/p, hit share 1 - exp(-F*TTL/window), times response "
                       "agreement; low = exact prompts seen at least twice; high = normalised prompts plus "
                       "prompts seen once at Robbins' mean frequency 2*n2/(n1*p), an upper bound"),
            "exact": {"hits_monthly": round(low_hits, 1),
                      "hit_rate": round(low_hits / calls_monthly, 4) if calls_monthly else 0.0,
                      "savings_monthly_usd": round(low, 2)},
            "high": {"variant": "normalised" if basis is normalised else "exact",
                     "hits_monthly": round(high_hits, 1),
                     "hit_rate": round(high_hits / calls_monthly, 4) if calls_monthly else 0.0,
                     "savings_monthly_usd": round(high, 2)},
            "prompts_seen_once_mean_calls_in_window": (
                None if normalised is None else round(normalised["single_mean_scaled"], 1)),
            "prompts_seen_once_hit_share_high": (
                None if normalised is None else round(normalised["single_hit_share"], 4)),
        },
    }
    return Finding(
        kind=KIND, template_id=template_id, model=model,
        requests_affected=round(affected_rows), requests_affected_monthly=round(affected_calls, 1),
        spend_affected_monthly_usd=round(affected_spend, 2),
        savings_low_monthly_usd=round(low, 2), savings_high_monthly_usd=round(high, 2),
        action=(f"cache this template's responses on {model} for {ttl:g} h, keyed on the prompt"
                + (" with the user's text normalised (case, punctuation, spacing)"
                   if normalised is not None and normalised["distinct_prompts"] < exact["distinct_prompts"]
                   and normalised["subset_fraction"] >= 1.0 else "")),
        evidence=evidence,
    )
