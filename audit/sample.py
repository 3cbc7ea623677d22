"""``audit sample``: a seeded sample of replayable requests, stratified by prompt template.

Reads: ``requests``, ``request_templates``, ``request_costs``, ``templates``
(all written by ``audit analyze``, which must have run). Writes:
``sample_sets`` (one row per sample set: parameters and totals), ``samples``
(the sampled requests with stratum, inclusion probability and weight) and
``sample_exclusions`` (requests that cannot be replayed, counted per template
and reason). A sample set is keyed by its parameters (``n500-s7``); drawing
it again replaces its rows, in one transaction, so reruns never duplicate.
Works in TEMP tables ``_sample_*`` (dropped at the end).

Who is in the population
------------------------
A request is *eligible* when a replay on another model can be compared to it
faithfully. Every other request is excluded with exactly one reason, the
first that applies, in this order (``EXCLUSION_REASONS``):

``no_template``     not in ``request_templates``: ingested after the last ``audit analyze``;
``failed_call``     ``status = 'error'``: nothing to compare a replay to;
``no_prompt``       ``messages`` NULL or empty (usage-only exports);
``tool_use``        the request offered tools (``requests.tools``), or a message
                    with role ``tool``/``function``, a ``tool_calls``,
                    ``function_call`` or ``tool_call_id`` key, or a content part
                    of a tool type (``tool_use``, ``tool_result``, ``function_call``...):
                    the replay cannot run the tools;
``image_or_audio``  a content part of type ``image_url``/``input_image``/``image``/
                    ``input_audio``/``audio``, or an ``audio`` key on a message;
``other_content``   any other non-text content part (files, documents, thinking
                    blocks): text parts are ``text``/``input_text``/``output_text``;
``no_response``     ``response_text`` NULL or blank (e.g. the reply was a tool call).

So, per template, eligible + excluded = the template's ledger rows, and the
totals add up to the whole ledger. Parsing every conversation is the cost of
this stage, so the JSON is parsed only for conversations whose text contains
``"tool``, ``"function``, ``"type"`` or ``"audio"`` (a key or value in
quotes: every tool/content-part/audio marker above contains one); the others
are plain ``{role, content: string}`` lists and skip the parse. The
assumption: exports write JSON keys as plain ASCII (never ``\\u``-escaped).

How the sample is drawn
-----------------------
1. **Strata** are templates. Each template's *measure* is the spend of its
   eligible requests (list price from ``request_costs``, scaled by
   ``1 / sampled_fraction``, whole ledger): the evidence goes where the money
   is. If no eligible request is priced, the measure is the eligible count.
2. **Allocation.** Every template with eligible requests gets at least
   ``min(min_per_template, eligible)`` so small templates are not invisible;
   the rest of ``n`` is shared in proportion to the measure, capped at the
   template's eligible count (found by bisection on the proportionality
   factor, then rounded by largest remainder so the total is exactly ``n``).
   If the minimums alone exceed ``n``, each template gets its minimum and the
   plan says the sample is larger than asked. If ``n`` reaches the whole
   eligible population, everything is sampled and the plan says so.
3. **Inside a stratum, equal probability** (simple random sampling without
   replacement): requests are ordered by ``md5(seed || ':' || request_id)``
   (ties by id) and the first ``n_t`` are taken. The same seed gives the same
   sample on any machine and DuckDB version (never ``random()``), and a
   larger ``n_t`` with the same seed takes a superset of the stratum's rows
   (``draw_rank`` is the position: any prefix is again an equal-probability
   sample, so a replay may stop early and stay unbiased).
   Equal rather than spend-proportional probability: replay verdicts are per
   request (pass rate, output length) and must project to request counts as
   well as to dollars, with weights that are exact; the spend skew between
   templates is what the allocation handles, and within a template costs vary
   less (on sample_logs the coefficient of variation of a call's cost is
   0.04–0.5 within a template, 1.3 for the triage classifier, against 1.0
   over the ledger).

Weights and projection
----------------------
``inclusion_probability = n_t / N_t`` (``N_t`` eligible ledger rows of the
stratum) and ``weight = N_t / n_t``: **weights are in ledger rows**, so a
stratum's weights sum to exactly ``N_t``. A ledger row of an export sampled at
``requests.sampled_fraction`` stands for ``1 / sampled_fraction`` real calls,
so the weight in real calls is ``traffic_weight = weight / sampled_fraction``
(stored). For any per-request quantity ``x`` (cost, savings of a candidate,
pass = 1/0), ``Σ_sample x × traffic_weight`` is an unbiased (Horvitz–Thompson)
estimate of its full-traffic total over the eligible requests: with
``x = request_costs.cost_usd`` it estimates the template's eligible spend on
the ledger's whole period (``templates.spend_usd`` minus the excluded rows'
spend). For a *monthly* figure, apply the weighted ratio (e.g. the share of
spend whose replay passed) to ``templates.spend_monthly_usd``: the sample is
drawn over the whole ledger, not only the analysis window.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import duckdb

from audit.db import fetch_dicts, sql_string, transaction
from audit.errors import AuditError, ConfigError

DEFAULT_N = 500
DEFAULT_SEED = 7
DEFAULT_MIN_PER_TEMPLATE = 5

# Reason key → what it means, in the order they are tested (the first wins).
EXCLUSION_REASONS: dict[str, str] = {
    "no_template": "not in a template: ingested after the last `audit analyze`",
    "failed_call": "the call failed: no response to compare a replay to",
    "no_prompt": "no prompt text logged (usage-only record)",
    "tool_use": "tool or function calls in the conversation: a replay cannot run the tools",
    "image_or_audio": "image or audio input",
    "other_content": "file, document or other non-text content",
    "no_response": "no response text to compare a replay to",
}

METHOD = ("strata = templates; allocation proportional to eligible spend with a per-template minimum; "
          "equal probability within a stratum, ordered by md5(seed:request_id)")

# Content-part types that are plain text (OpenAI chat, Responses API, Anthropic).
_TEXT_PARTS = ["text", "input_text", "output_text"]
_TOOL_PARTS = ["tool_use", "tool_result", "server_tool_use", "web_search_tool_result", "function_call",
               "function_call_output", "tool_call", "tool_calls", "function"]
_MEDIA_PARTS = ["image_url", "input_image", "image", "input_audio", "audio", "output_audio"]
_TOOL_ROLES = ["tool", "function"]
_TOOL_KEYS = ["tool_calls", "function_call", "tool_call_id"]


def _sql_list(values: list[str]) -> str:
    return "[" + ", ".join(sql_string(v) for v in values) + "]"


def sample_set_id(n: int, seed: int, min_per_template: int = DEFAULT_MIN_PER_TEMPLATE) -> str:
    """The key of a sample set: its parameters, readable (``n500-s7``)."""
    suffix = "" if min_per_template == DEFAULT_MIN_PER_TEMPLATE else f"-m{min_per_template}"
    return f"n{n}-s{seed}{suffix}"


# --------------------------------------------------------------------------- allocation


@dataclass
class Stratum:
    template_id: str
    eligible: int        # N_t: eligible ledger rows
    measure: float       # what the allocation is proportional to (eligible spend)


def allocate(strata: list[Stratum], n: int, min_per_template: int) -> dict[str, int]:
    """Sample size per stratum: ``min(min_per_template, N_t)`` each, the rest of ``n`` ∝ measure, capped at ``N_t``.

    Returns exactly ``n`` in total unless the minimums exceed ``n`` (then each
    stratum gets its minimum) or ``n`` exceeds the population (then all of it).
    """
    strata = [s for s in strata if s.eligible > 0]
    floors = {s.template_id: min(min_per_template, s.eligible) for s in strata}
    caps = {s.template_id: s.eligible for s in strata}
    if n >= sum(caps.values()):
        return caps
    if sum(floors.values()) >= n:
        return floors
    measure = {s.template_id: max(s.measure, 0.0) for s in strata}
    if not any(measure.values()):
        measure = {t: float(c) for t, c in caps.items()}
    # Strata with no measure only ever get their floor, unless the positive
    # ones cannot absorb n: then those take everything and the rest of n goes
    # to the zero-measure strata in proportion to their size.
    positive = {t for t, m in measure.items() if m > 0}
    most_from_positive = sum(caps[t] for t in positive) + sum(floors[t] for t in caps if t not in positive)
    if n >= most_from_positive:
        rest = [Stratum(t, caps[t], float(caps[t])) for t in caps if t not in positive]
        share = allocate(rest, n - sum(caps[t] for t in positive), min_per_template)
        return {**{t: caps[t] for t in positive}, **share}

    def sizes(factor: float) -> dict[str, float]:
        return {t: min(max(factor * measure[t], floors[t]), caps[t]) for t in caps}

    low, high = 0.0, max(caps[t] / measure[t] for t in positive)
    for _ in range(200):  # sum(sizes) is monotone in the factor: bisect to float precision
        middle = (low + high) / 2
        if sum(sizes(middle).values()) < n:
            low = middle
        else:
            high = middle
    exact = sizes(high)
    counts = {t: int(x) for t, x in exact.items()}
    # Largest remainder: hand out the units rounding left, biggest fraction
    # first (ties by id, for determinism), never above a cap.
    order = sorted(caps, key=lambda t: (-(exact[t] - counts[t]), t))
    missing = n - sum(counts.values())
    while missing > 0:
        progressed = False
        for t in order:
            if missing and counts[t] < caps[t]:
                counts[t] += 1
                missing -= 1
                progressed = True
        if not progressed:
            break
    return counts


# --------------------------------------------------------------------------- the draw


def _pool_sql(seed: int) -> str:
    """Every ledger row with its template, scaled cost, exclusion reason, and (eligible rows) its seeded rank."""
    text = "messages::VARCHAR"
    # The first two steps read only ``requests`` and keep small columns: the
    # conversations never travel through the joins.
    return f"""
    CREATE OR REPLACE TEMP TABLE _sample_pool AS
    WITH scanned AS (
        SELECT request_id, sampled_fraction, messages, status <> 'ok' AS failed, tools IS NOT NULL AS offers_tools,
               -- CASE, not AND: under an AND, DuckDB ran json_array_length on every row (4× slower).
               CASE WHEN messages IS NULL THEN true
                    WHEN strlen({text}) < 16 THEN json_array_length(messages) = 0 ELSE false END AS no_prompt,
               -- A regex that stops at the first non-blank character, rather than trim()'s copy of every reply.
               response_text IS NULL OR NOT regexp_matches(response_text, '\\S') AS no_response,
               -- Only conversations that can hold a marker are parsed (see the module docstring).
               messages IS NOT NULL AND (contains({text}, '"tool') OR contains({text}, '"function')
                                         OR contains({text}, '"type"') OR contains({text}, '"audio"')) AS needs_parse
        FROM requests),
    content AS (
        SELECT request_id, sampled_fraction, failed, offers_tools, no_prompt, no_response,
               CASE WHEN needs_parse THEN json_extract_string(messages, '$[*].role') END AS roles,
               CASE WHEN needs_parse THEN flatten(json_keys(messages, '$[*]')) END AS message_keys,
               CASE WHEN needs_parse THEN json_extract_string(messages, '$[*].content[*].type') END AS part_types
        FROM scanned),
    classified AS (
        SELECT request_id, t.template_id, sampled_fraction,
               coalesce(c.cost_usd, 0) / sampled_fraction AS spend_usd,
               CASE
                   WHEN t.template_id IS NULL THEN 'no_template'
                   WHEN failed THEN 'failed_call'
                   WHEN no_prompt THEN 'no_prompt'
                   WHEN offers_tools OR list_has_any(roles, {_sql_list(_TOOL_ROLES)})
                        OR list_has_any(message_keys, {_sql_list(_TOOL_KEYS)})
                        OR list_has_any(part_types, {_sql_list(_TOOL_PARTS)}) THEN 'tool_use'
                   WHEN list_has_any(part_types, {_sql_list(_MEDIA_PARTS)})
                        OR list_contains(message_keys, 'audio') THEN 'image_or_audio'
                   WHEN len(list_filter(part_types, lambda p: p IS NULL OR NOT list_contains({_sql_list(_TEXT_PARTS)}, p))) > 0
                       THEN 'other_content'
                   WHEN no_response THEN 'no_response'
               END AS reason
        FROM content LEFT JOIN request_templates t USING (request_id) LEFT JOIN request_costs c USING (request_id))
    SELECT *,
           CASE WHEN reason IS NULL THEN
               row_number() OVER (PARTITION BY template_id, reason IS NULL
                                  ORDER BY md5({int(seed)}::VARCHAR || ':' || request_id), request_id)
           END AS draw_rank
    FROM classified"""


def draw_sample(
    con: duckdb.DuckDBPyConnection,
    *,
    n: int = DEFAULT_N,
    seed: int = DEFAULT_SEED,
    min_per_template: int = DEFAULT_MIN_PER_TEMPLATE,
) -> dict[str, Any]:
    """Draw (or redraw) the sample set for ``(n, seed, min_per_template)``; return its plan."""
    if n < 1:
        raise ConfigError(f"--n must be at least 1, not {n}", "pass the number of requests to sample, e.g. --n 500")
    if min_per_template < 0:
        raise ConfigError(f"--min-per-template must be 0 or more, not {min_per_template}", "pass e.g. 5")
    if not con.execute("SELECT EXISTS (SELECT 1 FROM templates)").fetchall()[0][0]:
        raise AuditError("no templates: run `audit analyze` first",
                         "the sample is stratified by the prompt templates analyze mines")
    set_id = sample_set_id(n, seed, min_per_template)
    con.execute(_pool_sql(seed))
    try:
        strata = [Stratum(t, eligible, spend or 0.0) for t, eligible, spend in con.execute(
            """SELECT template_id, count(*), sum(spend_usd) FROM _sample_pool
               WHERE reason IS NULL GROUP BY template_id ORDER BY template_id""").fetchall()]
        sizes = allocate(strata, n, min_per_template)
        con.execute("CREATE OR REPLACE TEMP TABLE _sample_alloc (template_id VARCHAR, eligible BIGINT, sampled BIGINT)")
        con.executemany("INSERT INTO _sample_alloc VALUES (?, ?, ?)",
                        [(s.template_id, s.eligible, sizes[s.template_id]) for s in strata if sizes.get(s.template_id)])
        _write(con, set_id, n=n, seed=seed, min_per_template=min_per_template)
        return sample_plan(con, set_id)
    finally:
        con.execute("DROP TABLE IF EXISTS _sample_pool; DROP TABLE IF EXISTS _sample_alloc")


def _write(con: duckdb.DuckDBPyConnection, set_id: str, *, n: int, seed: int, min_per_template: int) -> None:
    """Replace the sample set's rows in ``samples``, ``sample_exclusions`` and ``sample_sets``, in one transaction."""
    with transaction(con):
        for table in ("samples", "sample_exclusions", "sample_sets"):
            con.execute(f"DELETE FROM {table} WHERE sample_set_id = ?", [set_id])
        con.execute(
            """INSERT INTO samples
               SELECT ?, p.request_id, p.template_id, p.template_id, p.draw_rank,
                      a.sampled / a.eligible, a.eligible / a.sampled, a.eligible / a.sampled / p.sampled_fraction,
                      now()::TIMESTAMP
               FROM _sample_pool p JOIN _sample_alloc a USING (template_id)
               WHERE p.reason IS NULL AND p.draw_rank <= a.sampled""",
            [set_id],
        )
        con.execute(
            """INSERT INTO sample_exclusions
               SELECT ?, template_id, reason, count(*), sum(spend_usd) FROM _sample_pool
               WHERE reason IS NOT NULL GROUP BY ALL""",
            [set_id],
        )
        con.execute(
            """INSERT INTO sample_sets
               SELECT ?, ?, ?, ?, ?, count(*) FILTER (WHERE template_id IS NOT NULL),
                      count(*) FILTER (WHERE reason IS NULL), count(*) FILTER (WHERE reason IS NOT NULL),
                      (SELECT count(*) FROM samples WHERE sample_set_id = ?),
                      (SELECT count(*) FROM samples WHERE sample_set_id = ?) = count(*) FILTER (WHERE reason IS NULL),
                      now()::TIMESTAMP
               FROM _sample_pool""",
            [set_id, n, seed, min_per_template, METHOD, set_id, set_id],
        )


# --------------------------------------------------------------------------- the plan


def sample_plan(con: duckdb.DuckDBPyConnection, set_id: str) -> dict[str, Any]:
    """The plan of a drawn sample set, read back from the tables (the CLI prints it, the report shows it).

    Per template: its ledger rows, the eligible population, exclusions by
    reason, rows sampled, and spend (scaled to full traffic, whole ledger):
    the template's, the eligible part's, the sampled rows' own
    (``sampled_spend_usd``) and the weighted estimate (``weighted_spend_usd``,
    Σ cost × traffic_weight) with its standard error (``weighted_spend_se_usd``,
    simple random sampling within the stratum, finite-population corrected;
    rough for a stratum of 5). ``spend_covered_share`` = weighted estimate /
    template spend: what the sample speaks for, 100% in expectation less the
    excluded share; ``sampled_spend_share`` = the sampled rows' own spend /
    template spend.
    """
    sets = fetch_dicts(con, "SELECT * FROM sample_sets WHERE sample_set_id = ?", [set_id])
    if not sets:
        raise AuditError(f"no sample set {set_id}", "draw it with `audit sample`")
    meta = sets[0]
    templates = fetch_dicts(
        con,
        """WITH tpl AS (
               SELECT rt.template_id, count(*) AS requests, sum(coalesce(c.cost_usd, 0) / r.sampled_fraction) AS spend_usd,
                      count(*) FILTER (WHERE c.cost_usd IS NULL) AS unpriced_requests
               FROM request_templates rt JOIN requests r USING (request_id) LEFT JOIN request_costs c USING (request_id)
               GROUP BY rt.template_id),
           excl AS (
               SELECT template_id, sum(requests) AS excluded, sum(spend_usd) AS excluded_spend_usd
               FROM sample_exclusions WHERE sample_set_id = ? GROUP BY template_id),
           smp AS (
               SELECT s.template_id, count(*) AS sampled, sum(s.weight) AS population,
                      any_value(s.inclusion_probability) AS inclusion_probability,
                      sum(coalesce(c.cost_usd, 0) / r.sampled_fraction) AS sampled_spend_usd,
                      sum(coalesce(c.cost_usd, 0) * s.traffic_weight) AS weighted_spend_usd,
                      -- Variance of the stratum total under simple random sampling:
                      -- N² (1 - n/N) s² / n, s² the sample variance of the scaled cost.
                      sqrt(greatest(sum(s.weight) ^ 2 * (1 - count(*) / sum(s.weight))
                                    * coalesce(var_samp(coalesce(c.cost_usd, 0) / r.sampled_fraction), 0) / count(*), 0))
                          AS weighted_spend_se_usd
               FROM samples s JOIN requests r USING (request_id) LEFT JOIN request_costs c USING (request_id)
               WHERE s.sample_set_id = ? GROUP BY s.template_id)
           SELECT t.template_id, t.name, tpl.requests, tpl.unpriced_requests,
                  tpl.requests - coalesce(excl.excluded, 0) AS population,
                  coalesce(excl.excluded, 0) AS excluded,
                  coalesce(smp.sampled, 0) AS sampled, coalesce(smp.inclusion_probability, 0) AS inclusion_probability,
                  coalesce(tpl.spend_usd, 0) AS spend_usd,
                  coalesce(tpl.spend_usd, 0) - coalesce(excl.excluded_spend_usd, 0) AS eligible_spend_usd,
                  coalesce(smp.sampled_spend_usd, 0) AS sampled_spend_usd,
                  coalesce(smp.weighted_spend_usd, 0) AS weighted_spend_usd,
                  coalesce(smp.weighted_spend_se_usd, 0) AS weighted_spend_se_usd,
                  smp.weighted_spend_usd / nullif(tpl.spend_usd, 0) AS spend_covered_share,
                  smp.sampled_spend_usd / nullif(tpl.spend_usd, 0) AS sampled_spend_share
           FROM templates t JOIN tpl USING (template_id) LEFT JOIN excl USING (template_id)
           LEFT JOIN smp USING (template_id)
           ORDER BY spend_usd DESC, t.template_id""",
        [set_id, set_id],
    )
    by_template: dict[str | None, dict[str, int]] = {}
    for template_id, reason, requests in con.execute(
            "SELECT template_id, reason, requests FROM sample_exclusions WHERE sample_set_id = ?", [set_id]).fetchall():
        by_template.setdefault(template_id, {})[reason] = requests
    for t in templates:
        t["excluded_by_reason"] = _in_reason_order(by_template.get(t["template_id"], {}))
    unassigned = _in_reason_order(by_template.get(None, {}))
    excluded_by_reason: dict[str, int] = {}
    for t in templates:
        for reason, count in t["excluded_by_reason"].items():
            excluded_by_reason[reason] = excluded_by_reason.get(reason, 0) + count
    for reason, count in unassigned.items():
        excluded_by_reason[reason] = excluded_by_reason.get(reason, 0) + count
    spend = sum(t["spend_usd"] for t in templates)
    weighted = sum(t["weighted_spend_usd"] for t in templates)
    sampled_spend = sum(t["sampled_spend_usd"] for t in templates)
    totals = {
        "requests": meta["template_requests"] + sum(unassigned.values()),
        "population": meta["eligible_requests"],
        "excluded": meta["excluded_requests"],
        "excluded_by_reason": _in_reason_order(excluded_by_reason),
        "sampled": meta["sampled_requests"],
        "templates": len(templates),
        "templates_sampled": sum(1 for t in templates if t["sampled"]),
        "spend_usd": spend,
        "eligible_spend_usd": sum(t["eligible_spend_usd"] for t in templates),
        "sampled_spend_usd": sampled_spend,
        "weighted_spend_usd": weighted,
        # Strata are drawn independently: their variances add.
        "weighted_spend_se_usd": sum(t["weighted_spend_se_usd"] ** 2 for t in templates) ** 0.5,
        "spend_covered_share": weighted / spend if spend else None,
        "sampled_spend_share": sampled_spend / spend if spend else None,
    }
    return {
        "sample_set_id": set_id,
        "n_requested": meta["n_requested"],
        "seed": meta["seed"],
        "min_per_template": meta["min_per_template"],
        "method": meta["method"],
        "drawn_at": meta["drawn_at"],
        "sampled_everything": meta["sampled_everything"],
        "notes": _notes(meta, totals, unassigned),
        "exclusion_reasons": EXCLUSION_REASONS,
        "templates": templates,
        "excluded_without_template": unassigned,
        "totals": totals,
    }


def _in_reason_order(counts: dict[str, int]) -> dict[str, int]:
    return {reason: counts[reason] for reason in EXCLUSION_REASONS if counts.get(reason)}


def _notes(meta: dict[str, Any], totals: dict[str, Any], unassigned: dict[str, int]) -> list[str]:
    notes = []
    if meta["sampled_everything"] and meta["eligible_requests"]:
        notes.append(f"n = {meta['n_requested']:,} covers the whole eligible population: "
                     f"all {meta['eligible_requests']:,} eligible requests are sampled (every weight is 1)")
    elif meta["sampled_requests"] > meta["n_requested"]:
        notes.append(f"the per-template minimum ({meta['min_per_template']}) over {totals['templates_sampled']} "
                     f"templates exceeds n = {meta['n_requested']:,}: {meta['sampled_requests']:,} requests sampled")
    if meta["eligible_requests"] == 0:
        notes.append("no request can be replayed: every request is excluded (see the reasons)")
    if unassigned:
        notes.append(f"{sum(unassigned.values()):,} requests have no template (ingested after the last analyze): "
                     "run `audit analyze` again to include them")
    return notes


__all__ = ["DEFAULT_MIN_PER_TEMPLATE", "DEFAULT_N", "DEFAULT_SEED", "EXCLUSION_REASONS", "Stratum", "allocate",
           "draw_sample", "sample_plan", "sample_set_id"]


def resolve_sample_set(con: duckdb.DuckDBPyConnection, sample_set_id: str | None) -> str:
    """The sample set named, else the latest drawn; a one-line error when there is none."""
    if sample_set_id is not None:
        if not con.execute("SELECT 1 FROM sample_sets WHERE sample_set_id = ?", [sample_set_id]).fetchall():
            known = [r[0] for r in con.execute(
                "SELECT sample_set_id FROM sample_sets ORDER BY drawn_at DESC, sample_set_id").fetchall()]
            raise ConfigError(f"no sample set {sample_set_id!r}",
                              f"sample sets here: {', '.join(known)}" if known else "draw one with `audit sample`")
        return sample_set_id
    row = con.execute("SELECT sample_set_id FROM sample_sets ORDER BY drawn_at DESC, sample_set_id LIMIT 1").fetchall()
    if not row:
        raise AuditError("no sample has been drawn: run `audit sample` first",
                         "it picks the requests to replay and judge (after `audit analyze`)")
    return row[0][0]
