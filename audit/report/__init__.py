"""``audit report``: every figure of the CFO report, computed from the database at render time.

Reads: ``requests``, ``request_costs``, ``analysis_window``, ``analysis_runs``,
``templates``, ``request_templates``, ``findings`` (``audit analyze``);
``sample_sets``, ``samples``, ``sample_exclusions`` (``audit sample``);
``replay_runs``, ``replays`` (``audit replay``); ``verdicts``, ``decisions``,
``judge_calls``, ``judge_calibrations``, ``reviews`` (``audit judge`` /
``audit review``). Writes nothing: the HTML file is written by
``audit.report.render``.

``build_report(con, options=...)`` returns one plain, JSON-serialisable dict
(``audit report --json`` prints it); ``render_report`` only formats it. A
stage that has not run leaves its section with a ``not_run`` line saying how
to run it; only ``audit analyze`` is required.

How the headline savings are added up (never one dollar twice)
---------------------------------------------------------------
Analyze's findings are already stacked per template × model in the order
cache → precompute → batch → context → model (``audit.findings.stack``),
once with every step at its low estimate and once at its high one.

- *No quality risk*: the stacked savings of findings with risk ``none``.
- *Quality-gated*: the stacked savings of the other quality-gated findings
  (context trimming, output verbosity), plus the model moves.
- *Model moves*, per template: for a candidate the trials decided
  ``switch``, savings = the template's monthly spend left after the earlier
  steps (1–4: the no-risk ones and context trimming, as stacked on that
  template) × (1 − cost ratio), the cost ratio measured on the template's
  replayed sample: Σ replays.cost_usd / Σ request_costs.cost_usd over the
  same answered requests. One candidate per template, the cheapest that
  qualifies. The low end counts ``switch`` decisions only; the high end also
  ``insufficient evidence`` ones whose point pass rate is at or above the
  threshold (labelled as such). A template the trials say nothing about (no
  trial, or only inconclusive ones below the bar) falls back to analyze's
  ``overpowered_model`` finding, labelled "not yet tried" or "tried,
  inconclusive", in the high end only: the low end is what a trial passed. A template the
  trials decided ``keep`` for every candidate has no model move.
- The bill becomes today's monthly spend minus the high savings (best case)
  up to minus the low savings.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import duckdb

from audit.db import fetch_dicts
from audit.errors import AuditError, ConfigError
from audit.findings import IN_WINDOW, MONTHLY, STACK_STEPS
from audit.judge.decisions import cheapest_candidate, trial_costs
from audit.report import projection as projection_module

# The model-move step in the stack; everything before it is applied first.
MODEL_STEP = STACK_STEPS["overpowered_model"][0]
# How much of a text an example shows (characters), and how many examples.
EXAMPLE_CHARS = 400
FINDING_EXAMPLES = 2
TRIAL_EXAMPLES = 3
# Tables stay readable (and the file small) on a ledger with thousands of templates.
TOP_TEMPLATE_MODELS = 25
TOP_FINDINGS = 40
# A dedicated GPU's month for the break-even volume: 24 hours × 30 days.
GPU_HOURS_PER_MONTH = 24 * 30
# Over a longer ledger the spend-over-time chart shows weeks instead of days.
WEEKLY_AFTER_DAYS = 120
# The projection chart turns logarithmic when a year multiplies the bill by more than this,
# and a fitted trend that multiplies it by more than CAVEAT_FROM_MULTIPLE comes with a warning.
LOG_SCALE_FROM_MULTIPLE = 20.0
CAVEAT_FROM_MULTIPLE = 10.0


@dataclass
class ReportOptions:
    """The knobs of ``audit report`` (all optional)."""

    revenue_monthly_usd: float | None = None
    growth_pct_per_month: float | None = None          # overrides the fitted growth
    revenue_growth_pct_per_month: float = 0.0
    sample_set_id: str | None = None                   # default: the set the trials were decided on
    example_chars: int = EXAMPLE_CHARS


# --------------------------------------------------------------------------- helpers


def _plain(value: Any) -> Any:
    """Database values as JSON values: dates as ISO strings, JSON columns parsed, no NaN."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _json(value: Any) -> Any:
    if value is None or not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def _scalar(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> Any:
    rows = con.execute(sql, params or []).fetchall()
    return rows[0][0] if rows else None


def _excerpt(text: str | None, limit: int) -> str | None:
    if text is None:
        return None
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _last_user_text(messages_json: str | None) -> str | None:
    """The last user message of a logged conversation, as plain text (what an example shows as the prompt)."""
    from audit.backends import last_user_text, replay_messages

    if not messages_json:
        return None
    try:
        return last_user_text(replay_messages(messages_json))
    except (ValueError, TypeError, AttributeError):  # a finding's example may hold any logged shape
        return None


def _request_texts(con: duckdb.DuckDBPyConnection, request_ids: list[str], limit: int) -> dict[str, dict[str, Any]]:
    """Prompt and answer excerpts of a few requests, in one scan."""
    if not request_ids:
        return {}
    rows = fetch_dicts(
        con,
        """SELECT r.request_id, r.started_at, r.model, r.messages::VARCHAR AS messages, r.response_text,
                  r.input_tokens, r.output_tokens, c.cost_usd
           FROM requests r LEFT JOIN request_costs c USING (request_id)
           WHERE r.request_id IN (SELECT unnest(?::VARCHAR[]))""",
        [sorted(set(request_ids))],
    )
    return {r["request_id"]: {"request_id": r["request_id"], "started_at": r["started_at"], "model": r["model"],
                              "input_tokens": r["input_tokens"], "output_tokens": r["output_tokens"],
                              "cost_usd": r["cost_usd"],
                              "prompt_text": _excerpt(_last_user_text(r["messages"]), limit),
                              "response_text": _excerpt(r["response_text"], limit)} for r in rows}


def _example_ids(evidence: Any) -> list[str]:
    """Request ids a finding's evidence names as examples, in the order it lists them."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("example_request_ids",) and isinstance(value, list):
                    found.extend(str(v) for v in value if v)
                elif key in ("example_request_id", "request_id") and isinstance(value, str):
                    found.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(evidence)
    return list(dict.fromkeys(found))


def _evidence_counts(evidence: Any, limit: int = 8) -> list[dict[str, Any]]:
    """The evidence's top-level numbers (counts, rates, thresholds) for the findings table."""
    if not isinstance(evidence, dict):
        return []
    out = []
    for key, value in evidence.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if "request_id" in key:
            continue
        out.append({"key": key.replace("_", " "), "value": value})
        if len(out) >= limit:
            break
    return out


def _stage_line(stage: str, how: str) -> str:
    return f"`{stage}` has not run: {how}"


# --------------------------------------------------------------------------- stages


def _require_analysis(con: duckdb.DuckDBPyConnection) -> None:
    if not _scalar(con, "SELECT count(*) FROM requests"):
        raise AuditError("the ledger is empty: nothing to report", "run `audit ingest LOGS...` then `audit analyze`")
    if not _scalar(con, "SELECT count(*) FROM analysis_window") or not _scalar(con, "SELECT count(*) FROM request_costs"):
        raise AuditError("the ledger has not been analyzed: the report has no prices yet",
                         "run `audit analyze` first (it prices every call and finds the waste)")


def _choose_sample_set(con: duckdb.DuckDBPyConnection, wanted: str | None) -> str | None:
    """``--sample``, else the set the latest decision was made on, else the latest replayed, else the latest drawn."""
    if wanted is not None:
        if not _scalar(con, "SELECT count(*) FROM sample_sets WHERE sample_set_id = ?", [wanted]):
            known = [r[0] for r in con.execute("SELECT sample_set_id FROM sample_sets ORDER BY drawn_at DESC").fetchall()]
            raise ConfigError(f"no sample set {wanted!r}",
                              f"sample sets here: {', '.join(known)}" if known else "draw one with `audit sample`")
        return wanted
    for sql in ("SELECT sample_set_id FROM decisions ORDER BY decided_at DESC, sample_set_id LIMIT 1",
                "SELECT sample_set_id FROM replay_runs ORDER BY started_at DESC, run_id DESC LIMIT 1",
                "SELECT sample_set_id FROM sample_sets ORDER BY drawn_at DESC, sample_set_id LIMIT 1"):
        found = _scalar(con, sql)
        if found is not None:
            return found
    return None


def _stages(con: duckdb.DuckDBPyConnection, set_id: str | None) -> dict[str, bool]:
    return {
        "analyze": True,
        "sample": set_id is not None,
        "replay": set_id is not None and bool(_scalar(con, "SELECT count(*) FROM replays WHERE sample_set_id = ?", [set_id])),
        "judge": set_id is not None and bool(_scalar(con, "SELECT count(*) FROM decisions WHERE sample_set_id = ?", [set_id])),
        "review": set_id is not None and bool(_scalar(con, "SELECT count(*) FROM reviews WHERE sample_set_id = ?", [set_id])),
    }


# --------------------------------------------------------------------------- where the money goes


def _spend(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    by_template_model = fetch_dicts(
        con,
        f"""SELECT coalesce(t.template_id, '(none)') AS template_id, coalesce(tp.name, '(no template)') AS template_name,
                   coalesce(r.model, '(unknown)') AS model,
                   sum({MONTHLY}) AS calls_monthly,
                   coalesce(sum(c.cost_usd * {MONTHLY}), 0) AS spend_monthly_usd,
                   count(*) FILTER (WHERE c.cost_usd IS NULL) AS unpriced_calls
            FROM requests r JOIN request_costs c USING (request_id)
            LEFT JOIN request_templates t USING (request_id) LEFT JOIN templates tp USING (template_id),
                 analysis_window w
            WHERE {IN_WINDOW}
            GROUP BY ALL ORDER BY spend_monthly_usd DESC, template_id, model""",
    )
    total = sum(r["spend_monthly_usd"] for r in by_template_model)
    for r in by_template_model:
        r["share"] = r["spend_monthly_usd"] / total if total else None
    shown, rest = by_template_model[:TOP_TEMPLATE_MODELS], by_template_model[TOP_TEMPLATE_MODELS:]
    other = None
    if rest:
        other = {"groups": len(rest), "calls_monthly": sum(r["calls_monthly"] for r in rest),
                 "spend_monthly_usd": sum(r["spend_monthly_usd"] for r in rest),
                 "share": sum(r["spend_monthly_usd"] for r in rest) / total if total else None}
    by_task = fetch_dicts(
        con,
        """SELECT coalesce(task_type, '(unclassified)') AS task_type, coalesce(tier, '-') AS tier,
                  count(*) AS templates, sum(calls_scaled) AS calls_scaled,
                  coalesce(sum(spend_monthly_usd), 0) AS spend_monthly_usd
           FROM templates GROUP BY ALL ORDER BY spend_monthly_usd DESC, task_type, tier""",
    )
    by_tier = fetch_dicts(
        con,
        """SELECT coalesce(tier, '-') AS tier, count(*) AS templates, coalesce(sum(spend_monthly_usd), 0) AS spend_monthly_usd
           FROM templates GROUP BY ALL ORDER BY spend_monthly_usd DESC, tier""",
    )
    span_days = _scalar(con, "SELECT date_diff('day', min(started_at), max(started_at)) FROM requests") or 0
    bucket = "week" if span_days > WEEKLY_AFTER_DAYS else "day"
    over_time = fetch_dicts(
        con,
        f"""SELECT date_trunc('{bucket}', r.started_at)::DATE AS period,
                   sum(c.cost_usd / r.sampled_fraction) AS spend_usd,
                   sum(1.0 / r.sampled_fraction) AS calls
            FROM requests r JOIN request_costs c USING (request_id)
            WHERE r.started_at IS NOT NULL GROUP BY ALL ORDER BY period""",
    )
    return {"by_template_model": shown, "other_template_models": other, "by_task_type": by_task, "by_tier": by_tier,
            "over_time": {"bucket": bucket, "points": over_time}}


# --------------------------------------------------------------------------- findings


def _findings(con: duckdb.DuckDBPyConnection, example_chars: int) -> dict[str, Any]:
    rows = fetch_dicts(
        con,
        """SELECT f.finding_id, f.kind, f.template_id, t.name AS template_name, f.model, f.risk, f.stack_step,
                  f.requests_affected, f.requests_affected_monthly, f.spend_affected_monthly_usd,
                  f.savings_low_monthly_usd, f.savings_high_monthly_usd,
                  f.stacked_savings_low_monthly_usd, f.stacked_savings_high_monthly_usd,
                  f.action AS action_text, f.evidence::VARCHAR AS evidence
           FROM findings f LEFT JOIN templates t USING (template_id)
           WHERE f.status = 'found'
           ORDER BY f.stacked_savings_high_monthly_usd DESC NULLS LAST, f.kind, f.template_id, f.model""",
    )
    not_run = fetch_dicts(con, "SELECT kind, not_run_reason AS reason_text FROM findings WHERE status = 'not-run' ORDER BY kind")
    shown = rows[:TOP_FINDINGS]
    wanted: dict[str, list[str]] = {}
    for f in shown:
        evidence = _json(f.pop("evidence"))
        f["evidence_counts"] = _evidence_counts(evidence)
        wanted[f["finding_id"]] = _example_ids(evidence)
    texts = _request_texts(con, [i for ids in wanted.values() for i in ids[:FINDING_EXAMPLES * 3]], example_chars)
    for f in shown:
        f["examples"] = [texts[i] for i in wanted[f["finding_id"]] if i in texts][:FINDING_EXAMPLES]
    return {"found": shown, "more_found": len(rows) - len(shown), "not_run": not_run}


def _with_trial_outcomes(findings: dict[str, Any], moves: dict[str, Any]) -> dict[str, Any]:
    """An over-powered-model finding is analyze's estimate; say next to it what the trials made of it."""
    by_template = {m["template_id"]: m for m in moves["templates"]}
    for f in findings["found"]:
        f["trial_text"] = None
        move = by_template.get(f["template_id"]) if f["kind"] == "overpowered_model" else None
        if move is None:
            continue
        if move["basis"] == "trial":
            picked = move["low"] or move["high"]
            f["trial_text"] = (f"downgrade trial: {picked['candidate']} {picked['label']}"
                               + ("" if picked["decision"] == "switch" else "; counted in the high end of the headline only")
                               if picked
                               else f"downgrade trial: {move.get('note') or 'no cheaper candidate passed'}; not counted in the headline")
        else:
            f["trial_text"] = f"downgrade trial: {move['basis']}; counted in the high end of the headline only"
    return findings


# --------------------------------------------------------------------------- trials and model moves


def _spend_left_before_model_step(con: duckdb.DuckDBPyConnection) -> dict[str, dict[str, float]]:
    """Per template: monthly spend, and what is left of it after the stacked steps before the model move."""
    rows = con.execute(
        """SELECT t.template_id, coalesce(t.spend_monthly_usd, 0),
                  coalesce(sum(f.stacked_savings_low_monthly_usd), 0), coalesce(sum(f.stacked_savings_high_monthly_usd), 0)
           FROM templates t LEFT JOIN findings f
             ON f.template_id = t.template_id AND f.status = 'found' AND f.stack_step < ?
           GROUP BY ALL""",
        [MODEL_STEP],
    ).fetchall()
    return {template: {"spend_monthly_usd": spend, "left_low_case_usd": max(0.0, spend - low),
                       "left_high_case_usd": max(0.0, spend - high)} for template, spend, low, high in rows}


def _model_moves(con: duckdb.DuckDBPyConnection, set_id: str | None,
                 costs: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    decisions = fetch_dicts(
        con, "SELECT * FROM decisions WHERE sample_set_id = ? ORDER BY template_id, candidate", [set_id]) if set_id else []
    names = dict(con.execute("SELECT template_id, name FROM templates").fetchall())
    left = _spend_left_before_model_step(con)
    overpowered = defaultdict(lambda: [0.0, 0.0, []])
    for template_id, low, high, model in con.execute(
            """SELECT template_id, stacked_savings_low_monthly_usd, stacked_savings_high_monthly_usd, model
               FROM findings WHERE status = 'found' AND kind = 'overpowered_model' ORDER BY template_id, model""").fetchall():
        entry = overpowered[template_id]
        entry[0] += low or 0.0
        entry[1] += high or 0.0
        entry[2].append(model)
    by_template: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for d in decisions:
        by_template[d["template_id"]].append(d)

    moves = []
    for template_id in sorted(set(by_template) | set(overpowered), key=lambda t: (names.get(t) or "", t)):
        rows = by_template.get(template_id, [])
        spend = left.get(template_id, {"spend_monthly_usd": 0.0, "left_low_case_usd": 0.0, "left_high_case_usd": 0.0})
        switch = [d for d in rows if d["decision"] == "switch"]
        promising = [d for d in rows if d["decision"] == "insufficient evidence" and d["pass_rate"] is not None
                     and d["pass_rate"] >= d["threshold"]]
        decided = [d for d in rows if d["decision"] in ("switch", "keep")]
        move: dict[str, Any] = {"template_id": template_id, "template_name": names.get(template_id), **spend,
                                "low": None, "high": None}
        if decided or promising:
            move["basis"] = "trial"
            low_pick, high_pick = cheapest_candidate(switch, costs), cheapest_candidate(switch + promising, costs)
            for end, pick, base in (("low", low_pick, spend["left_low_case_usd"]),
                                    ("high", high_pick, spend["left_high_case_usd"])):
                if pick is None:
                    continue
                ratio = costs[(template_id, pick["candidate"])]["cost_ratio"]
                move[end] = {"candidate": pick["candidate"], "decision": pick["decision"], "pass_rate": pick["pass_rate"],
                             "ci_low": pick["ci_low"], "ci_high": pick["ci_high"], "threshold": pick["threshold"],
                             "cost_ratio": ratio, "savings_monthly_usd": base * (1 - ratio),
                             "label": "passed the trial" if pick["decision"] == "switch"
                             else "insufficient evidence; point pass rate at or above the threshold"}
            if not switch and not promising:
                move["note"] = "the trials said keep: no cheaper candidate passed"
            elif high_pick is None:
                move["note"] = "the candidates that passed are not cheaper here (or their replays are not priced)"
        elif template_id in overpowered:
            low, high, models = overpowered[template_id]
            move["basis"] = "not yet tried" if not rows else "tried, inconclusive"
            # Not backed by a trial that passed: only the high end may count on it.
            move["low"] = {"candidate": None, "savings_monthly_usd": 0.0, "label": move["basis"]}
            move["high"] = {"candidate": None, "savings_monthly_usd": high, "label": move["basis"]}
            move["from_models"] = models
        else:
            move["basis"] = "tried, inconclusive"
            move["note"] = "no decision yet and no over-powered-model finding"
        moves.append(move)
    low = sum((m["low"] or {}).get("savings_monthly_usd", 0.0) for m in moves)
    high = sum((m["high"] or {}).get("savings_monthly_usd", 0.0) for m in moves)
    return {"templates": moves, "savings_low_monthly_usd": low, "savings_high_monthly_usd": high,
            "from_trials": any(m["basis"] == "trial" for m in moves)}


def _verdict_examples(con: duckdb.DuckDBPyConnection, set_id: str, template_id: str, candidate: str,
                      limit: int, chars: int) -> list[dict[str, Any]]:
    """A failing answer first (what the CFO should see), then passing ones; answered replays when nothing is judged.

    The originals' texts are filled in later by ``_fill_original_texts``, for every example at once.
    """
    rows = fetch_dicts(
        con,
        """SELECT p.request_id, p.response_text AS candidate_text, p.cost_usd AS candidate_cost_usd,
                  v.passed, v.reason AS reason_text
           FROM replays p JOIN samples s ON s.sample_set_id = p.sample_set_id AND s.request_id = p.request_id
           LEFT JOIN verdicts v ON v.sample_set_id = p.sample_set_id AND v.request_id = p.request_id
                AND v.candidate = p.candidate AND v.source = 'final' AND v.metric = 'final'
           WHERE p.sample_set_id = ? AND s.template_id = ? AND p.candidate = ? AND p.status = 'ok'
           ORDER BY (v.passed IS NULL), v.passed, p.request_id""",
        [set_id, template_id, candidate],
    )
    chosen, seen_pass = [], False
    for r in rows:
        if r["passed"] is False and not chosen:
            chosen.append(r)
        elif r["passed"] is not False and not seen_pass:
            chosen.append(r)
            seen_pass = True
    for r in rows:
        if len(chosen) >= limit:
            break
        if r not in chosen:
            chosen.append(r)
    return [{"request_id": r["request_id"], "prompt_text": None, "response_text": None, "original_cost_usd": None,
             "candidate_text": _excerpt(r["candidate_text"], chars), "candidate_cost_usd": r["candidate_cost_usd"],
             "passed": r["passed"], "reason_text": r["reason_text"]} for r in chosen[:limit]]


def _fill_original_texts(con: duckdb.DuckDBPyConnection, examples: list[dict[str, Any]], chars: int) -> None:
    """The production prompt and answer of every example, read in one scan of the ledger."""
    texts = _request_texts(con, [ex["request_id"] for ex in examples], chars)
    for ex in examples:
        original = texts.get(ex["request_id"], {})
        ex.update(prompt_text=original.get("prompt_text"), response_text=original.get("response_text"),
                  original_cost_usd=original.get("cost_usd"))


def _trials(con: duckdb.DuckDBPyConnection, set_id: str | None, stages: dict[str, bool],
            costs: dict[tuple[str, str], dict[str, Any]], chars: int) -> dict[str, Any]:
    if not stages["replay"]:
        how = ("`audit sample` has not run: run `audit sample`, then `audit replay` and `audit judge`"
               if not stages["sample"] else "`audit replay` has not run on this sample: run `audit replay`, then `audit judge`")
        return {"not_run": how, "rows": [], "judging": None, "calibrations": [], "movable_spend": []}
    samples = dict(con.execute("SELECT template_id, count(*) FROM samples WHERE sample_set_id = ? GROUP BY ALL",
                               [set_id]).fetchall())
    from audit.judge.checks import checks_for

    names = dict(con.execute("SELECT template_id, name FROM templates").fetchall())
    task_types = dict(con.execute("SELECT template_id, task_type FROM templates").fetchall())
    decisions = {(d["template_id"], d["candidate"]): d for d in fetch_dicts(
        con, "SELECT * FROM decisions WHERE sample_set_id = ?", [set_id])}
    rows = []
    # Judged pairs first, the biggest strata first. Examples: for judged pairs only once anything is judged
    # (an unjudged answer shown next to judged ones invites the wrong conclusion).
    any_judged = bool(decisions)
    order = sorted(set(costs) | set(decisions),
                   key=lambda k: (k not in decisions, -(samples.get(k[0]) or 0), names.get(k[0]) or "", k))
    for key in order:
        template_id, candidate = key
        d = decisions.get(key) or {}
        c = costs.get(key) or {}
        show_examples = key in decisions or not any_judged
        rows.append({
            "template_id": template_id, "template_name": names.get(template_id), "candidate": candidate,
            "samples": samples.get(template_id, 0), "replayed": c.get("replayed", 0), "answered": c.get("answered", 0),
            "judged": d.get("judged"), "passed": d.get("passed"), "pass_rate": d.get("pass_rate"),
            "ci_low": d.get("ci_low"), "ci_high": d.get("ci_high"), "threshold": d.get("threshold"),
            "decision": d.get("decision") or "not judged", "evidence": d.get("evidence"),
            "task_type": task_types.get(template_id), "checks_text": checks_for(task_types.get(template_id)),
            "top_failures": [{"reason_text": str(f.get("reason")), "count": f.get("count")}
                             for f in (_json(d.get("top_failures")) or []) if isinstance(f, dict)],
            "original_cost_per_request_usd": c.get("original_cost_per_request_usd"),
            "candidate_cost_per_request_usd": c.get("candidate_cost_per_request_usd"),
            "cost_ratio": c.get("cost_ratio"),
            "examples": _verdict_examples(con, set_id, template_id, candidate, TRIAL_EXAMPLES, chars) if show_examples else [],
        })
    _fill_original_texts(con, [ex for row in rows for ex in row["examples"]], chars)
    by_source = fetch_dicts(
        con,
        """SELECT source, count(DISTINCT (request_id, candidate)) AS answers,
                  count(*) FILTER (WHERE passed IS NOT NULL) AS verdicts,
                  count(*) FILTER (WHERE passed) AS passed
           FROM verdicts WHERE sample_set_id = ? AND source <> 'final' GROUP BY ALL ORDER BY source""",
        [set_id],
    )
    # The final row's reason starts with the evidence that decided it: 'human', 'judge', 'check'
    # or 'replay' (a final replay error), then ': why it failed'.
    decided_by = fetch_dicts(
        con,
        """SELECT coalesce(nullif(trim(split_part(reason, ':', 1)), ''), 'unknown') AS decided_by,
                  count(*) AS requests, count(*) FILTER (WHERE passed) AS passed
           FROM verdicts WHERE sample_set_id = ? AND source = 'final' GROUP BY ALL ORDER BY requests DESC, decided_by""",
        [set_id],
    )
    reviews = _scalar(con, "SELECT count(*) FROM reviews WHERE sample_set_id = ?", [set_id]) or 0
    calibrations = fetch_dicts(
        con,
        """SELECT method, calibrated_at, file, pairs, accuracy, kappa, tie_rate FROM judge_calibrations
           QUALIFY row_number() OVER (PARTITION BY method ORDER BY calibrated_at DESC) = 1 ORDER BY method""",
    )
    movable = fetch_dicts(con, "SELECT * FROM movable_spend WHERE sample_set_id = ? ORDER BY candidate", [set_id])
    judged = stages["judge"]
    return {"not_run": None if judged else "`audit judge` has not run: the answers below are not judged yet; run `audit judge`",
            "rows": rows, "calibrations": calibrations, "movable_spend": movable,
            "judging": {"by_source": by_source, "decided_by": decided_by, "human_reviews": reviews}}


# --------------------------------------------------------------------------- self-hosting


def _self_hosting(con: duckdb.DuckDBPyConnection, set_id: str | None) -> dict[str, Any]:
    from audit.pricing import self_hosted_price_per_million

    if set_id is None:
        return {"not_run": "no sample drawn: run `audit sample`, then `audit replay` with a vllm candidate", "runs": []}
    runs = fetch_dicts(
        con,
        """SELECT run_id, candidate, engine, model, device, engine_version, status, gpu_hourly_usd, tokens_per_second,
                  output_tokens_per_second, input_price_per_m, requests_ok, prompt_tokens, output_tokens, wall_seconds,
                  cost_usd, started_at
           FROM replay_runs WHERE sample_set_id = ? AND pricing = 'gpu-hour' ORDER BY started_at, run_id""",
        [set_id],
    )
    if not runs:
        return {"not_run": "no self-hosted candidate was replayed: run `audit replay -c NAME=vllm:MODEL` on your GPU "
                           "(its throughput is measured, never assumed)", "runs": []}
    out = []
    for run in runs:
        api = fetch_dicts(
            con,
            f"""SELECT count(*) AS requests, sum(c.cost_usd) AS api_cost_usd,
                       sum(coalesce(r.input_tokens, 0) + coalesce(r.output_tokens, 0)) AS api_tokens,
                       sum(p.cost_usd) AS candidate_cost_usd
                FROM replays p JOIN requests r USING (request_id) JOIN request_costs c USING (request_id)
                WHERE p.run_id = ? AND p.status = 'ok' AND c.cost_usd IS NOT NULL""",
            [run["run_id"]],
        )[0]
        # The monthly token volume of the templates this run replayed: the traffic a GPU would serve.
        monthly_tokens = _scalar(
            con,
            f"""SELECT sum((coalesce(r.input_tokens, 0) + coalesce(r.output_tokens, 0)) * {MONTHLY})
                FROM requests r JOIN request_templates t USING (request_id), analysis_window w
                WHERE {IN_WINDOW} AND t.template_id IN (
                    SELECT s.template_id FROM replays p JOIN samples s
                      ON s.sample_set_id = p.sample_set_id AND s.request_id = p.request_id WHERE p.run_id = ?)""",
            [run["run_id"]],
        )
        tps = run["tokens_per_second"]
        per_million = self_hosted_price_per_million(run["gpu_hourly_usd"], tps) if tps and run["gpu_hourly_usd"] else None
        api_per_million = api["api_cost_usd"] / api["api_tokens"] * 1e6 if api["api_tokens"] and api["api_cost_usd"] else None
        gpu_month = run["gpu_hourly_usd"] * GPU_HOURS_PER_MONTH if run["gpu_hourly_usd"] else None
        break_even = gpu_month / api_per_million * 1e6 if gpu_month and api_per_million else None
        capacity = tps * 3600 * GPU_HOURS_PER_MONTH if tps else None
        gpus = math.ceil(monthly_tokens / capacity) if capacity and monthly_tokens else None
        out.append({**run, "self_hosted_per_million_usd": per_million, "api_per_million_usd": api_per_million,
                    "api_requests": api["requests"], "api_cost_usd": api["api_cost_usd"],
                    "candidate_cost_usd": api["candidate_cost_usd"],
                    "gpu_monthly_usd": gpu_month, "break_even_tokens_monthly": break_even,
                    "capacity_tokens_monthly": capacity, "traffic_tokens_monthly": monthly_tokens,
                    "gpus_for_traffic": gpus,
                    # This traffic on the API at its measured $/1M, against enough dedicated GPUs to serve it.
                    "traffic_api_monthly_usd": monthly_tokens * api_per_million / 1e6 if monthly_tokens and api_per_million else None,
                    "traffic_gpus_monthly_usd": gpus * gpu_month if gpus and gpu_month else None})
    return {"not_run": None, "runs": out}


# --------------------------------------------------------------------------- method


def _method(con: duckdb.DuckDBPyConnection, set_id: str | None) -> dict[str, Any]:
    prices = fetch_dicts(
        con,
        """SELECT coalesce(price_source, '(not priced)') AS price_source, price_provider, price_model,
                  min(price_valid_from) AS valid_from_first, max(price_valid_from) AS valid_from_last, count(*) AS requests
           FROM request_costs GROUP BY ALL ORDER BY requests DESC, price_source, price_model""",
    )
    unpriced = fetch_dicts(
        con,
        """SELECT unpriced_reason AS reason_text, count(*) AS requests FROM request_costs
           WHERE NOT priced GROUP BY ALL ORDER BY requests DESC, reason_text""",
    )
    fractions = [r[0] for r in con.execute(
        "SELECT DISTINCT sampled_fraction FROM requests ORDER BY sampled_fraction").fetchall()]
    ledger = fetch_dicts(con, """SELECT count(*) AS requests, min(started_at) AS first_call, max(started_at) AS last_call,
                                        count(*) FILTER (WHERE status = 'error') AS failed
                                 FROM requests""")[0]
    run = fetch_dicts(con, "SELECT run_id, started_at, finished_at, parameters::VARCHAR AS parameters "
                           "FROM analysis_runs ORDER BY run_id DESC LIMIT 1")
    analysis = run[0] if run else None
    if analysis:
        analysis["parameters"] = _json(analysis["parameters"])
    sample = None
    exclusions: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    thresholds: list[float] = []
    audit_cost = {"replays_usd": None, "judge_usd": None}
    if set_id is not None:
        sample = fetch_dicts(con, "SELECT * FROM sample_sets WHERE sample_set_id = ?", [set_id])[0]
        exclusions = fetch_dicts(
            con,
            """SELECT reason, sum(requests) AS requests, sum(spend_usd) AS spend_usd FROM sample_exclusions
               WHERE sample_set_id = ? GROUP BY ALL ORDER BY requests DESC, reason""",
            [set_id],
        )
        runs = fetch_dicts(
            con,
            """SELECT run_id, candidate, engine, model, pricing, device, status, requests_planned, requests_ok,
                      requests_error, tokens_per_second, cost_usd, price_source, started_at
               FROM replay_runs WHERE sample_set_id = ? ORDER BY started_at, run_id""",
            [set_id],
        )
        thresholds = [r[0] for r in con.execute(
            "SELECT DISTINCT threshold FROM decisions WHERE sample_set_id = ? ORDER BY threshold", [set_id]).fetchall()]
        audit_cost = {
            "replays_usd": _scalar(con, "SELECT sum(cost_usd) FROM replays WHERE sample_set_id = ?", [set_id]),
            "judge_usd": _scalar(con, "SELECT sum(cost_usd) FROM judge_calls WHERE sample_set_id = ?", [set_id]),
        }
    return {"prices": prices, "unpriced": unpriced, "sampled_fractions": fractions, "ledger": ledger,
            "analysis_run": analysis, "sample_set": sample, "exclusions": exclusions, "replay_runs": runs,
            "decision_thresholds": thresholds, "audit_cost": audit_cost}


# --------------------------------------------------------------------------- the whole report


def check_revenue(revenue_monthly_usd: float | None) -> None:
    if revenue_monthly_usd is not None and revenue_monthly_usd <= 0:
        raise ConfigError(f"--revenue-monthly must be positive, not {revenue_monthly_usd:g}",
                          "give your monthly revenue in USD, e.g. --revenue-monthly 400000")


def build_report(con: duckdb.DuckDBPyConnection, *, options: ReportOptions | None = None) -> dict[str, Any]:
    """Every figure of the report as one plain, JSON-serialisable dict (the module docstring says how)."""
    from audit.analyze import summary_from_tables

    options = options or ReportOptions()
    check_revenue(options.revenue_monthly_usd)
    for flag, value in (("--growth", options.growth_pct_per_month), ("--revenue-growth", options.revenue_growth_pct_per_month)):
        if value is not None and value <= -100:
            raise ConfigError(f"{flag} must be above -100 (% per month), not {value:g}", "e.g. 5 for 5% growth per month")
    _require_analysis(con)
    set_id = _choose_sample_set(con, options.sample_set_id)
    stages = _stages(con, set_id)
    summary = summary_from_tables(con)
    window = fetch_dicts(con, "SELECT window_start, window_end, days FROM analysis_window")[0]
    spend_monthly = summary["totals"]["spend_monthly_usd"] or 0.0

    found = [f for f in summary["findings"] if f["status"] == "found"]
    no_risk = [f for f in found if f["risk"] == "none"]
    gated_findings = [f for f in found if f["risk"] != "none" and f["kind"] != "overpowered_model"]

    def by_kind(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        kinds: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        for f in rows:
            kinds[f["kind"]][0] += f["stacked_savings_low_monthly_usd"] or 0.0
            kinds[f["kind"]][1] += f["stacked_savings_high_monthly_usd"] or 0.0
        return [{"kind": k, "low_usd": v[0], "high_usd": v[1]} for k, v in sorted(kinds.items(), key=lambda kv: -kv[1][1])]

    costs = trial_costs(con, set_id) if stages["replay"] else {}
    moves = _model_moves(con, set_id, costs)
    no_risk_low = sum(f["stacked_savings_low_monthly_usd"] or 0.0 for f in no_risk)
    no_risk_high = sum(f["stacked_savings_high_monthly_usd"] or 0.0 for f in no_risk)
    context_low = sum(f["stacked_savings_low_monthly_usd"] or 0.0 for f in gated_findings)
    context_high = sum(f["stacked_savings_high_monthly_usd"] or 0.0 for f in gated_findings)
    gated_low = context_low + moves["savings_low_monthly_usd"]
    gated_high = context_high + moves["savings_high_monthly_usd"]
    total_low, total_high = no_risk_low + gated_low, no_risk_high + gated_high
    revenue = options.revenue_monthly_usd
    headline = {
        "spend_monthly_usd": spend_monthly,
        "window": window,
        "unpriced_requests": summary["totals"]["unpriced_requests"],
        "revenue_monthly_usd": revenue,
        "cost_share_of_revenue": spend_monthly / revenue if revenue else None,
        "revenue_hint": None if revenue else "pass --revenue-monthly USD to see LLM cost as a share of revenue",
        "no_risk": {"low_usd": no_risk_low, "high_usd": no_risk_high, "by_kind": by_kind(no_risk)},
        "quality_gated": {"low_usd": gated_low, "high_usd": gated_high,
                          "findings": {"low_usd": context_low, "high_usd": context_high, "by_kind": by_kind(gated_findings)},
                          "model_moves": {"low_usd": moves["savings_low_monthly_usd"],
                                          "high_usd": moves["savings_high_monthly_usd"],
                                          "from_trials": moves["from_trials"]}},
        "savings_low_usd": total_low,
        "savings_high_usd": total_high,
        "bill_after_low_usd": max(0.0, spend_monthly - total_high),
        "bill_after_high_usd": max(0.0, spend_monthly - total_low),
    }

    days = projection_module.daily_spend_in_window(con)
    fit = projection_module.fit_growth(days)
    if options.growth_pct_per_month is not None:
        growth, growth_basis = options.growth_pct_per_month / 100, "given (--growth)"
    elif fit["fitted"]:
        growth, growth_basis = fit["monthly_growth"], "fitted"
    else:
        growth, growth_basis = 0.0, f"none: {fit['reason']}; pass --growth PCT to set it"
    projected = projection_module.project(
        current_monthly_usd=spend_monthly, monthly_growth=growth, savings_low_usd=total_low,
        savings_high_usd=total_high, revenue_monthly_usd=revenue,
        revenue_growth=options.revenue_growth_pct_per_month / 100)

    data = {
        "meta": {"generated_at": datetime.now().astimezone().isoformat(timespec="seconds"),
                 "sample_set_id": set_id, "options": asdict(options),
                 "ledger_first_call": None, "ledger_last_call": None},
        "stages": stages,
        "headline": headline,
        "spend": _spend(con),
        "findings": _with_trial_outcomes(_findings(con, options.example_chars), moves),
        "model_moves": moves,
        "trials": _trials(con, set_id, stages, costs, options.example_chars),
        "self_hosting": _self_hosting(con, set_id),
        "projection": {"growth_monthly": growth, "growth_basis": growth_basis, "fit": fit,
                       "revenue_growth_monthly": options.revenue_growth_pct_per_month / 100,
                       "revenue_shares": list(projection_module.REVENUE_SHARES),
                       "year_multiple": (1 + growth) ** projection_module.MONTHS,
                       "log_scale": (1 + growth) ** projection_module.MONTHS > LOG_SCALE_FROM_MULTIPLE,
                       "caveat": (f"the fitted trend multiplies the bill {(1 + growth) ** projection_module.MONTHS:,.0f}× "
                                  "in a year: it describes the growth to date, not a forecast; "
                                  "pass --growth PCT for a planning rate")
                                 if growth_basis == "fitted" and (1 + growth) ** projection_module.MONTHS > CAVEAT_FROM_MULTIPLE
                                 else None,
                       **projected},
        "method": _method(con, set_id),
    }
    data["meta"]["ledger_first_call"] = data["method"]["ledger"]["first_call"]
    data["meta"]["ledger_last_call"] = data["method"]["ledger"]["last_call"]
    return _plain(data)


def __getattr__(name: str) -> Any:
    # render_report / write_report live in audit.report.render (jinja2); importing them lazily
    # keeps `build_report` (and --json) free of the template machinery.
    if name in ("render_report", "write_report", "redact_report", "print_pdf", "default_report_path"):
        from audit.report import render

        return getattr(render, name)
    raise AttributeError(name)


__all__ = ["ReportOptions", "build_report", "render_report", "write_report", "redact_report", "print_pdf",
           "default_report_path"]
