"""`audit judge`: checks → LLM judge → final verdicts → decisions, on a real DuckDB.

Replays come from the fake engine (instant); the LLM judge here is a scripted
engine that reads the judge prompt like a model would, so the bookkeeping
(both orders, ties, budget, resume) is tested exactly. The real judge through
vLLM is in tests/test_judge_vllm.py.
"""

from __future__ import annotations

import json
import re

import pytest

from audit import db as audit_db
from audit.backends import EngineInfo, ReplayResult, parse_candidate
from audit.errors import ConfigError, InputError
from audit.judge import judge
from audit.judge.calibrate import agreement, calibrate, load_labelled_pairs
from audit.judge.decisions import decide, wilson_interval
from audit.judge.llm_judge import combine_orders, parse_verdict, unblind
from audit.pricing import PriceBook
from audit.replay import plan_replay, replay
from conftest import REALDATA, rows, run_audit

FAKE = "f=fake:echo?input_price=1&output_price=2"
_ANSWER = re.compile(r"<answer_(A|B)>\n(.*?)\n</answer_\1>", re.S)


@pytest.fixture(scope="module")
def embedder():
    from audit.judge.embed import default_embedder

    return default_embedder()


def replayed(path, per_template: int = 2):
    con = audit_db.connect(path)
    plan = plan_replay(con, [parse_candidate(FAKE)], book=PriceBook(), per_template=per_template)
    replay(con, plan)
    return con


class ScriptedJudge:
    """Answers judge prompts by a rule over the two answers shown (``policy(a, b) -> 'A' | 'B' | 'tie'``)."""

    def __init__(self, policy) -> None:
        self.policy = policy
        self.calls = 0
        self.info = EngineInfo("fake", "scripted-judge", "none", "test", None)

    def prepare(self, item):
        return item

    def run(self, items, on_result) -> None:
        for item in items:
            self.calls += 1
            answers = dict(_ANSWER.findall(item.messages[-1]["content"]))
            verdict = self.policy(answers["A"], answers["B"])
            on_result(ReplayResult(item.request_id, "ok", response_text=f"Verdict: {verdict}\nReason: scripted rule.",
                                   prompt_tokens=len(item.messages[-1]["content"].split()), output_tokens=6))

    def close(self) -> None:
        pass


def candidate_answers(con) -> set[str]:
    return {r[0] for r in con.execute("SELECT response_text FROM replays WHERE status = 'ok'").fetchall()}


# --------------------------------------------------------------------------- statistics


def test_wilson_interval_matches_published_values():
    low, high = wilson_interval(3, 3)
    assert (round(low, 4), high) == (0.4385, 1.0)          # never a confident switch from 3 samples
    low, high = wilson_interval(95, 100)
    assert (round(low, 4), round(high, 4)) == (0.8882, 0.9785)
    low, high = wilson_interval(0, 10)
    assert (low, round(high, 4)) == (0.0, 0.2775)
    assert wilson_interval(0, 0) == (None, None)


def test_decision_rule():
    assert decide(0.91, 0.99, 0.90) == "switch"
    assert decide(0.70, 0.89, 0.90) == "keep"
    assert decide(0.4385, 1.0, 0.90) == "insufficient evidence"
    assert decide(None, None, 0.90) == "insufficient evidence"


def test_parse_and_unblind_verdicts():
    assert parse_verdict("Verdict: B\nReason: B is correct.") == ("B", "B is correct.")
    assert parse_verdict("**Verdict:** tie\nReason: same") == ("tie", "same")
    assert parse_verdict("A\nBecause it is better")[0] == "A"
    assert parse_verdict("verdict - answer a. reason: shorter")[0] == "A"
    assert parse_verdict("I cannot decide which is better.")[0] is None
    assert parse_verdict("The answer A is better.")[0] == "A"                 # SmolLM2's way of saying it
    assert parse_verdict("The answer that is better is answer B, which is correct.")[0] == "B"
    assert parse_verdict("The answer that is more likely to be the correct answer.")[0] is None
    assert parse_verdict("") == (None, None)
    assert unblind("A", "A") == "original" and unblind("A", "B") == "candidate" and unblind("tie", "A") == "tie"
    assert combine_orders("candidate", "candidate")[:2] == (1.0, True)
    assert combine_orders("original", "original")[:2] == (0.0, False)
    assert combine_orders("tie", "tie")[:2] == (0.5, True)
    score, passed, reason = combine_orders("original", "candidate")     # position bias: no evidence
    assert (score, passed) == (None, None) and "disagreement" in reason


# --------------------------------------------------------------------------- the stage


def test_checks_only_writes_verdicts_final_and_decisions(sampled_db, embedder):
    con = replayed(sampled_db)
    summary = judge(con, embedder=embedder)
    ok = con.execute("SELECT count(*) FROM replays WHERE status = 'ok'").fetchall()[0][0]
    assert summary["answers_checked"] == ok > 0
    # Every ok answer has check rows and exactly one final verdict (or none if nothing could judge it).
    finals = rows(con, "SELECT * FROM verdicts WHERE source = 'final'")
    assert len(finals) + summary["replays_not_judged"] == con.execute("SELECT count(*) FROM replays").fetchall()[0][0]
    assert all(f["reason"].startswith(("check", "replay")) for f in finals)
    # Each decision is its final verdicts, counted again here.
    for d in rows(con, "SELECT * FROM decisions"):
        mine = con.execute("""SELECT count(*), count(*) FILTER (WHERE v.passed) FROM verdicts v
                              JOIN samples s ON s.sample_set_id = v.sample_set_id AND s.request_id = v.request_id
                              WHERE v.source = 'final' AND s.template_id = ? AND v.candidate = ?""",
                           [d["template_id"], d["candidate"]]).fetchall()[0]
        assert (d["judged"], d["passed"]) == mine
        assert (d["ci_low"], d["ci_high"]) == pytest.approx(wilson_interval(d["passed"], d["judged"]))
        assert d["decision"] == decide(d["ci_low"], d["ci_high"], 0.90)
        # Two replayed requests per template can never be enough to switch.
        assert d["decision"] != "switch"
    # Rerunning gives the same rows, never duplicates.
    before = rows(con, "SELECT request_id, candidate, source, metric, passed FROM verdicts ORDER BY ALL")
    judge(con, embedder=embedder)
    assert rows(con, "SELECT request_id, candidate, source, metric, passed FROM verdicts ORDER BY ALL") == before


def test_llm_judge_both_orders_resume_and_no_second_payment(sampled_db, embedder):
    con = replayed(sampled_db, per_template=1)
    answers = candidate_answers(con)
    prefers_candidate = ScriptedJudge(lambda a, b: "A" if a in answers else "B")
    summary = judge(con, judge_spec="strong=fake:judge?input_price=1&output_price=1", embedder=embedder,
                    engine_factory=lambda c: prefers_candidate)
    ok = con.execute("SELECT count(*) FROM replays WHERE status = 'ok'").fetchall()[0][0]
    assert prefers_candidate.calls == 2 * ok                  # every pair, in both orders
    calls = rows(con, "SELECT * FROM judge_calls")
    assert {c["original_position"] for c in calls} == {"A", "B"} and all(c["preferred"] == "candidate" for c in calls)
    assert summary["judge"]["cost_usd"] == pytest.approx(sum(c["cost_usd"] for c in calls))
    judged = rows(con, "SELECT * FROM verdicts WHERE source = 'judge'")
    assert len(judged) == ok and all(v["passed"] and v["score"] == 1.0 for v in judged)
    # The judge's conclusive verdict outranks the checks in the final verdict.
    assert all(f["passed"] and f["reason"].startswith("judge") for f in rows(con, "SELECT * FROM verdicts WHERE source = 'final'"))
    # Rerun: nothing pending, nothing paid again.
    again = ScriptedJudge(lambda a, b: "A")
    summary = judge(con, judge_spec="strong=fake:judge?input_price=1&output_price=1", embedder=embedder,
                    engine_factory=lambda c: again)
    assert again.calls == 0 and summary["judge"]["calls"] == 0 and summary["judge"]["already_done"] == 2 * ok
    assert len(rows(con, "SELECT * FROM judge_calls")) == 2 * ok


def test_position_biased_judge_gives_no_evidence(sampled_db, embedder):
    con = replayed(sampled_db, per_template=1)
    always_first = ScriptedJudge(lambda a, b: "A")
    judge(con, judge_spec="biased=fake:judge?input_price=0&output_price=0", embedder=embedder,
          engine_factory=lambda c: always_first)
    judged = rows(con, "SELECT * FROM verdicts WHERE source = 'judge'")
    assert judged and all(v["passed"] is None and "disagreement" in v["reason"] for v in judged)
    # So the checks decide every request.
    assert all(not f["reason"].startswith("judge") for f in rows(con, "SELECT * FROM verdicts WHERE source = 'final'"))


def test_paid_judge_refused_above_max_cost_before_any_call(sampled_db, embedder):
    con = replayed(sampled_db, per_template=1)
    engine = ScriptedJudge(lambda a, b: "tie")
    with pytest.raises(ConfigError, match="above --max-cost"):
        judge(con, judge_spec="pricey=fake:judge?input_price=100000&output_price=100000", embedder=embedder,
              engine_factory=lambda c: engine, max_cost_usd=0.5)
    assert engine.calls == 0 and rows(con, "SELECT * FROM judge_calls") == []
    assert rows(con, "SELECT * FROM verdicts") == []          # refused before any work, checks included


def test_human_verdicts_override_and_final_errors_fail(sampled_db, embedder):
    con = replayed(sampled_db, per_template=1)
    first = con.execute("SELECT request_id FROM replays WHERE status = 'ok' ORDER BY request_id LIMIT 1").fetchall()[0][0]
    con.execute("""INSERT INTO verdicts VALUES ('n500-s7', ?, 'f', 'human', 'human', 1.0, NULL, true, true,
                   'reviewer ann: both fine', now()::TIMESTAMP)""", [first])
    # A replay that could not fit the candidate's context is a failure of the candidate.
    second = con.execute("SELECT request_id FROM replays WHERE status = 'ok' ORDER BY request_id LIMIT 1 OFFSET 1").fetchall()[0][0]
    con.execute("""UPDATE replays SET status = 'error', error_kind = 'context_overflow', response_text = NULL
                   WHERE request_id = ?""", [second])
    judge(con, embedder=embedder)
    finals = {r["request_id"]: r for r in rows(con, "SELECT * FROM verdicts WHERE source = 'final'")}
    assert finals[first]["passed"] is True and finals[first]["reason"] == "human"
    assert finals[second]["passed"] is False and finals[second]["reason"] == "replay: replay error context_overflow"


def test_switch_decision_and_movable_spend(sampled_db, embedder):
    con = replayed(sampled_db, per_template=40)
    # Make every answer of the biggest template the production answer itself: the checks pass them all.
    top = con.execute("""SELECT s.template_id FROM samples s JOIN templates t USING (template_id)
                         GROUP BY ALL HAVING count(*) >= 40 ORDER BY max(t.spend_usd) DESC LIMIT 1""").fetchall()[0][0]
    con.execute("""UPDATE replays p SET response_text = r.response_text FROM requests r, samples s
                   WHERE r.request_id = p.request_id AND s.request_id = p.request_id AND s.sample_set_id = p.sample_set_id
                     AND s.template_id = ?""", [top])
    summary = judge(con, embedder=embedder)
    decision = next(d for d in summary["decisions"] if d["template_id"] == top)
    assert decision["judged"] == 40 and decision["passed"] == 40
    assert decision["ci_low"] == pytest.approx(0.9124, abs=1e-4) and decision["decision"] == "switch"
    movable = rows(con, "SELECT * FROM movable_spend")[0]
    total = con.execute("""SELECT sum(c.cost_usd / r.sampled_fraction) FROM request_costs c JOIN requests r USING (request_id)
                           WHERE c.priced""").fetchall()[0][0]
    switched = con.execute("SELECT sum(template_spend_usd) FROM decisions WHERE decision = 'switch'").fetchall()[0][0]
    assert movable["total_spend_usd"] == pytest.approx(total)
    assert movable["switch_share"] == pytest.approx(switched / total)
    assert movable["passing_share_low"] <= movable["passing_share"] <= movable["passing_share_high"]
    assert movable["passing_share"] >= movable["switch_share"] - 1e-9   # the switched template passes in full
    assert movable["passing_share_high"] <= movable["tried_spend_usd"] / total + 1e-9


def test_judge_cli_errors_are_one_line(tmp_path):
    db = tmp_path / "empty.duckdb"
    result = run_audit("judge", "--db", str(db))
    assert result.returncode == 1 and "audit sample" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_judge_cli_json(sampled_db):
    replayed(sampled_db).close()
    result = run_audit("judge", "--db", str(sampled_db), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["decisions"] and {"decision", "ci_low", "ci_high", "top_failures"} <= set(summary["decisions"][0])
    assert "switch: the interval's lower bound" in result.stderr


# --------------------------------------------------------------------------- calibration


def test_agreement_figures():
    human = ["1", "1", "2", "2"]
    figures = agreement(human, ["1", "2", "2", "tie"])
    assert figures["accuracy"] == pytest.approx(2 / 3) and figures["tie_rate"] == 0.25
    # observed 2/4; expected (2·1 + 2·2) / 16 = 6/16 → kappa = (0.5 - 0.375) / 0.625
    assert figures["kappa"] == pytest.approx(0.2)
    assert agreement(human, human)["kappa"] == pytest.approx(1.0)


def test_calibration_file_errors(tmp_path):
    bad = tmp_path / "pairs.json"
    bad.write_text(json.dumps([{"input": "q", "output_1": "a", "output_2": "b", "label": 3}]))
    with pytest.raises(InputError, match="record 1 has label 3"):
        load_labelled_pairs(bad)
    bad.write_text("{not json")
    with pytest.raises(InputError, match="neither a JSON array nor JSON lines"):
        load_labelled_pairs(bad)
    with pytest.raises(InputError, match="cannot read"):
        load_labelled_pairs(tmp_path / "missing.json")


def test_calibrate_checks_and_a_judge_on_real_labels(tmp_path, embedder):
    path = REALDATA / "judge_calibration" / "LLMBar__Natural.json"
    if not path.exists():
        pytest.skip("shared real data not present")
    con = audit_db.connect(tmp_path / "a.duckdb")
    labels = [p["label"] for p in load_labelled_pairs(path)][:20]
    oracle = ScriptedJudge(lambda a, b: "A")      # position-biased: every pair a tie
    result = calibrate(con, path, judge_spec="j=fake:judge?input_price=0&output_price=0", limit=20, embedder=embedder,
                       engine_factory=lambda c: oracle)
    checks, biased = result["methods"]
    assert checks["pairs"] == biased["pairs"] == 20 and oracle.calls == 40
    assert biased["tie_rate"] == 1.0 and biased["accuracy"] is None and biased["kappa"] == pytest.approx(0.0)
    assert result["human_labels"] == {"output_1": labels.count("1"), "output_2": labels.count("2")}
    stored = rows(con, "SELECT * FROM judge_calibrations ORDER BY method")
    assert [r["method"] for r in stored] == ["checks", "fake:judge?input_price=0&output_price=0"]
    # A rerun pays for no judge call again.
    again = ScriptedJudge(lambda a, b: "B")
    calibrate(con, path, judge_spec="j=fake:judge?input_price=0&output_price=0", limit=20, embedder=embedder,
              engine_factory=lambda c: again)
    assert again.calls == 0
    assert len(rows(con, "SELECT * FROM judge_calibrations")) == 2      # replaced, not appended


def test_review_import_overrides_and_recomputes_decisions(sampled_db, embedder, tmp_path):
    from audit.review import export_review, import_review

    con = replayed(sampled_db, per_template=1)
    judge(con, embedder=embedder)
    assert all(r["evidence"].startswith(("check", "replay")) for r in rows(con, "SELECT * FROM decisions"))
    export = export_review(con, out=tmp_path / "review.html")
    items = rows(con, "SELECT item_id FROM review_items WHERE export_id = ?", [export["export_id"]])
    download = tmp_path / "verdicts.json"
    download.write_text(json.dumps({"export_id": export["export_id"], "reviewer": "ann",
                                    "verdicts": [{"item_id": i["item_id"], "choice": "both_fine",
                                                  "reviewed_at": "2026-12-04T10:00:00Z"} for i in items]}))
    summary = import_review(con, download)
    assert summary["decisions_recomputed"] == {"n500-s7": len(rows(con, "SELECT * FROM decisions"))}
    # Every reviewed answer is now decided by the human, and passes.
    finals = rows(con, "SELECT * FROM verdicts WHERE source = 'final'")
    reviewed = {r["request_id"] for r in rows(con, "SELECT request_id FROM reviews")}
    assert reviewed and all(f["reason"] == "human" and f["passed"] for f in finals if f["request_id"] in reviewed)
    assert all("human" in d["evidence"] for d in rows(con, "SELECT * FROM decisions"))
