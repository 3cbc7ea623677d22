"""Exports for the teams that act on the audit: a gateway routing plan and a distillation set.

Reads: ``sample_sets``, ``samples``, ``requests``, ``templates``, ``findings``,
``replay_runs``, ``replays``, ``verdicts`` (the ``source = 'final'``,
``metric = 'final'`` row of each judged answer) and ``decisions``.
Writes no table: files only.

Routing plan (``write_routing_plan``, default ``reports/routing.yaml``)
---------------------------------------------------------------------
A LiteLLM proxy config (``litellm --config routing.yaml``):

- ``model_list``: one deployment per model traffic may go to: every
  template's production model, and every candidate some template switches to.
  ``model_name`` is the production model's name (``gpt-4o``) or the
  candidate's name from ``audit replay`` (``candidate-NAME`` if that would
  clash with a production model). ``litellm_params.model`` is
  ``PROVIDER/MODEL``; self-hosted vLLM candidates are
  ``hosted_vllm/MODEL`` with an ``api_base`` placeholder to fill in.
- ``router_settings.model_group_alias``: ``tmpl-<template_id>`` → the
  model_name that template should use. Callers send ``model:
  tmpl-<template_id>``; moving a template back is a one-line change.
- ``llm_spend_audit``: the evidence, per template (current and recommended
  model, decision, pass rate with its 95% interval and n, monthly spend, every
  candidate's decision, and the cache/batch findings with their $/month).
  LiteLLM's ``load_config`` reads only the top-level keys it knows
  (``model_list``, ``router_settings``, ``litellm_settings``,
  ``general_settings``, ``environment_variables``, ...) and ignores others,
  so this section travels in the same file.

A template routes to a candidate only when that candidate's decision is
``switch`` and its answers cost less than the originals on the same requests.
When several qualify, ``audit.judge.decisions.cheapest_candidate`` picks one
(the lowest cost ratio, then the higher interval lower bound, then the name):
the same rule as the report's model moves. Every other template keeps its
production model.

Distillation set (``export_dataset``)
-------------------------------------
One row per sampled request × candidate replayed: the conversation (as sent
to the candidates), the production answer, the candidate's answer and its
final verdict, with ``weight`` = the real calls the sampled request stands
for (``samples.traffic_weight``). Saved with ``datasets``
(``save_to_disk`` into ``DIR/hf``) and as ``DIR/distill.parquet``. The
folder carries a marker file: a non-empty folder without it is never
written into; one with it is replaced as a whole (built beside it first, so
a failed export leaves the previous one intact).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import duckdb

from audit.db import fetch_dicts
from audit.errors import AuditError, ConfigError
from audit.formats.hf_dataset import offline_datasets
from audit.judge.decisions import cheapest_candidate, trial_costs
from audit.sample import resolve_sample_set

DEFAULT_ROUTING_PATH = Path("reports") / "routing.yaml"
# The first line of every routing plan we write: an existing file without it is not ours.
ROUTING_HEADER = "# llm-spend-audit routing plan"
DATASET_MARKER = ".llm-spend-audit-export.json"
ALIAS_PREFIX = "tmpl-"
# Findings that change how a template is served rather than which model serves it.
SERVING_FINDING_KINDS = ("exact_cache", "near_duplicate_cache", "precompute", "batch_eligible", "prompt_caching_unused")
VLLM_API_BASE_PLACEHOLDER = "http://REPLACE-WITH-YOUR-VLLM-HOST:8000/v1"
# The ledger's provider names where LiteLLM's prefix differs.
_LITELLM_PROVIDER = {"google": "gemini", "x-ai": "xai"}
NOT_JUDGED = "not judged"


# --------------------------------------------------------------------------- what to export


def _require_replays(con: duckdb.DuckDBPyConnection, set_id: str) -> None:
    if not con.execute("SELECT 1 FROM replays WHERE sample_set_id = ? LIMIT 1", [set_id]).fetchall():
        raise AuditError(f"nothing to export: sample set {set_id} has no replays",
                         f"run `audit replay --sample {set_id}` first")


# --------------------------------------------------------------------------- routing plan


def _litellm_model(engine: str | None, model: str, options: dict[str, str], provider: str | None) -> dict[str, Any]:
    """``litellm_params`` for one deployment (never a secret: keys are named as ``os.environ/VAR``)."""
    if engine == "vllm":
        # The replay ran vLLM offline; in production it is `vllm serve`, whose address only the user knows.
        return {"model": f"hosted_vllm/{model}", "api_base": VLLM_API_BASE_PLACEHOLDER}
    if engine == "fake":
        # The test engine: not a model anyone can serve; kept visible rather than dressed up as one.
        return {"model": f"fake/{model}"}
    params: dict[str, Any] = {}
    if options.get("base_url"):
        # Replayed through an OpenAI-compatible server (a gateway, vllm serve, Ollama): route there too.
        params = {"model": f"openai/{model}", "api_base": options["base_url"]}
    else:
        prefix = options.get("provider") or provider
        prefix = _LITELLM_PROVIDER.get(prefix, prefix) if prefix else None
        params = {"model": f"{prefix}/{model}" if prefix else model}
    if options.get("api_key_env"):
        params["api_key"] = f"os.environ/{options['api_key_env']}"
    return params


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(float(value), digits)


def _money(value: float | None) -> float | None:
    return _round(value, 2)


def _templates(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    # The provider a template's production model was called through: the most frequent in the ledger.
    return fetch_dicts(con, """
        WITH providers AS (
            SELECT rt.template_id, coalesce(r.provider, audit_provider_for(r.model)) AS provider, count(*) AS calls
            FROM request_templates rt
            JOIN requests r USING (request_id)
            JOIN templates t ON t.template_id = rt.template_id AND r.model = t.main_model
            GROUP BY ALL)
        SELECT t.template_id, t.name, t.task_type, t.tier, t.main_model, t.spend_monthly_usd,
               coalesce((SELECT p.provider FROM providers p WHERE p.template_id = t.template_id AND p.provider IS NOT NULL
                         ORDER BY p.calls DESC, p.provider LIMIT 1), audit_provider_for(t.main_model)) AS provider
        FROM templates t
        ORDER BY t.spend_monthly_usd DESC NULLS LAST, t.template_id""")


def _decisions(con: duckdb.DuckDBPyConnection, set_id: str) -> list[dict[str, Any]]:
    return fetch_dicts(con, """
        WITH latest_run AS (
            SELECT candidate, arg_max(engine, run_id) AS engine, arg_max(model, run_id) AS model,
                   arg_max(spec, run_id) AS spec
            FROM replay_runs WHERE sample_set_id = ? GROUP BY candidate),
        replay_cost AS (
            SELECT s.template_id, p.candidate, count(*) AS replayed,
                   count(*) FILTER (WHERE p.status = 'ok') AS answered,
                   -- NULL while any answer is unpriced (a gpu-hour run not yet finished): never a partial mean.
                   CASE WHEN count(*) FILTER (WHERE p.status = 'ok' AND p.cost_usd IS NULL) = 0
                        THEN avg(p.cost_usd) FILTER (WHERE p.status = 'ok') END AS mean_cost_usd
            FROM replays p JOIN samples s ON s.sample_set_id = p.sample_set_id AND s.request_id = p.request_id
            WHERE p.sample_set_id = ?
            GROUP BY ALL)
        SELECT d.template_id, d.candidate, d.evidence, d.judged, d.passed, d.pass_rate, d.ci_low, d.ci_high,
               d.threshold, d.decision, run.engine, run.model, run.spec,
               c.replayed, c.answered, c.mean_cost_usd
        FROM decisions d
        LEFT JOIN latest_run run ON run.candidate = d.candidate
        LEFT JOIN replay_cost c ON c.template_id = d.template_id AND c.candidate = d.candidate
        WHERE d.sample_set_id = ?
        ORDER BY d.template_id, d.candidate""", [set_id, set_id, set_id])


def _serving_findings(con: duckdb.DuckDBPyConnection) -> dict[str, list[dict[str, Any]]]:
    rows = fetch_dicts(con, f"""
        SELECT template_id, kind, model, action, requests_affected_monthly,
               savings_low_monthly_usd, savings_high_monthly_usd,
               stacked_savings_low_monthly_usd, stacked_savings_high_monthly_usd
        FROM findings
        WHERE status = 'found' AND template_id IS NOT NULL
          AND kind IN ({', '.join('?' for _ in SERVING_FINDING_KINDS)})
        ORDER BY template_id, kind, model NULLS LAST, finding_id""", list(SERVING_FINDING_KINDS))
    by_template: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_template.setdefault(row["template_id"], []).append({
            "kind": row["kind"],
            "model": row["model"],
            "action": row["action"],
            "requests_monthly": _round(row["requests_affected_monthly"], 1),
            # Alone: what this step saves by itself. Stacked: after the earlier steps took their share.
            "savings_monthly_usd": {"low": _money(row["savings_low_monthly_usd"]),
                                    "high": _money(row["savings_high_monthly_usd"])},
            "stacked_savings_monthly_usd": {"low": _money(row["stacked_savings_low_monthly_usd"]),
                                            "high": _money(row["stacked_savings_high_monthly_usd"])},
        })
    return by_template


def _evidence_order(decision: dict[str, Any]) -> tuple:
    """For a template that keeps its model: the best-tested candidate is the one shown."""
    ci_low, rate = decision["ci_low"], decision["pass_rate"]
    return (-(ci_low if ci_low is not None else -1.0), -(rate if rate is not None else -1.0), decision["candidate"])


def _candidate_options(decision: dict[str, Any]) -> dict[str, str]:
    from audit.backends import candidate_from_spec

    if not decision["spec"]:
        return {}
    return candidate_from_spec(decision["candidate"], decision["spec"]).options


def routing_plan(con: duckdb.DuckDBPyConnection, *, sample_set_id: str | None = None) -> dict[str, Any]:
    """The routing plan as a dict (``model_list``, ``router_settings``, ``llm_spend_audit``), sorted."""
    set_id = resolve_sample_set(con, sample_set_id)
    _require_replays(con, set_id)
    templates = _templates(con)
    decisions_by_template: dict[str, list[dict[str, Any]]] = {}
    for decision in _decisions(con, set_id):
        decisions_by_template.setdefault(decision["template_id"], []).append(decision)
    costs = trial_costs(con, set_id)
    findings = _serving_findings(con)

    production = {t["main_model"]: _litellm_model(None, t["main_model"], {}, t["provider"])
                  for t in templates if t["main_model"]}
    deployments: dict[str, dict[str, Any]] = {name: params for name, params in production.items()}
    aliases: dict[str, str] = {}
    entries = []
    for template in templates:
        tried = decisions_by_template.get(template["template_id"], [])
        chosen = cheapest_candidate([d for d in tried if d["decision"] == "switch"], costs)
        shown = chosen or (min(tried, key=_evidence_order) if tried else None)
        recommended = template["main_model"]
        if chosen is not None:
            params = _litellm_model(chosen["engine"], chosen["model"] or chosen["candidate"],
                                    _candidate_options(chosen), None)
            recommended = chosen["candidate"]
            if recommended in production and production[recommended] != params:
                recommended = f"candidate-{chosen['candidate']}"
            deployments[recommended] = params
        if recommended is not None:
            aliases[ALIAS_PREFIX + template["template_id"]] = recommended
        entries.append({
            "template_id": template["template_id"],
            "route_as": ALIAS_PREFIX + template["template_id"] if recommended is not None else None,
            "name": template["name"],
            "task_type": template["task_type"],
            "tier": template["tier"],
            "current_model": template["main_model"],
            "recommended_model": recommended,
            "switch_to_candidate": chosen["candidate"] if chosen else None,
            "decision": shown["decision"] if shown else NOT_JUDGED,
            "evidence_candidate": shown["candidate"] if shown else None,
            "evidence": shown["evidence"] if shown else None,
            "pass_rate": _round(shown["pass_rate"], 4) if shown else None,
            "interval_95": [_round(shown["ci_low"], 4), _round(shown["ci_high"], 4)] if shown else None,
            "n": shown["judged"] if shown else 0,
            "passed": shown["passed"] if shown else None,
            "threshold": _round(shown["threshold"], 4) if shown else None,
            "spend_monthly_usd": _money(template["spend_monthly_usd"]),
            "candidates": [{
                "candidate": d["candidate"],
                "model": d["model"],
                "engine": d["engine"],
                "decision": d["decision"],
                "evidence": d["evidence"],
                "pass_rate": _round(d["pass_rate"], 4),
                "interval_95": [_round(d["ci_low"], 4), _round(d["ci_high"], 4)],
                "n": d["judged"],
                "passed": d["passed"],
                "threshold": _round(d["threshold"], 4),
                "replayed": d["replayed"] or 0,
                "mean_replay_cost_usd": _round(d["mean_cost_usd"], 6),
            } for d in tried],
            "serving_recommendations": findings.get(template["template_id"], []),
        })

    switched = sum(1 for e in entries if e["switch_to_candidate"])
    judged = sum(1 for e in entries if e["decision"] != NOT_JUDGED)
    return {
        "model_list": [{"model_name": name, "litellm_params": deployments[name]} for name in sorted(deployments)],
        "router_settings": {
            "routing_strategy": "simple-shuffle",
            "model_group_alias": dict(sorted(aliases.items())),
        },
        "llm_spend_audit": {
            "sample_set_id": set_id,
            "rule": ("a template routes to a candidate only when the candidate's decision is 'switch' and its answers "
                     "cost less than the originals on the same requests; among several, the lowest cost ratio, then "
                     "the higher interval lower bound; every other template keeps its current model"),
            "totals": {"templates": len(entries), "judged": judged, "switched": switched,
                       "kept": len(entries) - switched},
            "templates": entries,
        },
    }


def _yaml_text(plan: dict[str, Any], set_id: str) -> str:
    import yaml  # PyYAML, installed with `datasets`

    header = [
        f"{ROUTING_HEADER} (sample set {set_id}); written by `audit export-routing` (rerunning it replaces this file).",
        "# A LiteLLM proxy config: `litellm --config routing.yaml`. Callers send model: tmpl-<template_id>;",
        "# router_settings.model_group_alias maps it to the model that template should use.",
        f"# Fill every api_base that reads {VLLM_API_BASE_PLACEHOLDER} with your vLLM server's address.",
        "# LiteLLM ignores the llm_spend_audit section: the evidence behind each route.",
    ]
    body = yaml.safe_dump(plan, sort_keys=False, default_flow_style=False, allow_unicode=True, width=120)
    return "\n".join(header) + "\n" + body


def write_routing_plan(con: duckdb.DuckDBPyConnection, out: Path = DEFAULT_ROUTING_PATH, *,
                       sample_set_id: str | None = None) -> dict[str, Any]:
    """Write the routing plan (YAML) to ``out``; return what it holds in numbers."""
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"{out} is a folder", "pass a file path, e.g. --out reports/routing.yaml")
    if out.exists():
        with out.open(encoding="utf-8", errors="replace") as existing:
            first_line = existing.readline()
        if not first_line.startswith(ROUTING_HEADER):
            raise ConfigError(f"{out} exists and was not written by `audit export-routing`",
                              "pass another --out, or move that file away")
    plan = routing_plan(con, sample_set_id=sample_set_id)
    set_id = plan["llm_spend_audit"]["sample_set_id"]
    text = _yaml_text(plan, set_id)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed: a gateway watching the file never reads half of it.
    partial = out.with_name(f".{out.name}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, out)
    totals = plan["llm_spend_audit"]["totals"]
    return {"path": str(out), "sample_set_id": set_id, **totals,
            "models": [m["model_name"] for m in plan["model_list"]],
            "routes": plan["router_settings"]["model_group_alias"]}


# --------------------------------------------------------------------------- distillation set


def dataset_rows(con: duckdb.DuckDBPyConnection, set_id: str) -> list[dict[str, Any]]:
    """One row per sampled request × candidate replayed, in template, draw and candidate order."""
    from audit.backends import replay_messages

    rows = fetch_dicts(con, """
        SELECT p.request_id, s.template_id, t.name AS template_name, t.task_type, r.messages,
               r.model_logged AS production_model, r.response_text AS production_answer,
               p.candidate, run.model AS candidate_model, p.status AS replay_status,
               p.response_text AS candidate_answer, v.passed, v.reason AS verdict_reason,
               s.traffic_weight AS weight
        FROM replays p
        JOIN samples s ON s.sample_set_id = p.sample_set_id AND s.request_id = p.request_id
        JOIN requests r ON r.request_id = p.request_id
        LEFT JOIN templates t ON t.template_id = s.template_id
        LEFT JOIN replay_runs run ON run.run_id = p.run_id
        LEFT JOIN verdicts v ON v.sample_set_id = p.sample_set_id AND v.request_id = p.request_id
             AND v.candidate = p.candidate AND v.source = 'final' AND v.metric = 'final'
        WHERE p.sample_set_id = ?
        ORDER BY s.template_id, s.draw_rank, p.request_id, p.candidate""", [set_id])
    for row in rows:
        # As the candidates were sent it: plain {role, content} text (the sample admits text conversations only).
        row["messages"] = replay_messages(row["messages"])
    return rows


def _features(datasets: Any) -> Any:
    # Explicit, so a column that happens to be all NULL (no verdicts yet) still has its type.
    Value = datasets.Value
    text = Value("string")
    return datasets.Features({
        "request_id": text, "template_id": text, "template_name": text, "task_type": text,
        "messages": datasets.List({"role": text, "content": text}),
        "production_model": text, "production_answer": text,
        "candidate": text, "candidate_model": text, "replay_status": text, "candidate_answer": text,
        "passed": Value("bool"), "verdict_reason": text, "weight": Value("float64"),
    })


def _check_target(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir} is a file, not a folder", "pass a new or empty folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / DATASET_MARKER).is_file():
        raise ConfigError(f"{out_dir} is not empty and was not written by `audit export-dataset`",
                          "pass a new or empty folder")


def export_dataset(con: duckdb.DuckDBPyConnection, out_dir: Path, *, sample_set_id: str | None = None) -> dict[str, Any]:
    """Save the sampled conversations with production and candidate answers and verdicts; return counts and paths."""
    out_dir = Path(out_dir)
    _check_target(out_dir)
    set_id = resolve_sample_set(con, sample_set_id)
    _require_replays(con, set_id)
    rows = dataset_rows(con, set_id)
    datasets = offline_datasets()

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        dataset = datasets.Dataset.from_list(rows, features=_features(datasets))
        dataset.save_to_disk(str(staging / "hf"))
        dataset.to_parquet(str(staging / "distill.parquet"))
        per_candidate: dict[str, int] = {}
        for row in rows:
            per_candidate[row["candidate"]] = per_candidate.get(row["candidate"], 0) + 1
        summary = {
            "sample_set_id": set_id,
            "rows": len(rows),
            "requests": len({r["request_id"] for r in rows}),
            "templates": len({r["template_id"] for r in rows}),
            "candidates": dict(sorted(per_candidate.items())),
            "answered": sum(1 for r in rows if r["replay_status"] == "ok"),
            "judged": sum(1 for r in rows if r["passed"] is not None),
            "passed": sum(1 for r in rows if r["passed"]),
        }
        (staging / DATASET_MARKER).write_text(
            json.dumps({"written_by": "audit export-dataset", **summary}, indent=2) + "\n", encoding="utf-8")
        # Swap the finished export in; the previous one (ours, checked above) goes only once this one exists.
        previous = None
        if out_dir.exists():
            previous = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.parent))
            os.replace(out_dir, previous / "export")
        os.replace(staging, out_dir)
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return {"out_dir": str(out_dir), "hf_path": str(out_dir / "hf"),
            "parquet_path": str(out_dir / "distill.parquet"), **summary}
