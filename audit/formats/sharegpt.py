"""ShareGPT-style conversation files: one conversation per record, one ledger row per assistant turn.

The shape most chat datasets and chat-product exports use, as a JSON array
or as JSON lines::

    {"id": "conv_1", "model": "gpt-4o", "system": "You are ...",
     "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}, ...]}

Also read: ``conversation`` (lmsys-chat-1m) or ``messages`` (the OpenAI
fine-tuning / Hugging Face chat-template variant) with ``{role, content}``
items. Speakers are mapped to chat roles: human/user → user, gpt/assistant/
model/chatgpt/bard/bing/function_call → assistant, system → system,
observation/tool/function/ipython → tool. Any other speaker rejects the
conversation (an auditor should not guess who spoke).

Why one row per assistant turn: a chat product sends the whole history
with every user message, so a conversation with three assistant replies
cost three calls, and the *n*-th call's prompt is everything before the
*n*-th reply. That is the realistic reading for spend (and for the
"bloated history" detector). ``native_id`` is ``<conversation id>#<n>``,
``n`` counting assistant turns from 1; ``session_id`` is the conversation.
A conversation without an id is identified by a hash of its text, so the
same conversation ingested twice is still recognised.

What these files do not have: usage, cost, latency, status. Tokens are
counted by ``ingest`` (tiktoken, ``tokens_source = 'counted'``). Most have
no model either: the model comes from a per-record key (``model``,
``model_name`` or ``--map COLUMN=model``), else from the ingest option
``default_model`` (``--model NAME``, proposed); when neither exists for a
whole file the file is refused with that hint instead of rejecting every
record. Per-record ``timestamp``/``user``/``prompt_name``… keys are taken
like the generic format takes columns (same names, aliases and ``--map``);
per-conversation totals (tokens, cost, latency) are ignored, as they cannot
be split between turns.

``line_no``: a record can hold several calls, and the shared finisher needs
one position per stage row, so ``line_no`` numbers the calls (and rejected
records) in file order. Each row's ``metadata`` says where it came from
(``line``/``record`` = JSONL line or 1-based array index, ``turn``), and
the reason of a rejected record ends with that position.

Read in Python (a JSON array is one document; expanding turns and
renaming speakers is clearer here than in SQL): the counting of tokens
that every row of these files needs costs far more than this parsing.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

import duckdb

from audit.errors import InputError
from audit.formats import Format, IngestOptions, Sample, records_stage
from audit.formats.generic import resolve_columns
from audit.formats.lines import read_text
from audit.tokens import message_text

# Record keys that hold the conversation, in order of preference.
CONVERSATION_KEYS = ("conversations", "conversation", "messages")

# Speaker names (ShareGPT ``from``, chat ``role``) → chat role.
SPEAKER_ROLES = {
    "system": "system",
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "model": "assistant", "chatgpt": "assistant",
    "bard": "assistant", "bing": "assistant",
    # LLaMA-Factory's tool-use ShareGPT: the model emits function_call, the tool answers with observation.
    "function_call": "assistant",
    "observation": "tool", "tool": "tool", "function": "tool", "ipython": "tool",
}

# Keys that mean a record already splits prompt and response, logs usage, or
# is a proxy log: those are the generic / provider formats' files (whose
# logged counts we must not drop), never claimed here.
NOT_CONVERSATION_KEYS = frozenset({
    "response", "completion", "output", "answer", "response_text", "choices", "usage",
    "request", "request_body", "response_body", "body", "custom_id",
    "input_tokens", "output_tokens", "prompt_tokens", "completion_tokens", "total_tokens", "cost", "cost_usd",
})

# Ledger fields a conversation record can carry for all its turns.
PER_CONVERSATION_FIELDS = (
    "id", "timestamp", "provider", "model", "user_id", "session_id", "prompt_name", "prompt_version",
    "system", "temperature", "max_tokens", "service_tier",
)
# Conversation ids under other names (lmsys-chat-1m: conversation_id).
EXTRA_ID_KEYS = ("conversation_id", "conv_id", "uuid")
# Message keys kept besides role and content (they are part of what was sent).
KEPT_MESSAGE_KEYS = ("name", "tool_calls", "tool_call_id")

NO_MODEL_HINT = "pass --model NAME (the model that served these conversations) or --map COLUMN=model"

_ARRAY_HINTS = (
    re.compile(r'"conversations?"\s*:\s*\[\s*\{[^{}]*"(from|role)"\s*:'),
    re.compile(r'"messages"\s*:\s*\[\s*\{[^{}]*"role"\s*:'),
)


# --------------------------------------------------------------------------- recognising


def is_conversation_record(record: object) -> bool:
    """True for a ShareGPT ``from/value`` or a ``role/content`` chat record with an assistant turn."""
    if not isinstance(record, dict) or NOT_CONVERSATION_KEYS & set(record):
        return False
    for key in CONVERSATION_KEYS:
        turns = record.get(key)
        if not (isinstance(turns, list) and turns and isinstance(turns[0], dict)):
            continue
        first = turns[0]
        if "from" in first and "value" in first:
            return True
        if "role" in first and "content" in first:
            return any(isinstance(t, dict) and SPEAKER_ROLES.get(str(t.get("role")).lower()) == "assistant"
                       for t in turns)
    return False


def _looks_like_conversation_array(head: bytes) -> bool:
    """A JSON array too large for the sniffing window to parse whole."""
    text = head[:65536].decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    if not text.startswith("["):
        return False
    if _ARRAY_HINTS[0].search(text):
        return True
    # The role/content variant: only with an assistant turn and no response or usage keys.
    return bool(_ARRAY_HINTS[1].search(text)) and '"assistant"' in text and not re.search(
        r'"(response|completion|choices|usage|request|(input|output|prompt|completion)_tokens)"\s*:', text)


# --------------------------------------------------------------------------- expanding


@dataclass
class ConversationPlan:
    """How to read the conversation records of one file or dataset."""

    fields: dict[str, str]                  # ledger field → record key
    conversation_key: str | None            # the key holding the turns, if fixed (--map COLUMN=messages)
    default_model: str | None
    position_label: str                     # "line", "record" or "row": what positions count
    extra_metadata: dict = field(default_factory=dict)


def plan_conversations(
    keys: Iterable[str], mapping: dict[str, str], default_model: str | None, position_label: str,
    *, where: str, extra_metadata: dict | None = None,
) -> ConversationPlan:
    """Resolve record keys to ledger fields the way the generic format resolves columns.

    Raises ``InputError`` when no record names a model and no default is given:
    one clear refusal beats rejecting every record of the file.
    """
    keys = sorted(set(keys))
    resolved = resolve_columns(keys, mapping)
    # --map COLUMN=messages points at the conversation itself.
    conversation_key = resolved.get("messages") if "messages" in mapping.values() else None
    fields = {f: k for f, k in resolved.items() if f in PER_CONVERSATION_FIELDS}
    if "id" not in fields:
        extra = next((k for k in EXTRA_ID_KEYS if k in keys), None)
        if extra:
            fields["id"] = extra
    if "model" not in fields and not default_model:
        raise InputError(f"{where}: no model name in these conversations", NO_MODEL_HINT)
    return ConversationPlan(fields, conversation_key, default_model, position_label, extra_metadata or {})


def _scalar(value: object) -> str | None:
    """A record value as stage text: wrong types stay visible (the finisher rejects them)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value, ensure_ascii=False, default=str)


def _small_scalar(value: object) -> bool:
    """Leftover record keys worth keeping in metadata (language, source…), not big blobs."""
    return isinstance(value, (bool, int, float)) or isinstance(value, str) and len(value) <= 200


def _json_kind(value: object) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")


def _normalise_turns(turns: list, key: str) -> tuple[list[dict] | None, str | None]:
    """ShareGPT/chat items → chat messages, or a reject reason."""
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            return None, f"{key}[{i}] is not an object"
        speaker = turn.get("from", turn.get("role"))
        role = SPEAKER_ROLES.get(speaker.lower()) if isinstance(speaker, str) else None
        if role is None:
            return None, f"unknown speaker: {speaker!r} in {key}[{i}]"
        content = turn["value"] if "value" in turn else turn.get("content")
        if content is None and not turn.get("tool_calls"):
            return None, f"message without text: {key}[{i}]"
        if content is not None and not isinstance(content, (str, list)):
            return None, f"message text is not a string: {key}[{i}] is {_json_kind(content)}"
        message = {"role": role, "content": content}
        for extra in KEPT_MESSAGE_KEYS:
            if turn.get(extra) is not None:
                message[extra] = turn[extra]
        messages.append(message)
    return messages, None


def _reply_text(message: dict) -> str:
    text = message_text(message.get("content"))
    if not text and message.get("tool_calls"):
        # A tool call's arguments are what the model generated.
        return json.dumps(message["tool_calls"], ensure_ascii=False)
    return text


def expand_conversation(position: int, record: object, raw: str, plan: ConversationPlan) -> list[dict]:
    """One record → one stage dict per assistant turn, or one reject (without ``line_no``)."""
    where = f"{plan.position_label} {position}"

    def reject(reason: str) -> list[dict]:
        separator = ", " if ":" in reason else ": "
        return [{"reject_reason": f"{reason}{separator}{where}", "raw": raw}]

    if not isinstance(record, dict):
        return reject(f"expected a JSON object, got {_json_kind(record)}")
    key = plan.conversation_key or next((k for k in CONVERSATION_KEYS if record.get(k) is not None), None)
    if key is None or record.get(key) is None:
        return reject("no conversation (conversations, conversation or messages)")
    if not isinstance(record[key], list):
        return reject(f"{key} is not a list")
    messages, problem = _normalise_turns(record[key], key)
    if problem:
        return reject(problem)
    fields = plan.fields
    system = record.get(fields["system"]) if "system" in fields else None
    if isinstance(system, str) and system.strip() and not (messages and messages[0]["role"] == "system"):
        messages.insert(0, {"role": "system", "content": system})
    replies = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not replies:
        return reject("no assistant turn")
    value = {f: _scalar(record.get(k)) for f, k in fields.items() if f != "system"}
    model = value.get("model") or plan.default_model
    if not model or not model.strip():
        return reject("no model name: " + NO_MODEL_HINT)
    conversation_id = value.get("id")
    # Without an id, the conversation's own text identifies it (stable across re-ingests).
    conversation_key = conversation_id or "sha1:" + hashlib.sha1(raw.encode("utf-8", "replace")).hexdigest()[:20]
    used = set(fields.values()) | {key}
    leftovers = {k: v for k, v in record.items() if k not in used and _small_scalar(v)}
    rows = []
    for turn, index in enumerate(replies, start=1):
        call_id = f"{conversation_key}#{turn}"
        rows.append({
            "native_id": f"{conversation_id}#{turn}" if conversation_id else None,
            "dedupe_key": call_id,
            "started_at_raw": value.get("timestamp"),
            "provider": value.get("provider"),
            "model_logged": model,
            "user_id": value.get("user_id"),
            "session_id": value.get("session_id") or conversation_key,
            "prompt_name": value.get("prompt_name"),
            "prompt_version": value.get("prompt_version"),
            "messages": json.dumps(messages[:index], ensure_ascii=False, default=str),
            "response_text": _reply_text(messages[index]),
            "status": "ok",
            "is_batch": False,
            "service_tier": value.get("service_tier"),
            "temperature": value.get("temperature"),
            "max_tokens": value.get("max_tokens"),
            "metadata": json.dumps(
                {**leftovers, **plan.extra_metadata, plan.position_label: position,
                 "turn": turn, "turns": len(replies)},
                ensure_ascii=False, default=str),
            "raw": raw,
        })
    return rows


def number_rows(rows: Iterable[dict]) -> list[dict]:
    """Give every stage row its own ``line_no`` (calls in file order, from 1)."""
    numbered = []
    for line_no, row in enumerate(rows, start=1):
        row["line_no"] = line_no
        numbered.append(row)
    return numbered


# --------------------------------------------------------------------------- files


def conversation_records(path: Path, text: str) -> tuple[str, list[tuple[int, object, str, str | None]]]:
    """``(position label, [(position, record, raw, parse problem)])`` of a JSON array or JSON lines."""
    if text.lstrip().startswith("["):
        try:
            document = json.loads(text)
        except ValueError as exc:
            raise InputError(f"{path} is not valid JSON: {exc}", "check that the file is complete") from None
        return "record", [(i, item, json.dumps(item, ensure_ascii=False), None)
                          for i, item in enumerate(document, start=1)]
    records = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append((line_no, json.loads(line), line, None))
        except ValueError:
            records.append((line_no, None, line, "not valid JSON"))
    return "line", records


def _record_keys(records: list[tuple[int, object, str, str | None]]) -> set[str]:
    keys: set[str] = set()
    for _, record, _, _ in records:
        if isinstance(record, dict):
            keys.update(record)
    return keys


def expand_all(records: Iterable[tuple[int, object, str, str | None]], plan: ConversationPlan) -> Iterator[dict]:
    for position, record, raw, problem in records:
        if problem:
            yield {"reject_reason": f"{problem}: {plan.position_label} {position}", "raw": raw}
        else:
            yield from expand_conversation(position, record, raw, plan)


class ShareGPT(Format):
    name = "sharegpt"
    description = ("ShareGPT-style conversations (JSON array or JSONL; from/value or role/content): "
                   "one call per assistant turn")

    def sniff(self, sample: Sample) -> bool:
        first = sample.first_json
        if isinstance(first, list):
            first = first[0] if first else None
        if isinstance(first, dict):
            return is_conversation_record(first)
        return _looks_like_conversation_array(sample.head)

    def stage_sql(self, con: duckdb.DuckDBPyConnection, path: Path, options: IngestOptions, file_id: int) -> str:
        label, records = conversation_records(path, read_text(path, options.compression))
        plan = plan_conversations(
            _record_keys(records), options.mapping, getattr(options, "default_model", None), label, where=str(path))
        return records_stage(con, f"_records_{file_id}", number_rows(expand_all(records, plan)))

