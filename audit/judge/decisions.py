"""From verdicts to decisions: one pass/fail per request, then per template a decision with its confidence.

Reads: ``verdicts`` (sources 'check', 'judge', 'human'), ``replays`` (errors, costs),
``samples`` (strata and weights), ``templates`` (spend), ``request_costs`` and
``requests`` (what each sampled request cost). Writes: the ``verdicts`` rows
of ``source = 'final'`` (one per judged request × candidate), ``decisions``
and ``movable_spend``.

The final pass of a request takes the strongest evidence there is: a human
review, else a conclusive LLM-judge verdict (both orders agreed), else the
automatic checks. A replay that ended in a final error (context overflow,
refusal, bad request) fails: the candidate could not serve that request.
Transient errors are not judged (the next ``audit replay`` retries them).

Per template × candidate the pass rate gets a 95% Wilson interval, and the
decision: ``switch`` only when the lower bound clears the threshold,
``keep`` when the upper bound is below it, ``insufficient evidence``
otherwise. Wilson, not the normal approximation, because the samples per
template are small and the rates near 1: 3/3 passes gives [0.44, 1.00],
never a confident switch.

Spend that can move (``movable_spend``), per candidate, as a share of the
whole ledger's spend (scaled by the sampled fraction):
- ``switch_share``: the spend of the templates whose decision is ``switch``;
- ``passing_share`` with a 95% interval: the share of spend whose requests
  pass, estimated per template (stratum) as its pass rate × its spend and
  summed over the templates tried. The interval sums each template's 95%
  Wilson bounds the same way: conservative (every template at its bound at
  once), but honest with 3 samples a template, where a variance estimated
  from the sample would be zero for 3/3 or 0/3. Templates not tried count as
  spend that does not move.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Hashable, Sequence
from typing import Any

import duckdb

from audit.backends import FINAL_ERRORS
from audit.db import fetch_dicts, transaction
from audit.errors import ConfigError

DEFAULT_THRESHOLD = 0.90
Z_95 = 1.959964
TOP_FAILURES = 3
# The evidence a request's final pass is taken from, strongest first.
EVIDENCE_ORDER = ("human", "judge", "check")


def wilson_interval(passed: int, n: int, z: float = Z_95) -> tuple[float | None, float | None]:
    """The Wilson score interval of passed / n (None, None when n is 0)."""
    if n <= 0:
        return None, None
    p = passed / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def cohen_kappa(pairs: Sequence[tuple[Hashable, Hashable]]) -> float | None:
    """Cohen's kappa of two raters' labels (any categories); None when undefined (no pairs, or chance
    agreement is certain)."""
    n = len(pairs)
    if not n:
        return None
    observed = sum(a == b for a, b in pairs) / n
    first, second = Counter(a for a, _ in pairs), Counter(b for _, b in pairs)
    expected = sum(first[k] * second[k] for k in first) / (n * n)
    if expected >= 1:
        return None
    return (observed - expected) / (1 - expected)


def check_threshold(threshold: float) -> None:
    if not 0 < threshold <= 1:
        raise ConfigError(f"--threshold must be in (0, 1], not {threshold}", "e.g. --threshold 0.9 (90% of requests pass)")


def decide(ci_low: float | None, ci_high: float | None, threshold: float) -> str:
    if ci_low is not None and ci_low >= threshold:
        return "switch"
    if ci_high is not None and ci_high < threshold:
        return "keep"
    return "insufficient evidence"


def replace_verdicts(con: duckdb.DuckDBPyConnection, set_id: str, source: str, rows: list[list[Any]]) -> None:
    """Rewrite the sample set's verdicts of one source, at once: ``rows`` are the columns up to ``reason``."""
    with transaction(con):
        con.execute("DELETE FROM verdicts WHERE sample_set_id = ? AND source = ?", [set_id, source])
        if rows:
            con.executemany("INSERT INTO verdicts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, now()::TIMESTAMP)", rows)


def _failure_label(source: str, metric: str | None, reason: str | None) -> str:
    """A short, countable reason (the source's own verdict rows keep the specifics)."""
    if source == "replay":
        return f"replay error {reason}"
    if source == "check":
        return f"{metric} failed"
    if source == "judge":
        return "judge preferred the original"
    return f"human review: {(reason or 'failed').split(':')[-1].strip()}"


def write_final_verdicts(con: duckdb.DuckDBPyConnection, set_id: str) -> dict[str, int]:
    """One ``source = 'final'`` verdict per judged request × candidate; returns counts by evidence."""
    replays = fetch_dicts(con, """
        SELECT request_id, candidate, status, error_kind FROM replays WHERE sample_set_id = ?
        ORDER BY request_id, candidate""", [set_id])
    verdicts = fetch_dicts(con, """
        SELECT request_id, candidate, source, metric, passed, gating, reason FROM verdicts
        WHERE sample_set_id = ? AND source IN ('check', 'judge', 'human') AND gating
        ORDER BY request_id, candidate, source, metric""", [set_id])
    by_key: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for v in verdicts:
        by_key[(v["request_id"], v["candidate"])][v["source"]].append(v)
    rows, evidence_counts = [], Counter()
    for replay in replays:
        key = (replay["request_id"], replay["candidate"])
        if replay["status"] == "error":
            if replay["error_kind"] in FINAL_ERRORS:
                label = _failure_label("replay", None, replay["error_kind"])
                rows.append([set_id, *key, "final", "final", 0.0, None, False, True, f"replay: {label}"])
                evidence_counts["replay"] += 1
            continue
        final = _final_from(by_key.get(key, {}))
        if final is None:
            continue
        source, passed, label = final
        rows.append([set_id, *key, "final", "final", 1.0 if passed else 0.0, None, passed, True,
                     f"{source}: {label}" if label else source])
        evidence_counts[source] += 1
    replace_verdicts(con, set_id, "final", rows)
    return dict(evidence_counts)


def _final_from(by_source: dict[str, list[dict[str, Any]]]) -> tuple[str, bool, str | None] | None:
    """(evidence, passed, failure label) from the strongest source with a verdict; None if none has one."""
    for source in EVIDENCE_ORDER:
        judged = [v for v in by_source.get(source, []) if v["passed"] is not None]
        if not judged:
            continue
        failed = [v for v in judged if not v["passed"]]
        if source == "human":
            # One row per reviewed item: the review module's majority over reviewers.
            return source, not failed, _failure_label(source, None, failed[0]["reason"]) if failed else None
        if failed:
            return source, False, "; ".join(_failure_label(source, v["metric"], v["reason"]) for v in failed)
        return source, True, None
    return None


def write_decisions(con: duckdb.DuckDBPyConnection, set_id: str, threshold: float = DEFAULT_THRESHOLD) -> list[dict[str, Any]]:
    """``decisions`` per template × candidate from the final verdicts; returns them, biggest spend first."""
    finals = fetch_dicts(con, """
        SELECT s.template_id, v.candidate, v.passed, v.reason
        FROM verdicts v JOIN samples s ON s.sample_set_id = v.sample_set_id AND s.request_id = v.request_id
        WHERE v.sample_set_id = ? AND v.source = 'final'""", [set_id])
    spend = dict(con.execute("SELECT template_id, spend_usd FROM templates").fetchall())
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in finals:
        groups[(row["template_id"], row["candidate"])].append(row)
    rows = []
    for (template_id, candidate), judged in sorted(groups.items()):
        passed = sum(1 for r in judged if r["passed"])
        low, high = wilson_interval(passed, len(judged))
        evidence = Counter(r["reason"].split(":")[0] for r in judged)
        failures = Counter(label.strip() for r in judged if not r["passed"]
                           for label in r["reason"].split(":", 1)[-1].split(";"))
        rows.append({
            "template_id": template_id, "candidate": candidate,
            "evidence": ", ".join(f"{source} {n}" for source, n in sorted(evidence.items())),
            "judged": len(judged), "passed": passed, "pass_rate": passed / len(judged),
            "ci_low": low, "ci_high": high, "threshold": threshold, "decision": decide(low, high, threshold),
            "template_spend_usd": spend.get(template_id),
            "top_failures": [{"reason": reason, "count": n} for reason, n in failures.most_common(TOP_FAILURES)],
        })
    with transaction(con):
        con.execute("DELETE FROM decisions WHERE sample_set_id = ?", [set_id])
        if rows:
            con.executemany("INSERT INTO decisions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, now()::TIMESTAMP)",
                            [[set_id, r["template_id"], r["candidate"], r["evidence"], r["judged"], r["passed"],
                              r["pass_rate"], r["ci_low"], r["ci_high"], r["threshold"], r["decision"],
                              r["template_spend_usd"], json.dumps(r["top_failures"])] for r in rows])
    rows.sort(key=lambda r: (-(r["template_spend_usd"] or 0.0), r["template_id"], r["candidate"]))
    return rows


def write_movable_spend(con: duckdb.DuckDBPyConnection, set_id: str) -> list[dict[str, Any]]:
    """``movable_spend`` per candidate (this module's docstring); returns the rows."""
    total = con.execute("""SELECT sum(c.cost_usd / r.sampled_fraction) FROM request_costs c JOIN requests r USING (request_id)
                           WHERE c.priced""").fetchall()[0][0] or 0.0
    judged = fetch_dicts(con, """
        SELECT v.candidate, s.template_id, count(*) AS n, count(*) FILTER (WHERE v.passed) AS passed
        FROM verdicts v JOIN samples s ON s.sample_set_id = v.sample_set_id AND s.request_id = v.request_id
        WHERE v.sample_set_id = ? AND v.source = 'final' GROUP BY ALL ORDER BY ALL""", [set_id])
    switch_spend = dict(con.execute("""
        SELECT candidate, sum(template_spend_usd) FROM decisions
        WHERE sample_set_id = ? AND decision = 'switch' GROUP BY candidate""", [set_id]).fetchall())
    template_spend = dict(con.execute("SELECT template_id, coalesce(spend_usd, 0) FROM templates").fetchall())
    by_candidate: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in judged:
        by_candidate[row["candidate"]].append(row)
    rows = []
    for candidate in sorted(by_candidate):
        estimate = low = high = tried = 0.0
        for stratum in by_candidate[candidate]:
            spend = template_spend.get(stratum["template_id"], 0.0)
            lo, hi = wilson_interval(stratum["passed"], stratum["n"])
            estimate += spend * stratum["passed"] / stratum["n"]
            low += spend * lo
            high += spend * hi
            tried += spend
        rows.append({
            "candidate": candidate, "total_spend_usd": total, "tried_spend_usd": tried,
            "switch_spend_usd": switch_spend.get(candidate, 0.0),
            "switch_share": switch_spend.get(candidate, 0.0) / total if total else None,
            "passing_share": estimate / total if total else None,
            "passing_share_low": low / total if total else None,
            "passing_share_high": high / total if total else None,
        })
    with transaction(con):
        con.execute("DELETE FROM movable_spend WHERE sample_set_id = ?", [set_id])
        if rows:
            con.executemany("INSERT INTO movable_spend VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, now()::TIMESTAMP)",
                            [[set_id, r["candidate"], r["total_spend_usd"], r["tried_spend_usd"], r["switch_spend_usd"],
                              r["switch_share"], r["passing_share"], r["passing_share_low"], r["passing_share_high"]]
                             for r in rows])
    return rows


def refresh_decisions(con: duckdb.DuckDBPyConnection, set_id: str) -> list[dict[str, Any]]:
    """Recompute the final verdicts, decisions and movable spend of a judged sample set from the verdicts
    stored now (after human reviews came in), at the threshold it was judged with. [] when never judged."""
    threshold = con.execute("SELECT max(threshold) FROM decisions WHERE sample_set_id = ?", [set_id]).fetchall()[0][0]
    if threshold is None:
        return []
    write_final_verdicts(con, set_id)
    decisions = write_decisions(con, set_id, threshold)
    write_movable_spend(con, set_id)
    return decisions


# --------------------------------------------------------------------------- which candidate a template moves to


def trial_costs(con: duckdb.DuckDBPyConnection, set_id: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Per template × candidate on the sample set: answered requests, what they and their originals cost, the ratio."""
    rows = fetch_dicts(
        con,
        """SELECT s.template_id, p.candidate,
                  count(*) AS replayed,
                  count(*) FILTER (WHERE p.status = 'ok') AS answered,
                  count(*) FILTER (WHERE p.status = 'ok' AND p.cost_usd IS NOT NULL AND c.cost_usd IS NOT NULL) AS priced,
                  sum(p.cost_usd) FILTER (WHERE p.status = 'ok' AND p.cost_usd IS NOT NULL AND c.cost_usd IS NOT NULL) AS candidate_cost_usd,
                  sum(c.cost_usd) FILTER (WHERE p.status = 'ok' AND p.cost_usd IS NOT NULL AND c.cost_usd IS NOT NULL) AS original_cost_usd
           FROM replays p JOIN samples s ON s.sample_set_id = p.sample_set_id AND s.request_id = p.request_id
           LEFT JOIN request_costs c ON c.request_id = p.request_id
           WHERE p.sample_set_id = ?
           GROUP BY ALL""",
        [set_id],
    )
    out = {}
    for r in rows:
        r["cost_ratio"] = (r["candidate_cost_usd"] / r["original_cost_usd"]
                           if r["priced"] and r["original_cost_usd"] else None)
        r["original_cost_per_request_usd"] = r["original_cost_usd"] / r["priced"] if r["priced"] else None
        r["candidate_cost_per_request_usd"] = r["candidate_cost_usd"] / r["priced"] if r["priced"] else None
        out[(r["template_id"], r["candidate"])] = r
    return out


def cheapest_candidate(decisions: list[dict[str, Any]], costs: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any] | None:
    """Of one template's decisions, the candidate whose answers cost least against the originals' (cost ratio < 1;
    ties: the higher interval lower bound, then the name). The report's model move and the routing plan both
    take it, so they never name different candidates."""
    ranked = []
    for d in decisions:
        ratio = (costs.get((d["template_id"], d["candidate"])) or {}).get("cost_ratio")
        if ratio is not None and ratio < 1:
            ranked.append((ratio, -(d["ci_low"] if d["ci_low"] is not None else -1.0), d["candidate"], d))
    return min(ranked, key=lambda r: r[:3])[3] if ranked else None
