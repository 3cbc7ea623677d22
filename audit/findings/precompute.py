"""Precompute: a template run again and again over a small, fixed set of entities.

Reads: ``requests``, ``request_costs``, ``request_templates``,
``analysis_window``. Writes: nothing (returns ``Finding`` rows of kind
``precompute``). Creates and drops TEMP tables ``_precompute_*``; may reuse
the prompt hashes of ``audit.findings.cache.prompt_scan`` kept on the connection.

The pattern: 200 products × thousands of catalog-card summaries a day. When
the variable part of a template (its entity) takes few distinct values
compared with the calls, and the answer for one entity is (mostly) the same
every time, the answers can be generated once per entity per content change
and served from a table.

Method, per template × model, over the analysis window:

- The *entity* of a call is the template's masked variable values
  (``request_templates.slots``): short values (up to ``SHORT_SLOT_CHARS``
  characters: typed questions, ids) compared normalised (case, punctuation,
  spacing), long ones (a product description) by an exact hash. A change of
  content is a new entity. Calls whose template has no slots fall back to the
  hash of the whole prompt (the skeleton is fixed, so this is the hash of the
  variable text).
- Distinct entities in the full traffic: in the whole traffic (``p = 1``) the
  distinct count itself; in a sample, Chao1's estimate ``d + f1²/(2·f2)``
  (``d`` distinct entities in the sample, ``f1``/``f2`` seen once/twice; with
  ``f2 = 0``, ``d + f1·(f1−1)/2``). Chao1 is a lower bound of richness for
  very uneven popularity; the gates below need evidence of repetition, so a
  template of unique texts is never taken for a small set.
- Gates (all must hold): at least ``MIN_REPEATED_ENTITIES`` entities seen
  twice or more in the ledger; the estimated distinct entities at most
  ``MAX_ENTITY_SHARE`` (5 %) of the scaled calls per month (each entity is
  asked 20+ times a month); and the answers for one entity mostly agree:
  ``Σ(m_e − 1) / Σ(n_e − 1) ≥ MIN_AGREEMENT`` over entities with ``n_e ≥ 2``
  calls, where ``m_e`` is the count of the entity's most common normalised
  answer (one call per entity is the reference, so a lone call cannot agree
  with itself).
- Cost now: the template × model's monthly spend. Cost with a precomputed
  table: every entity regenerated once per refresh period at the mean cost of
  a call. Low: the calls whose answer matches the entity's usual answer are
  served (``spend × agreement``), daily regeneration (``REFRESH_HOURS_LOW``).
  High: all calls served (the disagreements are sampling noise at
  temperature > 0), weekly regeneration (``REFRESH_HOURS_HIGH``).
  ``settings.precompute_refresh_hours``, when the Settings has it, replaces
  both periods.

Assumptions: the entity fully determines the answer's content (checked by
the agreement gate); content changes show up as new slot values; entities not
yet seen are generated on first use, at the same cost as one call.
"""

from __future__ import annotations

from typing import Any

import duckdb

from audit.findings import IN_WINDOW, MONTHLY, Finding, Settings, not_run
from audit.findings.cache import (
    drop_temp,
    missing_inputs,
    normalised_text_sql,
    prompt_scan,
    template_spend,
)

KIND = "precompute"

MAX_ENTITY_SHARE = 0.05        # distinct entities per month / scaled calls per month, at most
MIN_REPEATED_ENTITIES = 3      # entities seen at least twice in the ledger, at least
MIN_AGREEMENT = 0.6            # share of an entity's repeat calls that give its usual answer, at least
REFRESH_HOURS_LOW = 24.0       # low estimate: every entity regenerated daily
REFRESH_HOURS_HIGH = 168.0     # high estimate: weekly
SHORT_SLOT_CHARS = 256         # slot values up to this long are compared normalised
TOP_ENTITIES = 5
SLOT_PREVIEW = 120


def _calls_table(con: duckdb.DuckDBPyConnection) -> None:
    """Window calls of templated requests with their entity key (slots, else the prompt hash)."""
    keys = prompt_scan(con, 0.0)
    slot_text = "t.slots::VARCHAR"
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _precompute_calls AS
        WITH raw AS (
            SELECT r.rowid AS ledger_row, r.request_id, t.template_id, coalesce(r.model, '(unknown)') AS model,
                   r.started_at, r.sampled_fraction,
                   coalesce(c.cost_usd, 0) * {MONTHLY} AS spend_monthly, {MONTHLY} AS calls_monthly,
                   CASE WHEN t.slots IS NULL OR {slot_text} IN ('[]', '{{}}', 'null', '""') THEN NULL
                        ELSE hash({slot_text}) END AS slot_hash,
                   CASE WHEN t.slots IS NULL THEN NULL ELSE {slot_text} END AS slot_text
            FROM requests r JOIN request_templates t USING (request_id)
            LEFT JOIN request_costs c USING (request_id), analysis_window w
            WHERE {IN_WINDOW}),
        slot_values AS (  -- normalised once per distinct value, not per call
            SELECT slot_hash, CASE WHEN strlen(any_value(slot_text)) <= {SHORT_SLOT_CHARS}
                                   THEN hash({normalised_text_sql('any_value(slot_text)')}) ELSE slot_hash END AS slot_entity
            FROM raw WHERE slot_hash IS NOT NULL GROUP BY slot_hash),
        calls AS (
            SELECT r.* EXCLUDE (slot_hash, slot_text), v.slot_entity
            FROM raw r LEFT JOIN slot_values v USING (slot_hash)),
        templates_with_slots AS (
            SELECT template_id FROM calls GROUP BY template_id HAVING count(slot_entity) > 0)
        SELECT c.* EXCLUDE (slot_entity),
               k.response_key IS NOT NULL AS answered,
               -- a template with slots keeps its slot-less calls apart (no entity) rather than mixing in
               -- prompt hashes; a template without any uses the prompt hash
               CASE WHEN c.slot_entity IS NOT NULL THEN c.slot_entity
                    WHEN s.template_id IS NULL THEN k.exact_key END AS entity,
               c.slot_entity IS NOT NULL AS from_slots, k.response_key, k.response_normalised
        FROM calls c
        LEFT JOIN (SELECT request_id, exact_key, response_key, response_normalised FROM {keys}) k USING (request_id)
        LEFT JOIN templates_with_slots s USING (template_id)"""
    )


_GROUP_COLUMNS = ["template_id", "model", "calls", "answered_calls", "distinct_entities", "f1", "f2",
                  "repeated_entities", "min_fraction", "calls_monthly", "spend_monthly", "answered_calls_monthly",
                  "answered_spend_monthly", "calls_from_slots"]


def _group_stats(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    rows = con.execute(
        """WITH entities AS (
            SELECT template_id, model, entity, count(*) AS n FROM _precompute_calls
            WHERE answered AND entity IS NOT NULL GROUP BY ALL),
        entity_counts AS (
            SELECT template_id, model, count(*) AS distinct_entities,
                   count(*) FILTER (WHERE n = 1) AS f1, count(*) FILTER (WHERE n = 2) AS f2,
                   count(*) FILTER (WHERE n >= 2) AS repeated_entities
            FROM entities GROUP BY ALL)
        SELECT c.template_id, c.model, count(*) AS calls, count(*) FILTER (WHERE answered) AS answered_calls,
               any_value(e.distinct_entities), any_value(e.f1), any_value(e.f2), any_value(e.repeated_entities),
               min(c.sampled_fraction), sum(c.calls_monthly), sum(c.spend_monthly),
               sum(c.calls_monthly) FILTER (WHERE answered), sum(c.spend_monthly) FILTER (WHERE answered),
               count(*) FILTER (WHERE from_slots AND answered)
        FROM _precompute_calls c JOIN entity_counts e USING (template_id, model)
        GROUP BY c.template_id, c.model ORDER BY c.template_id, c.model"""
    ).fetchall()
    return [{k: (0 if v is None else v) for k, v in zip(_GROUP_COLUMNS, row)} for row in rows]


def estimated_distinct(distinct: int, f1: int, f2: int, whole_traffic: bool) -> float:
    """Distinct entities of the full traffic: exact on the whole traffic, Chao1 on a sample."""
    if whole_traffic:
        return float(distinct)
    if f2 > 0:
        return distinct + f1 * f1 / (2.0 * f2)
    return distinct + f1 * (f1 - 1) / 2.0


def _agreement(con: duckdb.DuckDBPyConnection, groups: list[tuple[str, str]]) -> dict[tuple, tuple[float, int]]:
    """Per group: Σ(m_e − 1)/Σ(n_e − 1) over entities with 2+ answered calls, and that denominator.

    Measured on ``prompt_scan``'s uniform subset (at most ``SUBSET_ROWS`` calls
    per template × model), whose normalised answers are already hashed.
    """
    if not groups:
        return {}
    con.execute("CREATE OR REPLACE TEMP TABLE _precompute_groups (template_id VARCHAR, model VARCHAR)")
    con.executemany("INSERT INTO _precompute_groups VALUES (?, ?)", groups)
    rows = con.execute(
        """WITH answers AS (
            SELECT c.template_id, c.model, c.entity, c.response_normalised, count(*) AS k
            FROM _precompute_calls c JOIN _precompute_groups USING (template_id, model)
            WHERE c.entity IS NOT NULL AND c.response_normalised IS NOT NULL GROUP BY ALL),
        per_entity AS (
            SELECT template_id, model, entity, sum(k) AS n, max(k) AS m FROM answers GROUP BY ALL HAVING sum(k) >= 2)
        SELECT template_id, model, sum(m - 1) / sum(n - 1), sum(n - 1) FROM per_entity GROUP BY ALL"""
    ).fetchall()
    return {(t, m): (float(share), int(pairs)) for t, m, share, pairs in rows}


def _top_entities(con: duckdb.DuckDBPyConnection, template_id: str, model: str) -> list[dict]:
    """The most asked entities, with a preview of their slot values."""
    top = con.execute(
        f"""SELECT count(*) AS n, sum(calls_monthly) / 30.0 AS per_day, arg_min(request_id, (started_at, request_id)),
                   arg_min(ledger_row, (started_at, request_id))
            FROM _precompute_calls WHERE template_id = ? AND model = ? AND answered AND entity IS NOT NULL
            GROUP BY entity ORDER BY n DESC, 3 LIMIT {TOP_ENTITIES}""", [template_id, model]).fetchall()
    previews = dict(con.execute(
        f"""SELECT request_id, left(slots::VARCHAR, {SLOT_PREVIEW}) FROM request_templates
            WHERE request_id IN (SELECT unnest(?::VARCHAR[]))""", [[t[2] for t in top]]).fetchall())
    return [{"slots": previews.get(example), "calls_in_sample": n, "calls_per_day": round(per_day, 1),
             "example_request_id": example} for n, per_day, example, _row in top]


def detect(con: duckdb.DuckDBPyConnection, settings: Settings) -> list[Finding]:
    reason = missing_inputs(con)
    if reason:
        return [not_run(KIND, reason)]
    refresh = settings.precompute_refresh_hours
    refresh_low, refresh_high = (refresh, refresh) if refresh else (REFRESH_HOURS_LOW, REFRESH_HOURS_HIGH)
    days = float(con.execute("SELECT days FROM analysis_window").fetchall()[0][0])
    try:
        _calls_table(con)
        stats = _group_stats(con)
        candidates = []
        for s in stats:
            s["whole_traffic"] = s["min_fraction"] >= 1.0
            s["estimated_entities"] = estimated_distinct(s["distinct_entities"], s["f1"], s["f2"], s["whole_traffic"])
            s["entity_share"] = (s["estimated_entities"] / s["calls_monthly"]) if s["calls_monthly"] else 1.0
            if (s["repeated_entities"] >= MIN_REPEATED_ENTITIES and s["entity_share"] <= MAX_ENTITY_SHARE
                    and s["spend_monthly"] > 0):
                candidates.append(s)
        agreement = _agreement(con, [(s["template_id"], s["model"]) for s in candidates])
        spend_by_template = template_spend(con)
        findings = []
        for s in candidates:
            share, pairs = agreement.get((s["template_id"], s["model"]), (0.0, 0))
            if pairs == 0 or share < MIN_AGREEMENT:
                continue
            finding = _finding(s, share, pairs, refresh_low, refresh_high, days)
            if finding is None:
                continue
            finding.evidence["top_entities"] = _top_entities(con, s["template_id"], s["model"])
            finding.evidence["template_spend_monthly_usd"] = round(spend_by_template.get(s["template_id"], 0.0), 2)
            findings.append(finding)
        return findings
    finally:
        drop_temp(con, "_precompute_calls", "_precompute_groups")


def _finding(s: dict, agreement: float, pairs: int, refresh_low: float, refresh_high: float,
             days: float) -> Finding | None:
    entities = s["estimated_entities"]
    cost_per_call = s["answered_spend_monthly"] / s["answered_calls_monthly"] if s["answered_calls_monthly"] else 0.0
    regenerations_low = entities * 30.0 * 24.0 / refresh_low
    regenerations_high = entities * 30.0 * 24.0 / refresh_high
    cost_low, cost_high = regenerations_low * cost_per_call, regenerations_high * cost_per_call
    spend = s["spend_monthly"]
    low = max(0.0, spend * agreement - cost_low)
    high = max(0.0, spend - cost_high, low)
    if high <= 0:
        return None
    calls_per_day = s["calls_monthly"] / 30.0
    evidence = {
        "entity_source": ("slots" if s["calls_from_slots"] == s["answered_calls"] else
                          "prompt hash" if s["calls_from_slots"] == 0 else "slots (some calls without)"),
        "calls_in_window": s["calls"],
        "window_days": round(days, 3),
        "sampled_fraction_min": s["min_fraction"],
        "distinct_entities_in_sample": s["distinct_entities"],
        "entities_seen_once": s["f1"],
        "entities_seen_twice": s["f2"],
        "entities_seen_twice_or_more": s["repeated_entities"],
        "distinct_entities_estimated": round(entities, 1),
        "distinct_entities_method": "counted (whole traffic)" if s["whole_traffic"] else "Chao1 d + f1^2/(2 f2)",
        "entity_share_of_monthly_calls": round(s["entity_share"], 6),
        "max_entity_share": MAX_ENTITY_SHARE,
        "calls_monthly": round(s["calls_monthly"], 1),
        "calls_per_entity_per_day": round(calls_per_day / entities, 1) if entities else None,
        "coverage_good_turing": round(1.0 - s["f1"] / s["answered_calls"], 4) if s["answered_calls"] else None,
        "agreement_rate": round(agreement, 4),
        "agreement_rule": "share of an entity's repeat calls whose normalised answer is the entity's most common one",
        "agreement_calls_compared": pairs,
        "refresh_hours_low": refresh_low,
        "refresh_hours_high": refresh_high,
        "mean_cost_per_call_usd": round(cost_per_call, 6),
        "regeneration_cost_monthly_usd_low": round(cost_low, 2),
        "regeneration_cost_monthly_usd_high": round(cost_high, 2),
        "spend_monthly_usd": round(spend, 2),
    }
    return Finding(
        kind=KIND, template_id=s["template_id"], model=s["model"],
        requests_affected=int(s["calls"]), requests_affected_monthly=round(s["calls_monthly"], 1),
        spend_affected_monthly_usd=round(spend, 2),
        savings_low_monthly_usd=round(low, 2), savings_high_monthly_usd=round(high, 2),
        action=(f"precompute the answer once per entity (~{entities:,.0f} entities, "
                f"{calls_per_day / entities:,.0f} calls per entity per day) and regenerate on content change "
                f"or every {refresh_low:g}-{refresh_high:g} h"),
        evidence=evidence,
    )
