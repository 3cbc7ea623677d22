"""The LLM judge: production answer vs candidate answer, judged twice with the positions swapped.

Reads: ``replays`` (ok answers), ``requests`` (the conversation and the
production answer), ``samples`` and ``templates`` (the task type, for the
rubric). Writes: ``judge_calls`` (one row per request × candidate × judge ×
position of the production answer, stored as each call finishes) and the
``verdicts`` rows of ``source = 'judge'``.

The judge is any replay engine (``audit.backends``): a hosted strong model
over HTTP or a large self-hosted one on vLLM, given like a candidate
(``NAME=ENGINE:MODEL?options``). Its calls are priced, estimated, budgeted
and resumed exactly like replays (``audit.replay``): a rerun sends only the
calls without a stored answer or whose error was transient.

Position bias is the best-known failure of LLM judges: each pair is shown
twice, the production answer first as A, then as B. A verdict counts only
when both orders agree. When they disagree the pair is a *tie by
disagreement*: it is stored (``preferred = 'tie'``) but is no evidence either
way (``passed`` NULL), so that request is decided by the automatic checks. An
agreed "tie" (both orders say the answers are equally good) passes: the
candidate is not worse.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import duckdb

from audit.backends import Candidate, Engine, ReplayItem, ReplayResult, TRANSIENT_ERRORS, open_engine, replay_messages
from audit.db import fetch_dicts
from audit.errors import ConfigError
from audit.pricing import PriceBook, reference_day
from audit.judge.decisions import replace_verdicts
from audit.replay import Admitted, Budget, CandidatePrice, prepare_items, price_candidate, worst_case_cost

JUDGE_MAX_TOKENS = 96             # a verdict line and one sentence
EXPECTED_JUDGE_OUTPUT_TOKENS = 40
# Long conversations and answers are cut for the judge (head and tail kept):
# the rubric is about the answer, and a judge's context window is finite.
MAX_CONVERSATION_CHARS = 6000
MAX_ANSWER_CHARS = 4000

_FREE_TEXT_RUBRIC = ("Judge which answer better serves the user: correct, complete, follows the instructions and the "
                     "requested format and tone, no invented facts. Length alone is not quality.")
RUBRICS: dict[str, str] = {
    "faq_lookup": "Judge factual correctness and whether the question is actually answered; brevity is fine.",
    "classification": "Judge only whether the label or category is the right one for the input, in the requested format.",
    "slot_extraction": "Judge whether every requested field is extracted with the right value and nothing is invented.",
    "structured_extraction": "Judge whether the output is valid in the requested structure (e.g. JSON) and every field "
                             "holds the right value from the input; missing or invented fields are errors.",
    "complex_reasoning": "Judge whether the final answer is correct and the reasoning sound; a wrong final answer loses.",
    "code_generation": "Judge whether the code is correct, runs, and does what was asked; style matters less.",
    "summarization": "Judge faithfulness to the source (no invented facts), coverage of the key points, and concision.",
    "long_document_summarization": "Judge faithfulness to the document, coverage of its key points, and concision.",
    "email_drafting": "Judge whether the draft says what was asked, in the right tone, ready to send.",
}

JUDGE_SYSTEM = (
    "You are a strict, impartial evaluator comparing two answers (A and B) to the same conversation. "
    "The order of the answers is random: do not let position or length sway you. "
    "Reply with exactly two lines:\nVerdict: A, B or tie\nReason: one sentence."
)

_VERDICT = re.compile(r"verdict\s*[:\-]?\s*[*\"'\[(]*\s*(answer\s+)?(a|b|tie|both|equal|neither)\b", re.I)
_LEADING = re.compile(r"^\s*[*\"'\[(]*\s*(answer\s+)?(a|b|tie)\b", re.I)
# Small models answer in a sentence instead of the format: "The answer A is better.", "... better is answer B".
_SENTENCE = re.compile(r"\b(answer|response)\s+(a|b)\s+is\s+(better|best|preferred|superior)\b"
                       r"|\b(better|best|preferred)\s+(one\s+)?is\s+(answer\s+|response\s+)?(a|b)\b", re.I)
_REASON = re.compile(r"reason\s*[:\-]\s*(.+)", re.I)


def rubric(task_type: str | None) -> str:
    return RUBRICS.get(task_type or "", _FREE_TEXT_RUBRIC)


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n[... {len(text) - 2 * half} characters cut ...]\n{text[-half:]}"


def judge_messages(task_type: str | None, conversation: list[dict[str, str]], answer_a: str, answer_b: str) -> list[dict[str, str]]:
    """The judge's prompt: the rubric, the conversation, the two answers."""
    transcript = "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in conversation)
    user = (f"Rubric: {rubric(task_type)}\n\n"
            f"<conversation>\n{_cut(transcript, MAX_CONVERSATION_CHARS)}\n</conversation>\n\n"
            f"<answer_A>\n{_cut(answer_a, MAX_ANSWER_CHARS)}\n</answer_A>\n\n"
            f"<answer_B>\n{_cut(answer_b, MAX_ANSWER_CHARS)}\n</answer_B>\n\n"
            "Which answer is better? Reply with exactly two lines:\nVerdict: A, B or tie\nReason: one sentence.")
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


def parse_verdict(text: str | None) -> tuple[str | None, str | None]:
    """``('A' | 'B' | 'tie' | None, explanation)`` from the judge's reply; None when it gave no verdict."""
    if not text:
        return None, None
    match = _VERDICT.search(text) or _LEADING.search(text)
    verdict = None
    if match:
        word = match.group(2).lower()
        verdict = {"a": "A", "b": "B"}.get(word, "tie")
    elif sentence := _SENTENCE.search(text):
        verdict = (sentence.group(2) or sentence.group(7)).upper()
    reason = _REASON.search(text)
    explanation = (reason.group(1) if reason else text).strip().splitlines()[0][:300] if text.strip() else None
    return verdict, explanation


def unblind(verdict: str | None, original_position: str) -> str | None:
    """The judge's A/B/tie as 'original' | 'candidate' | 'tie', given where the production answer was shown."""
    if verdict in (None, "tie"):
        return verdict
    return "original" if verdict == original_position else "candidate"


def combine_orders(first: str | None, second: str | None) -> tuple[float | None, bool | None, str]:
    """Two unblinded verdicts (production shown as A, then as B) → (score, passed, reason)."""
    if first is None or second is None:
        return None, None, "the judge gave no readable verdict in one of the two orders"
    if first == second == "candidate":
        return 1.0, True, "judge preferred the candidate in both orders"
    if first == second == "tie":
        return 0.5, True, "judge found them equally good in both orders"
    if first == second == "original":
        return 0.0, False, "judge preferred the original in both orders"
    return None, None, f"tie by disagreement (production first: {first}; production second: {second})"


# --------------------------------------------------------------------------- running the judge


@dataclass
class JudgePlan:
    judge: Candidate
    price: CandidatePrice
    items: list[ReplayItem]          # pending calls; request_id is the call key (see _call_key)
    already_done: int
    expected_cost_usd: float | None
    worst_case_cost_usd: float | None

    def check_budget(self, max_cost_usd: float) -> None:
        """Refuse (one-line ConfigError) when the worst case of a per-token-priced judge exceeds the budget."""
        if self.price.paid_per_token and (self.worst_case_cost_usd or 0.0) > max_cost_usd + 1e-12:
            raise ConfigError(f"judging could cost up to ${self.worst_case_cost_usd:,.2f} at {self.judge.name}'s prices, "
                              f"above --max-cost ${max_cost_usd:,.2f}",
                              f"raise --max-cost to {self.worst_case_cost_usd:,.2f} or more, or replay fewer requests")

    def as_dict(self) -> dict[str, Any]:
        return {"judge": self.judge.name, "spec": self.judge.spec, "pricing": self.price.pricing,
                "price_source": self.price.source, "pending_calls": len(self.items), "already_done": self.already_done,
                "expected_cost_usd": self.expected_cost_usd, "worst_case_cost_usd": self.worst_case_cost_usd}


def _call_key(request_id: str, candidate: str, original_position: str) -> str:
    return f"{request_id}\x1f{candidate}\x1f{original_position}"


def sample_pairs(con: duckdb.DuckDBPyConnection, set_id: str) -> list[dict[str, Any]]:
    """Every ok answer of the sample set with its conversation and the production answer, to be judged."""
    pairs = fetch_dicts(con, """
        SELECT p.request_id, p.candidate, p.response_text AS candidate_answer, r.messages, r.response_text AS original_answer,
               t.task_type
        FROM replays p JOIN requests r USING (request_id)
        JOIN samples s ON s.sample_set_id = p.sample_set_id AND s.request_id = p.request_id
        LEFT JOIN templates t ON t.template_id = s.template_id
        WHERE p.sample_set_id = ? AND p.status = 'ok'
        ORDER BY s.template_id, s.draw_rank, p.candidate""", [set_id])
    for pair in pairs:
        pair["messages"] = replay_messages(pair["messages"])
    return pairs


def plan_judge(con: duckdb.DuckDBPyConnection, set_id: str, judge: Candidate, pairs: list[dict[str, Any]], *,
               book: PriceBook, gpu_hourly_usd: float, count_tokens: Callable[[list[str]], list[int]]) -> JudgePlan:
    """The judge calls still to make for ``pairs`` (``sample_pairs``' shape) under ``set_id``, priced; sends nothing."""
    price = price_candidate(judge, gpu_hourly_usd=gpu_hourly_usd, day=reference_day(con), book=book)
    done = {(r["request_id"], r["candidate"], r["original_position"]) for r in fetch_dicts(con, """
        SELECT request_id, candidate, original_position FROM judge_calls
        WHERE sample_set_id = ? AND judge = ? AND judge_spec = ? AND NOT (status = 'error' AND error_kind IN ?)""",
        [set_id, judge.name, judge.spec, list(TRANSIENT_ERRORS)])}
    items = []
    for pair in pairs:
        conversation = pair["messages"]
        for position in ("A", "B"):
            if (pair["request_id"], pair["candidate"], position) in done:
                continue
            original, candidate = pair["original_answer"] or "", pair["candidate_answer"] or ""
            a, b = (original, candidate) if position == "A" else (candidate, original)
            messages = judge_messages(pair["task_type"], conversation, a, b)
            items.append(ReplayItem(_call_key(pair["request_id"], pair["candidate"], position), messages,
                                    JUDGE_MAX_TOKENS, 0.0, 0, 0, EXPECTED_JUDGE_OUTPUT_TOKENS))
    for item, tokens in zip(items, count_tokens(["\n".join(m["content"] for m in i.messages) for i in items])):
        item.expected_input_tokens = tokens + 8 * len(item.messages)
    expected = worst = None
    if price.paid_per_token:
        expected = sum(price.cost(i.expected_input_tokens, i.expected_output_tokens) or 0.0 for i in items)
        worst = sum(worst_case_cost(price, i) for i in items)
    already = len(done)
    return JudgePlan(judge, price, items, already, expected, worst)


def run_judge(con: duckdb.DuckDBPyConnection, set_id: str, plan: JudgePlan, *, max_cost_usd: float,
              engine_factory: Callable[[Candidate], Engine] = open_engine,
              on_progress: Callable[[int, int, float], None] | None = None) -> dict[str, Any]:
    """Make the pending judge calls (refusing above the budget), storing each as it finishes."""
    judge, price = plan.judge, plan.price
    plan.check_budget(max_cost_usd)
    report = on_progress or (lambda done, total, spent: None)
    total, done = len(plan.items), 0
    counts = {"ok": 0, "error": 0, "unparsable": 0}
    if not plan.items:
        return {"calls": 0, **counts, "wall_seconds": 0.0, "cost_usd": 0.0, "stopped_at_budget": False}
    budget = Budget(max_cost_usd)
    stopped_at_budget = False

    def store(result: ReplayResult) -> None:
        nonlocal done
        request_id, candidate, position = result.request_id.split("\x1f")
        verdict, explanation = parse_verdict(result.response_text) if result.status == "ok" else (None, None)
        cost = price.cost(result.prompt_tokens, result.output_tokens) if result.status == "ok" else None
        if price.paid_per_token:
            budget.settle(result.request_id, cost)
        con.execute("""INSERT OR REPLACE INTO judge_calls VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, now()::TIMESTAMP)""",
                    [set_id, request_id, candidate, judge.name, judge.spec, position, result.status,
                     unblind(verdict, position), explanation, result.response_text, result.error_kind, result.error_message,
                     result.prompt_tokens, result.output_tokens, cost])
        done += 1
        counts[result.status] += 1
        counts["unparsable"] += result.status == "ok" and verdict is None
        report(done, total, budget.spent)

    started = time.monotonic()
    engine = engine_factory(judge)
    try:
        admitted = Admitted(prepare_items(engine, plan.items, store), price, budget)
        engine.run(admitted, store)
        stopped_at_budget = admitted.stopped_at_budget
    finally:
        engine.close()
    wall = time.monotonic() - started
    # A self-hosted judge costs its machine time, like a self-hosted candidate.
    cost = budget.spent if price.paid_per_token else wall / 3600 * (price.gpu_hourly_usd or 0.0)
    return {"calls": done, **counts, "wall_seconds": wall, "cost_usd": cost, "stopped_at_budget": stopped_at_budget}


def write_judge_verdicts(con: duckdb.DuckDBPyConnection, set_id: str, judge: Candidate) -> int:
    """``verdicts`` rows (source 'judge', metric 'pairwise') from the stored calls of this judge."""
    calls = fetch_dicts(con, """
        SELECT request_id, candidate, original_position, status, preferred, explanation FROM judge_calls
        WHERE sample_set_id = ? AND judge = ? AND judge_spec = ?""", [set_id, judge.name, judge.spec])
    by_pair: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for call in calls:
        by_pair.setdefault((call["request_id"], call["candidate"]), {})[call["original_position"]] = call
    rows = []
    for (request_id, candidate), orders in sorted(by_pair.items()):
        first, second = orders.get("A"), orders.get("B")
        if not first or not second or first["status"] != "ok" or second["status"] != "ok":
            continue  # both orders are needed; a transient error is retried by the next run
        score, passed, reason = combine_orders(first["preferred"], second["preferred"])
        if passed is not None and first["explanation"]:
            reason = f"{reason}: {first['explanation']}"
        rows.append([set_id, request_id, candidate, "judge", "pairwise", score, None, passed, True, reason])
    replace_verdicts(con, set_id, "judge", rows)
    return len(rows)
