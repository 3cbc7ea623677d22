"""The LLM judge through a real model: SmolLM2-135M-Instruct on vLLM (CPU here), the session's one engine.

SmolLM2 is far too small to be a trustworthy judge; this proves the real path
(prompt, chat template, batched generation, parsing, both orders, storage),
not its quality. Its measured agreement with humans is what `audit judge
calibrate` reports.
"""

from __future__ import annotations

import pytest

from audit import db as audit_db
from audit.backends import parse_candidate
from audit.judge import judge
from audit.pricing import PriceBook
from audit.replay import plan_replay, replay
from conftest import SharedEngine, rows

pytestmark = pytest.mark.slow


def test_real_judge_on_replayed_answers(sampled_db, smollm2_engine):
    con = audit_db.connect(sampled_db)
    plan = plan_replay(con, [parse_candidate("f=fake:echo?input_price=1&output_price=2")], book=PriceBook(), per_template=1)
    replay(con, plan)
    # Three pairs are enough to exercise the path in seconds on two cores.
    con.execute("""DELETE FROM replays WHERE request_id NOT IN (
                     SELECT request_id FROM replays p JOIN requests r USING (request_id)
                     ORDER BY length(r.messages) LIMIT 3)""")
    summary = judge(con, judge_spec="smol=vllm:smollm2?max_model_len=2048", engine_factory=lambda c: SharedEngine(smollm2_engine))
    calls = rows(con, "SELECT * FROM judge_calls ORDER BY request_id, original_position")
    assert len(calls) == 6 and summary["judge"]["calls"] == 6
    assert [c["original_position"] for c in calls] == ["A", "B"] * 3
    answered = [c for c in calls if c["status"] == "ok"]
    assert answered and all(c["response_text"].strip() and c["prompt_tokens"] > 0 for c in answered)
    assert all(c["preferred"] in ("original", "candidate", "tie", None) for c in calls)
    # A self-hosted judge costs its machine time at the GPU rate.
    assert summary["judge"]["cost_usd"] == pytest.approx(summary["judge"]["wall_seconds"] / 3600 * 3.0)
    # Whatever it said, every pair with both orders answered has one judge verdict row.
    both = {c["request_id"] for c in answered if sum(1 for d in answered if d["request_id"] == c["request_id"]) == 2}
    assert {v["request_id"] for v in rows(con, "SELECT * FROM verdicts WHERE source = 'judge'")} == both
