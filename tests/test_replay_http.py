"""`audit replay` through the OpenAI-compatible HTTP engine, against a real server.

The server is vLLM's own OpenAI-compatible API server (what `vllm serve`
runs) with SmolLM2 on 127.0.0.1, started once for this module (~35 s). A
small proxy in front of it injects 429 (with Retry-After) and 500 answers,
slows answers down so a run can be killed mid-way, and counts the calls that
reached the model: those are what a provider would bill.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from audit import db as audit_db
from audit.backends import parse_candidate
from audit.backends.default_model import default_model_folder
from audit.errors import ConfigError
from audit.pricing import PriceBook
from audit.replay import plan_replay, replay
from conftest import rows, run_audit

pytestmark = pytest.mark.slow

SERVER_START_TIMEOUT = 240


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    """vLLM's OpenAI-compatible server on 127.0.0.1 serving SmolLM2 as 'smollm2'."""
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "vllm-server.log"
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "WARNING", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)     # the server runs its engine in its own process
    with open(log, "w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "vllm.entrypoints.launchers.api_server.entry", "--model", str(default_model_folder()),
             "--served-model-name", "smollm2", "--dtype", "float32", "--enforce-eager",
             "--kv-cache-memory-bytes", str(1 << 30), "--max-model-len", "2048", "--host", "127.0.0.1",
             "--port", str(port), "--uvicorn-log-level", "warning", "--disable-log-stats"],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    try:
        while True:
            if server.poll() is not None:
                pytest.fail(f"the vLLM server exited ({server.returncode}):\n{log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(base + "/v1/models", timeout=2).read()
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    pytest.fail(f"the vLLM server did not start in {SERVER_START_TIMEOUT} s:\n{log.read_text()[-3000:]}")
                time.sleep(1)
        yield base
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


class Proxy:
    """Forwards POST /v1/chat/completions upstream; injects failures; records every call."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.inject: list[tuple[int, dict[str, str]]] = []   # answers for the next calls, in order
        self.delay = 0.0
        self.calls: list[tuple[float, str, int]] = []        # (time, body digest, status)
        self.lock = threading.Lock()
        self.in_flight = 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                digest = hashlib.sha256(body).hexdigest()
                with proxy.lock:
                    injected = proxy.inject.pop(0) if proxy.inject else None
                if injected:
                    status, headers = injected
                    payload = json.dumps({"error": {"message": f"injected {status}"}}).encode()
                    self.send_response(status)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    proxy.record(digest, status)
                    return
                with proxy.lock:
                    proxy.in_flight += 1
                time.sleep(proxy.delay)
                request = urllib.request.Request(proxy.upstream + self.path, data=body, method="POST",
                                                 headers={"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(request, timeout=300) as answer:
                        status, payload = answer.status, answer.read()
                except urllib.error.HTTPError as error:
                    status, payload = error.code, error.read()
                finally:
                    with proxy.lock:
                        proxy.in_flight -= 1
                proxy.record(digest, status)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass                        # the client was killed: the call was still made (and billed)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def record(self, digest: str, status: int) -> None:
        with self.lock:
            self.calls.append((time.monotonic(), digest, status))

    def answered(self) -> int:
        with self.lock:
            return sum(1 for _, _, status in self.calls if status == 200)

    def settle(self, timeout: float = 120) -> None:
        """Wait until no call is on its way to the model."""
        deadline = time.monotonic() + timeout
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.1)

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def proxy(vllm_server):
    p = Proxy(vllm_server)
    yield p
    p.close()


def candidate(proxy: Proxy, extra: str = "") -> str:
    return (f"h=openai:smollm2?base_url={proxy.url}&pricing=gpu&max_tokens=16&concurrency=2&backoff_base=0.2"
            f"&context_window=2048{extra}")


def test_replay_through_a_real_server_retries_429_and_500(sampled_db, proxy):
    con = audit_db.connect(sampled_db)
    proxy.inject = [(429, {"Retry-After": "1"}), (500, {})]
    plan = plan_replay(con, [parse_candidate(candidate(proxy))], book=PriceBook(), per_template=1)
    n = len(plan.candidates[0].items)
    summary = replay(con, plan)
    run = summary["candidates"][0]["run"]
    assert run["status"] == "finished" and run["requests_ok"] == n and run["requests_error"] == 0
    stored = rows(con, "SELECT * FROM replays")
    assert len(stored) == n and all(r["response_text"] and r["latency_ms"] > 0 for r in stored)
    assert sum(r["attempts"] for r in stored) == n + 2 and sorted(r["attempts"] for r in stored)[-2:] == [2, 2]
    assert all(1 <= r["output_tokens"] <= 16 for r in stored)
    # Retry-After: the request that got the 429 was not sent again for at least one second.
    first_time, digest, status = proxy.calls[0]
    assert status == 429
    retried = [t for t, d, s in proxy.calls[1:] if d == digest]
    assert retried and retried[0] - first_time >= 1.0
    assert proxy.answered() == n                  # one billed call per request
    assert run["device"] == proxy.url.rsplit("/v1", 1)[0] and run["tokens_per_second"] > 0


def test_server_side_context_overflow_is_a_stored_error(sampled_db, proxy):
    # Without context_window the engine sends everything; vLLM's 400 for a prompt longer than its
    # 2,048-token window is stored as context_overflow, and the run goes on.
    con = audit_db.connect(sampled_db)
    spec = candidate(proxy).replace("&context_window=2048", "")
    summary = replay(con, plan_replay(con, [parse_candidate(spec)], book=PriceBook(), per_template=1))
    kinds = summary["candidates"][0]["run"]["error_kinds"]
    assert kinds.get("context_overflow", 0) >= 1, kinds
    assert summary["candidates"][0]["run"]["requests_ok"] >= 1
    message = rows(con, "SELECT error_message FROM replays WHERE error_kind = 'context_overflow' LIMIT 1")[0]["error_message"]
    assert "HTTP 400" in message


def test_unknown_model_stops_the_run_with_one_line(sampled_db, proxy):
    con = audit_db.connect(sampled_db)
    spec = candidate(proxy).replace("openai:smollm2", "openai:no-such-model")
    with pytest.raises(ConfigError, match="answered 404"):
        replay(con, plan_replay(con, [parse_candidate(spec)], book=PriceBook(), per_template=1))
    assert rows(con, "SELECT status FROM replay_runs")[0]["status"] == "failed"


def test_resume_after_kill_pays_for_no_call_twice(sampled_db, proxy):
    proxy.delay = 0.7                           # slow answers: the kill lands mid-run
    con = audit_db.connect(sampled_db)
    total = con.execute("SELECT count(*) FROM samples WHERE draw_rank <= 3").fetchall()[0][0]
    con.close()
    child = subprocess.Popen([sys.executable, "-m", "audit", "replay", "--db", str(sampled_db), "-c", candidate(proxy),
                              "--per-template", "3"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    deadline = time.monotonic() + 120
    while proxy.answered() < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    proxy.settle()                               # calls in flight at the kill still reach the model
    billed_before = proxy.answered()
    con = audit_db.connect(sampled_db)
    stored_first = {r["request_id"]: r["finished_at"] for r in rows(con, "SELECT request_id, finished_at FROM replays")}
    con.close()
    assert 0 < len(stored_first) < total

    proxy.delay = 0.0
    resumed = run_audit("replay", "--db", str(sampled_db), "-c", candidate(proxy), "--per-template", "3")
    assert resumed.returncode == 0, resumed.stderr
    con = audit_db.connect(sampled_db)
    final = {r["request_id"]: r for r in rows(con, "SELECT * FROM replays")}
    assert len(final) == total and all(r["status"] == "ok" for r in final.values())
    for request_id, finished_at in stored_first.items():
        assert final[request_id]["finished_at"] == finished_at           # kept, not sent again
    # Calls that reached the model: one per request, plus at most the two in flight when killed.
    billed = proxy.answered()
    assert billed - billed_before == total - len(stored_first)
    assert total <= billed <= total + 2
    assert [r["status"] for r in rows(con, "SELECT status FROM replay_runs ORDER BY run_id")] == ["interrupted", "finished"]


def test_api_key_comes_from_the_environment_and_is_never_stored(sampled_db, proxy, monkeypatch):
    monkeypatch.setenv("AUDIT_TEST_KEY", "sk-test-do-not-store-4242")
    seen: list[str] = []
    original = proxy.server.RequestHandlerClass.do_POST

    def capture(handler):
        seen.append(handler.headers.get("Authorization", ""))
        original(handler)

    monkeypatch.setattr(proxy.server.RequestHandlerClass, "do_POST", capture)
    con = audit_db.connect(sampled_db)
    replay(con, plan_replay(con, [parse_candidate(candidate(proxy, "&api_key_env=AUDIT_TEST_KEY"))], book=PriceBook(),
                            per_template=1))
    assert seen and all(h == "Bearer sk-test-do-not-store-4242" for h in seen)
    con.close()
    assert b"sk-test-do-not-store" not in Path(sampled_db).read_bytes()


def test_llm_judge_through_the_real_server_is_paid_once(sampled_db, proxy):
    """`audit judge --judge` through the HTTP engine: both orders, priced per token, a rerun sends nothing."""
    from audit.judge import judge

    con = audit_db.connect(sampled_db)
    replay(con, plan_replay(con, [parse_candidate("f=fake:echo?input_price=1&output_price=2")], book=PriceBook(),
                            per_template=1))
    # Two pairs keep it to seconds; the judge is priced like a hosted model.
    con.execute("DELETE FROM replays WHERE request_id NOT IN (SELECT request_id FROM replays ORDER BY request_id LIMIT 2)")
    spec = (f"j=openai:smollm2?base_url={proxy.url}&input_price=2.5&output_price=10&max_tokens=32"
            "&context_window=2048&concurrency=2")
    summary = judge(con, judge_spec=spec, max_cost_usd=1.0)
    calls = rows(con, "SELECT * FROM judge_calls ORDER BY request_id, original_position")
    assert len(calls) == 4 and summary["judge"]["calls"] == 4 and proxy.answered() == 4
    ok = [c for c in calls if c["status"] == "ok"]
    for c in ok:
        assert c["cost_usd"] == pytest.approx((c["prompt_tokens"] * 2.5 + c["output_tokens"] * 10) / 1e6)
    assert summary["judge"]["cost_usd"] == pytest.approx(sum(c["cost_usd"] for c in ok))
    again = judge(con, judge_spec=spec, max_cost_usd=1.0)
    assert again["judge"]["calls"] == 0 and proxy.answered() == 4      # nothing paid twice
