"""`audit export-routing` and `audit export-dataset` on the sampled database, replayed through the fake engine.

Verdicts and decisions are written by ``insert_final_verdicts_and_decisions``
below, which picks each template's decision, so that the tests can say which
templates switch; the exports only read those tables. (`audit judge` writing
them from real checks is tested in tests/test_judge.py and end to end in
tests/test_run.py.)
"""

from __future__ import annotations

import json

import polars as pl
import pytest
import yaml

from audit.judge.decisions import wilson_interval
from audit import db as audit_db
from audit.backends import parse_candidate
from audit.errors import AuditError, ConfigError
from audit.exports import (
    DATASET_MARKER,
    ROUTING_HEADER,
    VLLM_API_BASE_PLACEHOLDER,
    export_dataset,
    routing_plan,
    write_routing_plan,
)
from audit.pricing import PriceBook
from audit.replay import plan_replay, replay
from conftest import rows, run_audit

SET = "n500-s7"
# Two fake candidates at different prices: 'cheap' costs less per answer than 'pricey'.
PRICEY = "pricey=fake:echo?input_price=2&output_price=4"
CHEAP = "cheap=fake:echo-small?input_price=0.5&output_price=1"
PER_TEMPLATE = 3


def replay_fake(con, *candidates: str, per_template: int = PER_TEMPLATE) -> None:
    plan = plan_replay(con, [parse_candidate(c) for c in candidates], book=PriceBook(), per_template=per_template)
    replay(con, plan, max_cost_usd=10.0)


def templates_by_spend(con) -> list[str]:
    return [r[0] for r in con.execute(
        "SELECT template_id FROM templates ORDER BY spend_monthly_usd DESC NULLS LAST, template_id").fetchall()]


def insert_final_verdicts_and_decisions(con, decided: dict[tuple[str, str], str]) -> None:
    """A stand-in for `audit judge`: one final verdict per replayed answer, and a decision per
    (template, candidate) in ``decided`` with the pass counts of those verdicts.

    An answer passes unless its request id ends in '0'..'3' (a fixed, arbitrary split)."""
    con.execute("""
        INSERT INTO verdicts
        SELECT p.sample_set_id, p.request_id, p.candidate, 'final', 'final', NULL, NULL,
               NOT regexp_matches(p.request_id, '[0-3]$'), true,
               CASE WHEN regexp_matches(p.request_id, '[0-3]$') THEN 'answer misses the requested fact ' || p.request_id
                    ELSE 'as good as the original' END,
               TIMESTAMP '2025-01-01'
        FROM replays p WHERE p.sample_set_id = ?""", [SET])
    for (template_id, candidate), decision in decided.items():
        judged, passed = con.execute("""
            SELECT count(*), count(*) FILTER (WHERE v.passed)
            FROM verdicts v JOIN samples s ON s.sample_set_id = v.sample_set_id AND s.request_id = v.request_id
            WHERE v.sample_set_id = ? AND s.template_id = ? AND v.candidate = ? AND v.source = 'final'""",
            [SET, template_id, candidate]).fetchall()[0]
        low, high = wilson_interval(passed, judged)
        con.execute("INSERT INTO decisions VALUES (?, ?, ?, 'checks', ?, ?, ?, ?, ?, 0.9, ?, NULL, '[]', TIMESTAMP '2025-01-01')",
                    [SET, template_id, candidate, judged, passed, passed / judged, low, high, decision])


@pytest.fixture
def judged_con(sampled_db):
    """Both candidates replayed; the top template: both switch; the second: 'pricey' keeps; the rest undecided."""
    con = audit_db.connect(sampled_db)
    replay_fake(con, PRICEY, CHEAP)
    top, second = templates_by_spend(con)[:2]
    insert_final_verdicts_and_decisions(con, {
        (top, "pricey"): "switch", (top, "cheap"): "switch",
        (second, "pricey"): "keep", (second, "cheap"): "insufficient evidence",
    })
    yield con
    con.close()


# --------------------------------------------------------------------------- routing plan


def test_routing_plan_is_a_litellm_config_and_switched_templates_route_to_their_candidate(judged_con, tmp_path):
    con = judged_con
    out = tmp_path / "reports" / "routing.yaml"
    summary = write_routing_plan(con, out)
    text = out.read_text()
    assert text.startswith(ROUTING_HEADER)
    config = yaml.safe_load(text)

    # LiteLLM's shape: model_list entries with model_name and litellm_params.model; router_settings.
    assert set(config) == {"model_list", "router_settings", "llm_spend_audit"}
    names = [entry["model_name"] for entry in config["model_list"]]
    assert names == sorted(names) and len(names) == len(set(names))
    for entry in config["model_list"]:
        assert set(entry) == {"model_name", "litellm_params"} and isinstance(entry["litellm_params"]["model"], str)
    aliases = config["router_settings"]["model_group_alias"]
    assert config["router_settings"]["routing_strategy"] == "simple-shuffle"
    assert set(aliases.values()) <= set(names)

    templates = {t["template_id"]: t for t in rows(con, "SELECT * FROM templates")}
    assert set(aliases) == {f"tmpl-{tid}" for tid, t in templates.items() if t["main_model"]}
    top, second = templates_by_spend(con)[:2]
    # Both candidates switch on the top template: the cheaper one per answer wins.
    assert aliases[f"tmpl-{top}"] == "cheap"
    cheap_entry = next(e for e in config["model_list"] if e["model_name"] == "cheap")
    assert cheap_entry["litellm_params"] == {"model": "fake/echo-small"}
    # Every other template keeps its production model, called through its logged provider.
    for template_id, template in templates.items():
        if template_id != top:
            assert aliases[f"tmpl-{template_id}"] == template["main_model"]
    production = {e["model_name"]: e["litellm_params"] for e in config["model_list"]}
    assert production["gpt-4o"] == {"model": "openai/gpt-4o"}
    assert {t["main_model"] for t in templates.values()} <= set(production)

    # The evidence section, from the database rows.
    audit = config["llm_spend_audit"]
    assert audit["sample_set_id"] == SET
    assert audit["totals"] == {"templates": len(templates), "judged": 2, "switched": 1, "kept": len(templates) - 1}
    assert [t["template_id"] for t in audit["templates"]] == templates_by_spend(con)
    by_id = {t["template_id"]: t for t in audit["templates"]}
    decision = rows(con, "SELECT * FROM decisions WHERE template_id = ? AND candidate = 'cheap'", [top])[0]
    entry = by_id[top]
    assert (entry["current_model"], entry["recommended_model"], entry["switch_to_candidate"]) == (
        templates[top]["main_model"], "cheap", "cheap")
    assert entry["decision"] == "switch" and entry["n"] == decision["judged"] and entry["passed"] == decision["passed"]
    assert entry["pass_rate"] == round(decision["pass_rate"], 4)
    assert entry["interval_95"] == [round(decision["ci_low"], 4), round(decision["ci_high"], 4)]
    assert entry["spend_monthly_usd"] == round(templates[top]["spend_monthly_usd"], 2)
    assert [c["candidate"] for c in entry["candidates"]] == ["cheap", "pricey"]
    costs = {c["candidate"]: c["mean_replay_cost_usd"] for c in entry["candidates"]}
    assert costs["cheap"] < costs["pricey"]
    # A template whose candidates did not switch keeps its model and says why.
    assert by_id[second]["recommended_model"] == templates[second]["main_model"]
    assert by_id[second]["switch_to_candidate"] is None
    assert {c["decision"] for c in by_id[second]["candidates"]} == {"keep", "insufficient evidence"}
    undecided = [t for t in audit["templates"] if t["template_id"] not in (top, second)]
    assert undecided and all(t["decision"] == "not judged" and t["candidates"] == [] for t in undecided)

    # Cache and batch recommendations: every 'found' finding of those kinds, with its $/month.
    findings = rows(con, """SELECT template_id, kind, savings_low_monthly_usd, savings_high_monthly_usd FROM findings
                            WHERE status = 'found' AND kind IN ('exact_cache', 'near_duplicate_cache', 'precompute',
                                  'batch_eligible', 'prompt_caching_unused')""")
    exported = [(t["template_id"], r["kind"], r["savings_monthly_usd"]["low"], r["savings_monthly_usd"]["high"])
                for t in audit["templates"] for r in t["serving_recommendations"]]
    assert findings and sorted(exported) == sorted(
        (f["template_id"], f["kind"], round(f["savings_low_monthly_usd"], 2), round(f["savings_high_monthly_usd"], 2))
        for f in findings)
    assert not any(r["kind"] in ("context_bloat", "overpowered_model")
                   for t in audit["templates"] for r in t["serving_recommendations"])

    assert summary["path"] == str(out) and summary["switched"] == 1 and summary["routes"] == aliases
    # Deterministic: the same database writes the same bytes; our own file is replaced.
    write_routing_plan(con, out)
    assert out.read_text() == text


def test_self_hosted_and_gateway_candidates_get_litellm_providers(judged_con):
    con = judged_con
    top = templates_by_spend(con)[0]
    # As if 'cheap' had been served by vLLM and 'pricey' through an OpenAI-compatible gateway.
    con.execute("UPDATE replay_runs SET engine = 'vllm', model = 'Qwen/Qwen2.5-1.5B-Instruct', "
                "spec = 'vllm:Qwen/Qwen2.5-1.5B-Instruct' WHERE candidate = 'cheap'")
    con.execute("UPDATE replay_runs SET engine = 'openai', model = 'claude-3-haiku', "
                "spec = 'openai:claude-3-haiku?api_key_env=GATEWAY_KEY&base_url=https://gw.example/v1' "
                "WHERE candidate = 'pricey'")
    deployments = {e["model_name"]: e["litellm_params"] for e in routing_plan(con)["model_list"]}
    assert deployments["cheap"] == {"model": "hosted_vllm/Qwen/Qwen2.5-1.5B-Instruct", "api_base": VLLM_API_BASE_PLACEHOLDER}
    # Only 'cheap' is routed to; with it gone from the top template, 'pricey' is next.
    con.execute("DELETE FROM decisions WHERE candidate = 'cheap' AND template_id = ?", [top])
    plan = routing_plan(con)
    deployments = {e["model_name"]: e["litellm_params"] for e in plan["model_list"]}
    assert "cheap" not in deployments
    assert deployments["pricey"] == {"model": "openai/claude-3-haiku", "api_base": "https://gw.example/v1",
                                     "api_key": "os.environ/GATEWAY_KEY"}
    assert plan["router_settings"]["model_group_alias"][f"tmpl-{top}"] == "pricey"


def test_a_candidate_named_like_a_production_model_does_not_merge_with_it(sampled_db):
    con = audit_db.connect(sampled_db)
    replay_fake(con, "gpt-4o=fake:echo?input_price=1&output_price=1", per_template=2)
    top = templates_by_spend(con)[0]
    insert_final_verdicts_and_decisions(con, {(top, "gpt-4o"): "switch"})
    plan = routing_plan(con)
    deployments = {e["model_name"]: e["litellm_params"] for e in plan["model_list"]}
    assert deployments["gpt-4o"] == {"model": "openai/gpt-4o"}
    assert deployments["candidate-gpt-4o"] == {"model": "fake/echo"}
    assert plan["router_settings"]["model_group_alias"][f"tmpl-{top}"] == "candidate-gpt-4o"


def test_without_decisions_every_template_keeps_its_model(sampled_db, tmp_path):
    con = audit_db.connect(sampled_db)
    replay_fake(con, CHEAP, per_template=1)
    summary = write_routing_plan(con, tmp_path / "routing.yaml")
    assert (summary["judged"], summary["switched"]) == (0, 0)
    config = yaml.safe_load((tmp_path / "routing.yaml").read_text())
    main_models = dict(con.execute("SELECT 'tmpl-' || template_id, main_model FROM templates").fetchall())
    assert config["router_settings"]["model_group_alias"] == main_models


def test_routing_plan_never_overwrites_a_strangers_file(judged_con, tmp_path):
    theirs = tmp_path / "routing.yaml"
    theirs.write_text("model_list: []  # hand-written\n")
    with pytest.raises(ConfigError, match="was not written by `audit export-routing`"):
        write_routing_plan(judged_con, theirs)
    assert theirs.read_text() == "model_list: []  # hand-written\n"
    with pytest.raises(ConfigError, match="is a folder"):
        write_routing_plan(judged_con, tmp_path)


# --------------------------------------------------------------------------- distillation set


def test_dataset_loads_back_with_the_database_texts(judged_con, tmp_path):
    import datasets

    con = judged_con
    out = tmp_path / "distill"
    summary = export_dataset(con, out)
    replayed = rows(con, "SELECT * FROM replays WHERE sample_set_id = ?", [SET])
    requests_replayed = {r["request_id"] for r in replayed}
    assert summary["rows"] == len(replayed) == len(requests_replayed) * 2
    assert summary["candidates"] == {"cheap": len(requests_replayed), "pricey": len(requests_replayed)}
    assert summary["judged"] == len(replayed)
    assert summary["passed"] == sum(1 for r in replayed if not r["request_id"][-1] in "0123")

    loaded = datasets.load_from_disk(str(out / "hf"))
    frame = pl.read_parquet(out / "distill.parquet")
    assert loaded.num_rows == frame.height == len(replayed)
    expected_columns = ["request_id", "template_id", "template_name", "task_type", "messages", "production_model",
                        "production_answer", "candidate", "candidate_model", "replay_status", "candidate_answer",
                        "passed", "verdict_reason", "weight"]
    assert loaded.column_names == expected_columns and frame.columns == expected_columns

    truth = {(r["request_id"], r["candidate"]): r for r in rows(con, """
        SELECT p.request_id, p.candidate, p.response_text AS candidate_answer, q.response_text AS production_answer,
               q.messages, q.model_logged, run.model AS candidate_model, v.passed, v.reason, s.traffic_weight, s.template_id
        FROM replays p JOIN requests q USING (request_id) JOIN replay_runs run USING (run_id)
        JOIN samples s ON s.sample_set_id = p.sample_set_id AND s.request_id = p.request_id
        JOIN verdicts v ON v.sample_set_id = p.sample_set_id AND v.request_id = p.request_id AND v.candidate = p.candidate
        WHERE p.sample_set_id = ?""", [SET])}
    for row in loaded:
        db_row = truth[(row["request_id"], row["candidate"])]
        assert row["production_answer"] == db_row["production_answer"]
        assert row["candidate_answer"] == db_row["candidate_answer"]
        assert row["messages"] == [{"role": m["role"], "content": m["content"]} for m in json.loads(db_row["messages"])]
        assert (row["production_model"], row["candidate_model"]) == (db_row["model_logged"], db_row["candidate_model"])
        assert (row["passed"], row["verdict_reason"]) == (db_row["passed"], db_row["reason"])
        assert row["weight"] == db_row["traffic_weight"] and row["template_id"] == db_row["template_id"]
    # The parquet holds the same rows, in the same order.
    assert frame.select("request_id", "candidate", "candidate_answer", "passed").rows() == [
        (r["request_id"], r["candidate"], r["candidate_answer"], r["passed"]) for r in loaded]
    assert frame["messages"].to_list() == loaded["messages"]


def test_dataset_without_verdicts_keeps_typed_empty_columns(sampled_db, tmp_path):
    con = audit_db.connect(sampled_db)
    replay_fake(con, CHEAP, per_template=1)
    summary = export_dataset(con, tmp_path / "d")
    assert summary["judged"] == 0 and summary["rows"] == summary["requests"]
    frame = pl.read_parquet(tmp_path / "d" / "distill.parquet")
    assert frame.schema["passed"] == pl.Boolean and frame["passed"].null_count() == frame.height


def test_dataset_folder_rules(judged_con, tmp_path):
    con = judged_con
    # A stranger's folder is never written into.
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty and was not written by `audit export-dataset`"):
        export_dataset(con, theirs)
    assert [p.name for p in theirs.iterdir()] == ["notes.txt"]
    # A file is not a folder.
    with pytest.raises(ConfigError, match="is a file"):
        export_dataset(con, theirs / "notes.txt")
    # An empty folder is fine; rerunning into our own folder replaces it as a whole.
    ours = tmp_path / "ours"
    ours.mkdir()
    first = export_dataset(con, ours)
    (ours / "stale.txt").write_text("from before")
    second = export_dataset(con, ours)
    assert first == second
    assert sorted(p.name for p in ours.iterdir()) == sorted([DATASET_MARKER, "hf", "distill.parquet"])
    assert json.loads((ours / DATASET_MARKER).read_text())["rows"] == second["rows"]
    # Nothing left beside it from the staging.
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_nothing_to_export_says_which_command_to_run(sampled_db, tmp_path):
    empty = audit_db.connect(tmp_path / "empty.duckdb")
    with pytest.raises(AuditError, match="no sample has been drawn") as caught:
        export_dataset(empty, tmp_path / "d")
    assert "audit sample" in caught.value.one_line()
    con = audit_db.connect(sampled_db)
    with pytest.raises(AuditError, match="has no replays") as caught:
        routing_plan(con)
    assert "audit replay" in caught.value.one_line()
    with pytest.raises(ConfigError, match="no sample set 'n9-s9'"):
        routing_plan(con, sample_set_id="n9-s9")


# --------------------------------------------------------------------------- the commands


def test_commands_print_paths_on_stdout_and_one_line_errors(sampled_db, tmp_path):
    con = audit_db.connect(sampled_db)
    replay_fake(con, CHEAP, per_template=1)
    con.close()

    out = tmp_path / "plan" / "routing.yaml"
    result = run_audit("export-routing", "--db", str(sampled_db), "--out", str(out), "--sample", SET)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out) and "no decisions yet" in result.stderr
    assert yaml.safe_load(out.read_text())["llm_spend_audit"]["sample_set_id"] == SET

    result = run_audit("export-dataset", str(tmp_path / "ds"), "--db", str(sampled_db), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["rows"] == pl.read_parquet(summary["parquet_path"]).height > 0

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    result = run_audit("export-dataset", str(tmp_path / "taken"), "--db", str(sampled_db))
    assert result.returncode == 1 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and "new or empty folder" in result.stderr

    bare = tmp_path / "bare.duckdb"
    audit_db.connect(bare).close()
    result = run_audit("export-routing", "--db", str(bare), "--out", str(tmp_path / "r.yaml"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "audit sample" in result.stderr
