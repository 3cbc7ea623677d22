"""A deterministic stand-in engine for fast unit tests of the replay bookkeeping.

It answers with the first words of the last message, instantly, and is never
a default: every replay stage also has tests through vLLM and a real HTTP
server. Options: ``context_window`` (tokens = whitespace words),
``delay_ms`` (per request, to test interruption), ``fail_every`` (every Nth
request fails with ``engine_error``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from audit.backends import Candidate, EngineInfo, ReplayItem, ReplayResult, check_on_overflow, fit_to_context, known_options

OPTIONS = ("context_window", "delay_ms", "fail_every")


def count_words(messages: list[dict[str, str]]) -> int:
    return sum(len(m["content"].split()) + 1 for m in messages)


class FakeEngine:
    def __init__(self, candidate: Candidate) -> None:
        known_options(candidate, OPTIONS)
        self.on_overflow = check_on_overflow(candidate)
        self.delay = (candidate.float_option("delay_ms", 0.0) or 0.0) / 1000
        self.fail_every = candidate.int_option("fail_every", 0) or 0
        self.info = EngineInfo("fake", candidate.model, "none (fake engine)", "fake", candidate.int_option("context_window", None))
        self._sent = 0

    def prepare(self, item: ReplayItem) -> ReplayItem | ReplayResult:
        return fit_to_context(item, self.info.context_window, count_words, self.on_overflow)

    def run(self, items: Iterable[ReplayItem], on_result: Callable[[ReplayResult], None]) -> None:
        for item in items:
            self._sent += 1
            if self.delay:
                time.sleep(self.delay)
            if self.fail_every and self._sent % self.fail_every == 0:
                on_result(ReplayResult(item.request_id, "error", error_kind="engine_error",
                                       error_message="injected failure (fail_every)", truncated_messages=item.truncated_messages))
                continue
            words = item.messages[-1]["content"].split()[: item.max_tokens]
            on_result(ReplayResult(item.request_id, "ok", response_text=" ".join(words),
                                   finish_reason="length" if len(words) == item.max_tokens else "stop",
                                   prompt_tokens=count_words(item.messages), output_tokens=len(words),
                                   latency_ms=self.delay * 1000, truncated_messages=item.truncated_messages))

    def close(self) -> None:
        pass
