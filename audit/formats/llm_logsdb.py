"""simonw/llm's ``logs.db``: the SQLite database the ``llm`` CLI logs every prompt to.

Found with ``llm logs path`` (e.g. ``~/Library/Application Support/io.datasette.llm/logs.db``).
Two generations of tables hold calls, and both are read (reference §7,
``llm/migrations.py``, ``docs/logging.md``):

- ``responses`` (llm ≤ 0.31, kept read-only afterwards): one row per call
  with ``id`` (ULID), ``model``, ``resolved_model``, ``prompt``, ``system``,
  ``prompt_json``, ``options_json``, ``response``, ``conversation_id`` →
  ``conversations(id, name, model)``, ``duration_ms``, ``datetime_utc``,
  ``input_tokens``, ``output_tokens``, ``token_details``. Fragments
  (``prompt_fragments``/``system_fragments`` → ``fragments.content``) are
  stored apart from ``prompt``/``system``; the model saw them joined the way
  llm joins them (prompt: fragments then prompt, ``"\\n"``; system:
  ``"\\n\\n"``). The prompt messages come from ``prompt_json`` when it holds a
  message list (the OpenAI plugin stores ``{"messages": [...]}``: the exact
  request, history included); otherwise they are rebuilt as llm sends a
  conversation: system, then every earlier prompt/response of the same
  conversation (ULID order), then this prompt.
- the content-addressed message store (llm 0.32+): ``threads`` (a
  conversation), ``turns`` (one call: ``thread_id``, ``parent_message_hash``,
  ``tip_message_hash``, ``model``, ``resolved_model``, ``options_json``,
  tokens, ``duration_ms``, ``datetime_utc``), ``messages(hash, parent_hash,
  role)`` forming a chain, ``parts(message_hash, position, type, text,
  payload)``. A turn's input is the chain from the root to
  ``parent_message_hash``; its output is the chain after that up to
  ``tip_message_hash``. A part's text is the ``text`` column, or the
  ``text_ref`` list of its payload (fragment ids and literals, resolved), or
  (0.32 alphas) ``payload.text``. Reasoning and attachment parts are not
  counted as prompt text; tool calls and tool results are, as JSON/text.

``line_no`` is the call's position in this order: ``responses`` by rowid,
then ``turns`` by rowid (1-based); ``raw`` is the row as JSON with its table
and id. ``native_id`` = the response or turn id; the two share one id space,
so an id present in both tables is one call (the ``turns`` copy wins).
``session_id`` = the conversation / thread id. Zone-less ``datetime_utc``
values (old releases used ``utcnow()``) are UTC.

Tokens, as logged, mean what the plugin stored. The OpenAI plugin stores
``prompt_tokens`` (cache included) with ``prompt_tokens_details.cached_tokens``
and ``completion_tokens_details.reasoning_tokens`` in ``token_details``
(Responses-API names ``input_/output_tokens_details`` too): 'openai'.
llm-anthropic stores Anthropic's ``input_tokens`` (cache excluded) and, when
its cache option was on, ``cache_read_input_tokens`` /
``cache_creation_input_tokens`` in ``token_details``: 'anthropic' (also for
any claude model without OpenAI-style details; without cache counts the two
readings agree). llm-gemini's ``cachedContentTokenCount`` is a subset of the
prompt and ``thoughtsTokenCount`` is already in the output: 'openai'.
``token_details`` drops zero values, so a missing key is 0. Rows with NULL
tokens (old releases) are counted by ``ingest``.

Not in ``logs.db``: cost, latency other than ``duration_ms``, prompt
template references (templates only show as the resulting text), and a user
id (a single-user CLI) — except llm-anthropic's ``user_id`` option, taken
when set. Attachments, tool definitions and the legacy ``tool_results``
table are not added to the prompt. The pre-0.9 ``logs`` table is not read.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from audit.errors import InputError
from audit.formats import Format, IngestOptions, Sample, records_stage
from audit.formats.lines import open_decompressed
from audit.formats.sharegpt import number_rows

SQLITE_HEADER = b"SQLite format 3\x00"
CALL_TABLES = frozenset({"responses", "turns"})
# For a compressed database: its schema text sits near the start of the file.
_CALL_TABLE_SQL = re.compile(rb'CREATE TABLE\s+["\[`]?(responses|turns)["\]`]?\s*\(')
# Keys of OpenAI-style (prompt includes cache) token details, per plugin.
_OPENAI_DETAIL_KEYS = ("prompt_tokens_details", "input_tokens_details", "completion_tokens_details",
                       "output_tokens_details", "cachedContentTokenCount", "thoughtsTokenCount")
_ANTHROPIC_DETAIL_KEYS = ("cache_read_input_tokens", "cache_creation_input_tokens")
_MAX_CHAIN = 100_000  # messages in one conversation: a guard against a corrupt, cyclic chain


# --------------------------------------------------------------------------- SQLite access


def _connect_read_only(path: Path) -> sqlite3.Connection:
    """Open without writing anything; ``immutable`` when a WAL database cannot be opened read-only."""
    uri = path.resolve().as_uri()
    last_error: sqlite3.Error | None = None
    for flags in ("mode=ro", "mode=ro&immutable=1"):
        try:
            db = sqlite3.connect(f"{uri}?{flags}", uri=True)
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.Error as exc:
            last_error = exc
            continue
        db.row_factory = sqlite3.Row
        return db
    raise InputError(f"cannot open {path} as SQLite: {last_error}", "check that the file is a complete logs.db")


def _tables(db: sqlite3.Connection) -> set[str]:
    return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _columns(db: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in db.execute(f'PRAGMA table_info("{table}")')]


@contextmanager
def _plain_copy(path: Path, compression: str) -> Iterator[Path]:
    """SQLite reads only plain files: decompress a ``.gz``/``.zst`` copy to a temporary file."""
    if compression == "none":
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="audit-logsdb-") as tmp:
        target = Path(tmp) / "logs.db"
        try:
            with open_decompressed(path, compression) as source, target.open("wb") as sink:
                shutil.copyfileobj(source, sink)
        except (OSError, EOFError) as exc:
            raise InputError(f"cannot decompress {path}: {exc}", "check that the file is complete") from None
        yield target


# --------------------------------------------------------------------------- values


def _json(text: object) -> tuple[object, bool]:
    """``(value, ok)`` of a JSON TEXT column; NULL/empty is ``(None, True)``."""
    if text is None or text == "":
        return None, True
    if not isinstance(text, str):
        return None, False
    try:
        return json.loads(text), True
    except ValueError:
        return None, False


def token_usage(model: str | None, input_tokens: object, output_tokens: object, details: dict | None) -> dict:
    """Stage usage columns for one call, in the meaning of the plugin that logged it."""
    details = details or {}
    anthropic_keys = any(k in details for k in _ANTHROPIC_DETAIL_KEYS)
    openai_keys = any(k in details for k in _OPENAI_DETAIL_KEYS)
    if anthropic_keys or (not openai_keys and "claude" in (model or "").lower()):
        return {
            "usage_semantics": "anthropic",
            "usage_input": input_tokens,
            "usage_cache_read": details.get("cache_read_input_tokens"),
            "usage_cache_write": details.get("cache_creation_input_tokens"),
            "usage_output": output_tokens,
        }

    def detail(group_keys: tuple[str, ...], key: str, flat_key: str) -> object:
        for group_key in group_keys:
            group = details.get(group_key)
            if isinstance(group, dict) and key in group:
                return group[key]
        return details.get(flat_key)

    return {
        "usage_semantics": "openai",
        "usage_input": input_tokens,
        "usage_cache_read": detail(("prompt_tokens_details", "input_tokens_details"), "cached_tokens",
                                   "cachedContentTokenCount"),
        "usage_cache_write": detail(("prompt_tokens_details", "input_tokens_details"), "cache_write_tokens",
                                    "cache_write_tokens"),
        "usage_output": output_tokens,
        "usage_reasoning": detail(("completion_tokens_details", "output_tokens_details"), "reasoning_tokens",
                                  "thoughtsTokenCount"),
    }


def _options_exprs(options: dict) -> dict:
    max_tokens = next((options[k] for k in ("max_tokens", "max_output_tokens", "max_completion_tokens")
                       if options.get(k) is not None), None)
    user = options.get("user_id")
    return {
        "temperature": options.get("temperature"),
        "max_tokens": max_tokens,
        "user_id": user if isinstance(user, str) else None,
    }


def _raw(table: str, row: dict) -> str:
    return json.dumps({"table": table, **row}, ensure_ascii=False, default=str)


def _compact(values: dict) -> str:
    return json.dumps({k: v for k, v in values.items() if v not in (None, "", {}, [])},
                      ensure_ascii=False, default=str)


def _checked_json_columns(row: dict) -> tuple[dict | None, dict | None, str | None]:
    """A call row's ``(token_details, options)`` objects, or the reason it is rejected."""
    details, details_ok = _json(row.get("token_details"))
    options, options_ok = _json(row.get("options_json"))
    if not details_ok or not isinstance(details, (dict, type(None))):
        return None, None, "token_details is not a JSON object"
    if not options_ok or not isinstance(options, (dict, type(None))):
        return None, None, "options_json is not a JSON object"
    return details, options, None


def _call_record(
    table: str, row: dict, raw: str, details: dict | None, options: dict | None, *,
    session_id: object, messages: list[dict], response_text: object, error: object = None, context: dict,
) -> dict:
    """The stage record of one call, a ``responses`` or a ``turns`` row.

    ``context`` is the table's own metadata (its conversation or thread name).
    """
    model = row.get("resolved_model") or row.get("model")
    return {
        "native_id": row["id"],
        "dedupe_key": row["id"],
        "started_at_raw": row.get("datetime_utc"),
        "model_logged": model,
        "session_id": session_id,
        "messages": json.dumps(messages, ensure_ascii=False, default=str) if messages else None,
        "response_text": response_text,
        **token_usage(model, row.get("input_tokens"), row.get("output_tokens"), details),
        "latency_ms": row.get("duration_ms"),
        "status": "error" if error else "ok",
        "error_message": error if error else None,
        "is_batch": False,
        **_options_exprs(options or {}),
        "metadata": _compact({
            "table": table,
            "model_alias": row.get("model") if row.get("resolved_model") else None,
            **context,
            "token_details": details,
            "options": options,
            "schema_id": row.get("schema_id"),
        }),
        "raw": raw,
    }


def _prompt_json_messages(prompt_json: object) -> list | None:
    """The request's message list when ``prompt_json`` holds one."""
    messages = prompt_json.get("messages") if isinstance(prompt_json, dict) else prompt_json
    if isinstance(messages, list) and messages and all(isinstance(m, dict) and "role" in m for m in messages):
        return messages
    return None


# --------------------------------------------------------------------------- responses


def _fragments_by_response(db: sqlite3.Connection, tables: set[str], link_table: str) -> dict[str, list[str]]:
    if not {link_table, "fragments"} <= tables:
        return {}
    rows = db.execute(
        f'SELECT l.response_id, f.content FROM "{link_table}" l JOIN fragments f ON f.id = l.fragment_id '
        'ORDER BY l.response_id, l."order"'
    )
    found: dict[str, list[str]] = {}
    for response_id, content in rows:
        found.setdefault(response_id, []).append(content or "")
    return found


def _response_records(db: sqlite3.Connection, tables: set[str]) -> list[dict]:
    if "responses" not in tables:
        return []
    conversations = {}
    if "conversations" in tables:
        conversations = {r["id"]: r["name"] for r in db.execute("SELECT id, name FROM conversations")}
    prompt_fragments = _fragments_by_response(db, tables, "prompt_fragments")
    system_fragments = _fragments_by_response(db, tables, "system_fragments")
    rows = [dict(r) for r in db.execute("SELECT * FROM responses ORDER BY rowid")]

    def full_prompt(row: dict) -> str | None:
        # llm's Prompt.prompt: fragments, then the typed prompt, joined by newlines.
        bits = prompt_fragments.get(row["id"], []) + ([row["prompt"]] if row.get("prompt") else [])
        return "\n".join(bits) if bits else None

    def full_system(row: dict) -> str | None:
        # llm's Prompt.system: stripped system fragments, then the system prompt, by blank lines.
        bits = [b.strip() for b in system_fragments.get(row["id"], []) + [row.get("system") or ""] if b.strip()]
        return "\n\n".join(bits) if bits else None

    # Earlier exchanges of each conversation, in id (= time) order, for rebuilding histories.
    by_conversation: dict[str, list[dict]] = {}
    for row in rows:
        if row.get("conversation_id"):
            by_conversation.setdefault(row["conversation_id"], []).append(row)
    history_of: dict[str, list[dict]] = {}
    for members in by_conversation.values():
        history: list[dict] = []
        for row in sorted(members, key=lambda r: str(r["id"])):
            history_of[row["id"]] = list(history)
            prompt = full_prompt(row)
            if prompt is not None:
                history.append({"role": "user", "content": prompt})
            if row.get("response") is not None:
                history.append({"role": "assistant", "content": row["response"]})

    records = []
    for row in rows:
        raw = _raw("responses", row)
        details, options, problem = _checked_json_columns(row)
        if problem:
            records.append({"reject_reason": problem, "raw": raw})
            continue
        prompt_json, _ = _json(row.get("prompt_json"))
        messages = _prompt_json_messages(prompt_json)
        if messages is None:
            system, prompt = full_system(row), full_prompt(row)
            messages = ([{"role": "system", "content": system}] if system else []) + history_of.get(row["id"], []) + (
                [{"role": "user", "content": prompt}] if prompt is not None else [])
        records.append(_call_record(
            "responses", row, raw, details, options,
            session_id=row.get("conversation_id"), messages=messages, response_text=row.get("response"),
            context={"conversation_name": conversations.get(row.get("conversation_id"))},
        ))
    return records


# --------------------------------------------------------------------------- turns (0.32+ message store)


class _MessageStore:
    """The ``messages``/``parts`` tree, loaded once, with the text each message sent."""

    def __init__(self, db: sqlite3.Connection, tables: set[str]) -> None:
        self.parent: dict[str, str | None] = {}
        self.role: dict[str, str] = {}
        if "messages" in tables:
            for r in db.execute("SELECT hash, parent_hash, role FROM messages"):
                self.parent[r["hash"]] = r["parent_hash"]
                self.role[r["hash"]] = r["role"]
        self.fragments: dict[int, str] = {}
        if "fragments" in tables:
            self.fragments = {r["id"]: r["content"] or "" for r in db.execute("SELECT id, content FROM fragments")}
        self.parts: dict[str, list[dict]] = {}
        if "parts" in tables:
            for r in db.execute('SELECT * FROM parts ORDER BY message_hash, position'):
                self.parts.setdefault(r["message_hash"], []).append(dict(r))

    def chain(self, tip: str | None, stop: str | None = None) -> list[str]:
        """Message hashes from just after ``stop`` (or the root) to ``tip``, oldest first."""
        hashes: list[str] = []
        current = tip
        while current is not None and current != stop and current in self.parent and len(hashes) < _MAX_CHAIN:
            hashes.append(current)
            current = self.parent[current]
        return hashes[::-1]

    def _text(self, part: dict) -> str | None:
        if part.get("text") is not None:
            return part["text"]
        payload, _ = _json(part.get("payload"))
        payload = payload if isinstance(payload, dict) else {}
        if isinstance(payload.get("text"), str):        # 0.32 alpha payloads kept the text inline
            return payload["text"]
        if isinstance(payload.get("text_ref"), list):   # fragments by reference, plus literal segments
            pieces = []
            for piece in payload["text_ref"]:
                if isinstance(piece, dict) and isinstance(piece.get("literal"), str):
                    pieces.append(piece["literal"])
                elif isinstance(piece, dict) and piece.get("fragment") in self.fragments:
                    pieces.append(self.fragments[piece["fragment"]])
            return "".join(pieces)
        return None

    def content(self, message_hash: str, *, replies_only: bool = False) -> str:
        """What the message carried as text: text parts, and (for prompts) tool calls and results."""
        pieces = []
        for part in self.parts.get(message_hash, []):
            kind = part.get("type")
            if kind == "text":
                pieces.append(self._text(part) or "")
            elif replies_only:
                continue
            elif kind == "tool_call":
                payload, _ = _json(part.get("payload"))
                payload = payload if isinstance(payload, dict) else {}
                pieces.append(json.dumps({
                    "name": part.get("tool_name") or part.get("name") or payload.get("name"),
                    "arguments": payload.get("arguments", part.get("arguments")),
                }, ensure_ascii=False, default=str))
            elif kind == "tool_result":
                payload, _ = _json(part.get("payload"))
                payload = payload if isinstance(payload, dict) else {}
                output = payload.get("output", part.get("output"))
                pieces.append(output if isinstance(output, str) else json.dumps(output, default=str))
        return "".join(pieces)


def _turn_records(db: sqlite3.Connection, tables: set[str]) -> list[dict]:
    if "turns" not in tables:
        return []
    store = _MessageStore(db, tables)
    threads = {}
    if "threads" in tables:
        threads = {r["id"]: r["name"] for r in db.execute("SELECT id, name FROM threads")}
    records = []
    for row in (dict(r) for r in db.execute("SELECT * FROM turns ORDER BY rowid")):
        raw = _raw("turns", row)
        details, options, problem = _checked_json_columns(row)
        if problem:
            records.append({"reject_reason": problem, "raw": raw})
            continue
        parent, tip = row.get("parent_message_hash"), row.get("tip_message_hash")
        messages = [{"role": store.role[h], "content": store.content(h)} for h in store.chain(parent)]
        replies = [store.content(h, replies_only=True) for h in store.chain(tip, stop=parent)
                   if store.role.get(h) == "assistant"] if tip != parent else []
        records.append(_call_record(
            "turns", row, raw, details, options,
            session_id=row.get("thread_id"), messages=messages,
            response_text="".join(replies) if replies else None, error=row.get("error"),
            context={"thread_name": threads.get(row.get("thread_id"))},
        ))
    return records


class LlmLogsDb(Format):
    name = "llm-logsdb"
    description = "simonw/llm logs.db (SQLite): responses and the 0.32+ turns/messages/parts tables"

    def sniff(self, sample: Sample) -> bool:
        if not sample.head.startswith(SQLITE_HEADER):
            return False
        try:
            db = _connect_read_only(sample.path)
            try:
                return bool(CALL_TABLES & _tables(db))
            finally:
                db.close()
        except (InputError, sqlite3.Error):
            # Compressed (sniffing saw the decompressed head) or damaged: look at the schema text.
            return bool(_CALL_TABLE_SQL.search(sample.head))

    def stage_sql(self, con: duckdb.DuckDBPyConnection, path: Path, options: IngestOptions, file_id: int) -> str:
        with _plain_copy(path, options.compression) as plain:
            db = _connect_read_only(plain)
            try:
                tables = _tables(db)
                if not CALL_TABLES & tables:
                    raise InputError(f"{path} has neither a responses nor a turns table",
                                     "is it an llm logs.db? (`llm logs path` prints where it is)")
                records = _response_records(db, tables) + _turn_records(db, tables)
            except sqlite3.Error as exc:
                raise InputError(f"cannot read {path}: {exc}", "check that the file is a complete logs.db") from None
            finally:
                db.close()
        return records_stage(con, f"_records_{file_id}", number_rows(records))
