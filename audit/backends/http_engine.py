"""Candidates behind any OpenAI-compatible ``/chat/completions`` endpoint.

OpenAI itself, an OpenAI-compatible gateway (LiteLLM, OpenRouter, Azure's
v1 endpoint), ``vllm serve``, llama.cpp's server or Ollama. Standard library
only (``urllib``): no SDK to pin.

- **Bounded concurrency** (``concurrency``, default 8): never more requests
  in flight; each answer is handed back as it finishes, so the caller stores
  it at once and a killed run loses only what was in flight.
- **Retries** on 429, 5xx, timeouts and dropped connections: exponential
  backoff with full jitter (``backoff_base`` × 2^attempt, capped at 60 s),
  and a server's ``Retry-After`` (seconds or an HTTP date) is honoured as the
  minimum wait. After ``max_retries`` (default 6) the request is stored as an
  error of that kind and the next ``audit replay`` tries it again. A timed-out
  request may still have been billed by the provider: that is the one case in
  which a call can be paid twice, and it is why the timeout is generous.
- A 400 that says the context is too long is stored as ``context_overflow``,
  any other 4xx as ``bad_request``; 401/403/404 stop the whole run (every
  request would fail the same way): wrong key, URL or model name.
- A refusal (``message.refusal`` or ``finish_reason: content_filter``) is
  stored as the error ``refusal`` with the text the model gave.
- **Keys come only from the environment**: the variable named by
  ``api_key_env`` (default ``OPENAI_API_KEY``); a server on localhost needs
  none. The key is never stored, logged or printed.

Options: ``base_url`` (default ``https://api.openai.com/v1``),
``api_key_env``, ``concurrency``, ``timeout`` (seconds, default 120),
``max_retries``, ``backoff_base`` (seconds, default 1), ``context_window``
(tokens; enables the truncation policy, counted with tiktoken ``o200k_base``
as an estimate), ``max_tokens_param`` (``max_tokens`` or
``max_completion_tokens`` for OpenAI's reasoning models), ``send_seed``
(default true).
"""

from __future__ import annotations

import email.utils
import json
import os
import random
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import UTC, datetime

from audit.backends import (
    Candidate,
    EngineInfo,
    ReplayItem,
    ReplayResult,
    check_on_overflow,
    fit_to_context,
    known_options,
)
from audit.errors import ConfigError
from audit.tokens import TOKENS_PER_MESSAGE, REPLY_PRIMING_TOKENS, get_encoding

OPTIONS = ("base_url", "api_key_env", "concurrency", "timeout", "max_retries", "backoff_base",
           "context_window", "max_tokens_param", "send_seed")
DEFAULT_BASE_URL = "https://api.openai.com/v1"
MAX_BACKOFF_SECONDS = 60.0
MAX_RETRY_AFTER_SECONDS = 600.0
_LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "0.0.0.0")
_CONTEXT_MARKERS = ("context_length", "context length", "maximum context", "too many tokens", "context window")


class _RunStopped(Exception):
    """A response that means every request would fail: stop the run."""


def is_local(base_url: str) -> bool:
    return (urllib.parse.urlsplit(base_url).hostname or "") in _LOCAL_HOSTS


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds: a number of seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (now if now is not None else datetime.now(UTC).timestamp()))


def backoff_seconds(attempt: int, base: float, retry_after: float | None, rng: random.Random) -> float:
    """Full jitter: uniform(0, min(cap, base × 2^(attempt-1))), never less than Retry-After."""
    jittered = rng.uniform(0, min(MAX_BACKOFF_SECONDS, base * 2 ** (attempt - 1)))
    if retry_after is not None:
        return min(MAX_RETRY_AFTER_SECONDS, max(retry_after, jittered))
    return jittered


def count_prompt_estimate(messages: list[dict[str, str]]) -> int:
    encoding = get_encoding("o200k_base")
    return sum(len(encoding.encode_ordinary(m["content"])) + TOKENS_PER_MESSAGE for m in messages) + REPLY_PRIMING_TOKENS


class HttpEngine:
    def __init__(self, candidate: Candidate) -> None:
        known_options(candidate, OPTIONS)
        self.candidate = candidate
        self.on_overflow = check_on_overflow(candidate)
        self.base_url = candidate.option("base_url", DEFAULT_BASE_URL).rstrip("/")
        parts = urllib.parse.urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"candidate {candidate.name}: base_url {self.base_url!r} is not an http(s) URL",
                              "e.g. base_url=http://127.0.0.1:8000/v1")
        if parts.username or parts.password:
            raise ConfigError(f"candidate {candidate.name}: base_url must not hold credentials",
                              "put the key in an environment variable and name it with api_key_env=VAR")
        self.key_variable = candidate.option("api_key_env", "OPENAI_API_KEY")
        self._api_key = os.environ.get(self.key_variable) or None
        if self._api_key is None and not is_local(self.base_url):
            raise ConfigError(f"candidate {candidate.name} needs an API key for {parts.hostname}: ${self.key_variable} is not set",
                              f"export {self.key_variable}=... (or name another variable with api_key_env=VAR)")
        self.concurrency = max(1, candidate.int_option("concurrency", 8))
        self.timeout = candidate.float_option("timeout", 120.0)
        self.max_retries = candidate.int_option("max_retries", 6)
        self.backoff_base = candidate.float_option("backoff_base", 1.0)
        self.max_tokens_param = candidate.option("max_tokens_param", "max_tokens")
        if self.max_tokens_param not in ("max_tokens", "max_completion_tokens"):
            raise ConfigError(f"candidate {candidate.name}: max_tokens_param={self.max_tokens_param!r}",
                              "use max_tokens or max_completion_tokens")
        self.send_seed = candidate.bool_option("send_seed", True)
        self._rng = random.Random()
        self._rng_lock = threading.Lock()
        self._stop = threading.Event()
        self.info = EngineInfo("openai", candidate.model, f"{parts.scheme}://{parts.netloc}",
                               "OpenAI-compatible HTTP", candidate.int_option("context_window", None))

    def prepare(self, item: ReplayItem) -> ReplayItem | ReplayResult:
        return fit_to_context(item, self.info.context_window, count_prompt_estimate, self.on_overflow)

    # ------------------------------------------------------------------ running

    def run(self, items: Iterable[ReplayItem], on_result: Callable[[ReplayResult], None]) -> None:
        queue: Iterator[ReplayItem] = iter(items)
        in_flight: set[Future[ReplayResult]] = set()
        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="replay-http")
        try:
            def top_up() -> None:
                while len(in_flight) < self.concurrency and not self._stop.is_set():
                    item = next(queue, None)   # pulled lazily: the caller's budget check runs per request
                    if item is None:
                        return
                    in_flight.add(pool.submit(self._call, item))

            top_up()
            while in_flight:
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in done:
                    in_flight.discard(future)
                    on_result(future.result())   # _RunStopped propagates from here
                top_up()
        except _RunStopped as stopped:
            raise ConfigError(f"candidate {self.candidate.name}: {stopped}",
                              f"check the model name, base_url and ${self.key_variable}") from None
        finally:
            self._stop.set()                     # workers sleeping in a backoff give up
            pool.shutdown(wait=True, cancel_futures=True)
            self._stop.clear()

    def _request_body(self, item: ReplayItem) -> bytes:
        body: dict[str, object] = {"model": self.candidate.model, "messages": item.messages,
                                   self.max_tokens_param: item.max_tokens}
        if item.temperature is not None:
            body["temperature"] = item.temperature
        if self.send_seed:
            body["seed"] = item.seed
        return json.dumps(body).encode()

    def _call(self, item: ReplayItem) -> ReplayResult:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        data = self._request_body(item)
        url = self.base_url + "/chat/completions"
        attempt = 0
        while True:
            attempt += 1
            started = time.monotonic()
            retry_after = None
            try:
                request = urllib.request.Request(url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    payload = json.loads(response.read())
                return self._parse(item, payload, attempt, (time.monotonic() - started) * 1000)
            except urllib.error.HTTPError as error:
                text = _read_error(error)
                if error.code in (401, 403, 404):
                    raise _RunStopped(f"the server answered {error.code} {error.reason}: {text[:200]}") from None
                if error.code == 429 or error.code >= 500:
                    kind = "rate_limited" if error.code == 429 else "server_error"
                    message = f"HTTP {error.code}: {text[:300]}"
                    retry_after = retry_after_seconds(error.headers.get("Retry-After") if error.headers else None)
                elif any(marker in text.lower() for marker in _CONTEXT_MARKERS):
                    return self._error(item, "context_overflow", f"HTTP {error.code}: {text[:300]}", attempt)
                else:
                    return self._error(item, "bad_request", f"HTTP {error.code}: {text[:300]}", attempt)
            except (TimeoutError, socket.timeout):
                kind, message = "timeout", f"no answer within {self.timeout:g} s"
            except (urllib.error.URLError, ConnectionError, OSError) as error:
                reason = getattr(error, "reason", error)
                if isinstance(reason, (TimeoutError, socket.timeout)):
                    kind, message = "timeout", f"no answer within {self.timeout:g} s"
                else:
                    kind, message = "connection", f"{type(reason).__name__}: {reason}"
            except ValueError as error:            # a 200 whose body is not JSON: a broken proxy, retry
                kind, message = "server_error", f"answer is not JSON: {error}"
            if attempt > self.max_retries or self._stop.is_set():
                return self._error(item, kind, f"{message} (after {attempt} attempts)", attempt)
            with self._rng_lock:
                pause = backoff_seconds(attempt, self.backoff_base, retry_after, self._rng)
            if self._stop.wait(pause):
                return self._error(item, kind, f"{message} (run stopped while waiting to retry)", attempt)

    def _parse(self, item: ReplayItem, payload: dict, attempt: int, latency_ms: float) -> ReplayResult:
        try:
            choice = payload["choices"][0]
            message = choice.get("message") or {}
        except (KeyError, IndexError, TypeError):
            return self._error(item, "server_error", f"answer has no choices: {json.dumps(payload)[:300]}", attempt)
        text = message.get("content")
        finish = choice.get("finish_reason")
        usage = payload.get("usage") or {}
        prompt_tokens = usage.get("prompt_tokens")
        output_tokens = usage.get("completion_tokens")
        if prompt_tokens is None:
            prompt_tokens = count_prompt_estimate(item.messages)
        if output_tokens is None:
            output_tokens = len(get_encoding("o200k_base").encode_ordinary(text or ""))
        result = ReplayResult(item.request_id, "ok", response_text=text, finish_reason=finish,
                              prompt_tokens=int(prompt_tokens), output_tokens=int(output_tokens),
                              latency_ms=latency_ms, attempts=attempt, truncated_messages=item.truncated_messages)
        refusal = message.get("refusal")
        if refusal or finish == "content_filter":
            result.status, result.error_kind = "error", "refusal"
            result.error_message = (refusal or f"finish_reason {finish}")[:500]
            result.response_text = text or refusal
        return result

    def _error(self, item: ReplayItem, kind: str, message: str, attempt: int) -> ReplayResult:
        return ReplayResult(item.request_id, "error", error_kind=kind, error_message=message, attempts=attempt,
                            truncated_messages=item.truncated_messages)

    def close(self) -> None:
        pass


def _read_error(error: urllib.error.HTTPError) -> str:
    try:
        body = error.read().decode("utf-8", "replace")
    except Exception:  # noqa: BLE001 - the body of an error is best effort
        return str(error.reason)
    try:
        parsed = json.loads(body)
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
            return str(parsed["error"].get("message") or body)
    except ValueError:
        pass
    return body.strip() or str(error.reason)
