"""Prompt templates mined from raw prompts, without tagging.

Reads: ``requests``. Writes: ``templates`` (template_id, source, name,
signature, example_request_id; the call/spend columns are rolled up by
``audit.analyze`` and the task columns filled by ``audit.tasks``) and
``request_templates`` (one row per request: its template and the masked
variable values, in order, as a JSON list). Both are rewritten on every run
(delete then insert, one transaction): the same ledger gives the same rows and
the same ids. Works in TEMP tables ``_tm_*`` (dropped at the end) and TEMP
macros ``tm_*`` on the connection.

What a template is
------------------
The fixed skeleton of a prompt: the system prompt and the instruction text,
with the variable parts masked. The template of a multi-turn call is its
*system prompt* (the first message, when its role is ``system`` or
``developer``) plus the skeleton of its *first user message*; the rest of the
history (retrieved articles, later turns, replies) is ignored, so every turn
of a conversation belongs to the same template.

Method (set-based SQL in DuckDB; Python only over distinct system-prompt keys and templates)
--------------------------------------------------------------------------------------------
1. **Extract** the system prompt and the first user message with one JSON
   parse per request (content-block lists are joined to their text). All
   later work runs on the distinct (system prompt, first user message) pairs,
   weighted by their calls: FAQ questions and every turn of a chat repeat them.
   System prompt texts are read once per distinct prompt, by rowid.
2. **Mask** each distinct line once (lines are the unit: prompt authors put
   one instruction or one field per line):

   - a ``Key: value`` line (key: capitalised, at most four words) keeps its
     key and masks the value as ``{text}``: form fields such as
     ``Tone: formal`` or ``Product ID: P-10023`` are slots whatever their
     value looks like;
   - otherwise emails, URLs, UUIDs, dates, times, amounts, ids (letters + 3 or
     more digits, long hex) and numbers become ``{email}``, ``{url}``,
     ``{date}``, ``{time}``, ``{amount}``, ``{id}``, ``{number}``; in user
     messages, quoted text becomes ``{text}`` too. One alternation regex does
     the split and the value extraction, so values line up with placeholders.
3. **System prompt skeleton.** A prompt's *structure* is which masked line
   sits at which position; the analysis runs on distinct structures (sampled
   chat logs have one distinct system prompt per customer, but one
   structure). Structures are grouped by their masked first line (the
   *anchor*: a system prompt opens with who the model is). A masked line is
   *fixed* when the prompts containing it carry at least ``SYSTEM_LINE_SHARE``
   (half) of the anchor group's calls; other lines (a name, retrieved
   documents) are variable, shown as one ``{text}`` per run. The key is the
   fixed lines, in order. **Versions**: two keys of one anchor whose fixed
   lines overlap by ``VERSION_OVERLAP`` (Jaccard, 0.8) are one template, the
   larger key's (a prompt that gained a rule is still the same prompt).
4. **User-message instruction prefix.** Within the calls sharing a
   system-prompt key, the user message's leading lines are walked like a
   prefix tree: line *j* joins the skeleton while the calls that share lines
   1..j are at least ``USER_LINE_SHARE`` (half) of those sharing lines 1..j-1,
   at least two calls, with at least two different messages behind them (an
   instruction is followed by varying content), and the line is not the whole
   rest of the message (a one-line message such as an FAQ question or a chat
   opener is all variable) unless it is a ``Key: value`` line. The walk stops
   at the first line that fails, so a greeting or the first line of a pasted
   document ends the skeleton. With no (or a one-line, generic) system
   prompt, the first user line is the only place an instruction can be, and
   its bar drops to ``OPEN_USER_LINE_SHARE`` (2%) of the calls.
   Examples: product summaries get ``Summarize this product description ...``,
   ``Product ID: {text}``, ``Product name: {text}``, ... then ``{text}``; FAQ
   calls get their system prompt and ``{text}``.
5. **Explicit names win.** A request whose source logged a prompt name
   (``requests.prompt_name``) belongs to the template of that name.
   ``prompt_version`` is ignored: versions of one prompt are one template
   (the FAQ prompt's v3 and v4 differ by one rule; their spend belongs
   together), and the per-request version stays in ``requests``. Requests
   *without* a name join the named template whose name is the most common
   among the named requests of their skeleton: sources often tag only part of
   a template's traffic.
6. Requests that logged no prompt text (``messages`` NULL: usage-only exports)
   get one template per model, named ``(no prompt logged: <model>)``, source
   ``mined``; the summary says how many.

Ids: explicit templates are ``md5('explicit:' || name)``, mined ones
``md5('mined:' || skeleton)`` (the masked fixed lines), prompt-less ones
``md5('no-prompt:' || model)`` (first 16 hex digits). The signature renders
the example request: ``[system]`` lines then ``[user]`` lines; a fixed line
written the same way everywhere is shown as written, one whose values vary is
shown masked (``{number}``, ``{date}``, ...), and variable text is ``{text}``.
The example request is the smallest request id of the template's most common
skeleton (preferring its main system-prompt version). The name is the
explicit name, or the system prompt's opening words (the user instruction's
behind a generic system prompt), numbered when two templates would share one.

Slots: the JSON list of the values behind the signature's placeholders, in
order: the system prompt's (a variable run of lines is one value), the user
instruction lines', then the rest of the user message (its first
``REMAINDER_CHARS`` characters: the slot identifies the value, the full text
stays in ``requests.messages``). Values of lines that are constant within
their prompt structure are not slots. NULL for requests without prompt text.

Assumptions, and where the method is weak: a system prompt's first line is
fixed text; templates sharing one system prompt are told apart by their user
instruction only when each holds at least half of the calls at the point
where they differ (a minority instruction behind a shared, specific system
prompt is merged into the majority one); ``Key: value`` lines are always
slots, so two templates that differ only in such a value are merged; only
the first ``MAX_USER_LINES`` non-empty lines of a user message can be
instruction text.

Cost: one JSON parse of every request's messages (the bulk of the time: see
``seconds.extract`` in the summary), then work proportional to the distinct
prompts and distinct lines, not to the calls.

Accuracy against a generator's ground truth: ``score_against_truth`` gives the
adjusted Rand index and the share of requests in a correctly identified
template (see ``correct_share``).
"""

from __future__ import annotations

import csv
import gzip
import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from math import comb
from pathlib import Path
from typing import Any

import duckdb

# Tuning. A line is part of the system prompt's skeleton when the prompts
# containing it carry this share of its anchor group's calls.
SYSTEM_LINE_SHARE = 0.5
# A user line extends the instruction prefix when this share of the requests
# at the previous prefix share it...
USER_LINE_SHARE = 0.5
# ...or, for the first user line behind no (or a generic) system prompt, this.
OPEN_USER_LINE_SHARE = 0.02
# A system prompt of one fixed line shorter than this is generic ("You are a
# helpful assistant."): it does not identify a template on its own.
GENERIC_SYSTEM_CHARS = 120
# How many leading non-empty user lines can be instruction text, and how much
# of each line is looked at.
MAX_USER_LINES = 8
LINE_CHARS = 1000
# Characters of the user message's variable rest kept as its slot value.
REMAINDER_CHARS = 500
# How many first messages are read to find the first user message.
FIRST_MESSAGES = 4
# Two system prompts with the same first line whose fixed-line sets overlap by
# this much (Jaccard) are versions of one prompt: one template.
VERSION_OVERLAP = 0.8
# Versions compared per anchor (keeps the pass linear on pathological logs).
MAX_VERSION_CANDIDATES = 50

# --------------------------------------------------------------------------- masks

_MONTH = (r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?"
          r"|Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)")
# Entity patterns, in the order the alternation tries them at one position.
ENTITY_PATTERNS: dict[str, str] = {
    "email": r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+",
    "url": r"https?://[^\s\"'<>()\[\]]*[^\s\"'<>()\[\].,;:!?]",
    "uuid": r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b",
    "date": (r"\b\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?"
             r"|\b\d{1,2}/\d{1,2}/\d{2,4}\b"
             rf"|\b{_MONTH}\.? \d{{1,2}}(?:st|nd|rd|th)?(?:,? \d{{4}})?\b"
             rf"|\b\d{{1,2}}(?:st|nd|rd|th)? {_MONTH}\.?(?:,? \d{{4}})?\b"
             rf"|\b{_MONTH} \d{{4}}\b"),
    "time": r"\b\d{1,2}:\d{2}(?::\d{2})?(?: ?[AaPp]\.?[Mm]\b\.?)?",
    "amount": r"[$€£] ?\d[\d,]*(?:\.\d+)?|\b\d[\d,]*(?:\.\d+)? ?(?:USD|EUR|GBP)\b",
    "id": r"\b[A-Za-z]{1,10}[-_#]?\d{3,}[A-Za-z0-9_-]*|\b[0-9a-fA-F]{16,}\b|\b[a-z]+_[A-Za-z0-9]*\d[A-Za-z0-9_]*",
    "number": r"\b\d+(?:[.,]\d+)*%?",
}
QUOTED_PATTERN = r"\"[^\"\n]{1,300}\"|“[^”\n]{1,300}”"
# ``Key: value`` form lines: a capitalised key of at most four words (an
# optional list bullet before it), a colon, a non-empty value.
KEY_VALUE_PATTERN = r"^((?:[-*•] +)?[A-Z][\w'/&-]*(?: [\w'/&-]+| \([^()]*\)){0,3}):[ \t]+(\S.*)$"

SYSTEM_ENTITIES = "|".join(ENTITY_PATTERNS.values())
USER_ENTITIES = QUOTED_PATTERN + "|" + SYSTEM_ENTITIES


def _lit(text: str) -> str:
    """A SQL string literal (DuckDB keeps backslashes as they are)."""
    return "'" + text.replace("'", "''") + "'"


# The placeholder a matched value gets: the patterns again, anchored, in order.
_SLOT_TYPE_SQL = (
    "CASE WHEN v[1] IN ('\"', '“') THEN 'text' WHEN contains(v, '@') THEN 'email' "
    "WHEN starts_with(v, 'http') THEN 'url' "
    + " ".join(f"WHEN regexp_full_match(v, {_lit('(?:' + ENTITY_PATTERNS[k] + ')')}) THEN '{name}'"
               for k, name in (("uuid", "id"), ("date", "date"), ("time", "time"), ("amount", "amount"),
                               ("number", "number")))
    + " ELSE 'id' END"
)

_MACROS = f"""
-- trim() alone strips spaces only (lines may end in a carriage return or tabs),
-- and trim() with a character list is slower than this regex.
CREATE OR REPLACE TEMP MACRO tm_trim(s) AS regexp_replace(s, '^\\s+|\\s+$', '', 'g');
CREATE OR REPLACE TEMP MACRO tm_text(c) AS
    CASE WHEN c LIKE '[{{%' AND json_valid(c) THEN array_to_string(json_extract_string(c, '$[*].text'), chr(10))
         ELSE c END;
CREATE OR REPLACE TEMP MACRO tm_slot_type(v) AS {_SLOT_TYPE_SQL};
-- pieces: the text between matches; vals: the matches. Rebuilt with placeholders.
CREATE OR REPLACE TEMP MACRO tm_assemble(pieces, vals) AS
    pieces[1] || array_to_string(list_transform(vals, lambda v, k: '{{' || tm_slot_type(v) || '}}' || pieces[k + 1]), '');
"""


# --------------------------------------------------------------------------- mining


def mine_templates(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """Group every request into a prompt template; rewrite ``templates`` and ``request_templates``.

    Returns a summary: template counts (explicit / mined), requests covered,
    requests without prompt text, and the seconds each phase took (``extract``:
    reading the prompts out of ``requests.messages``; ``mine``; ``write``).
    """
    con.execute(_MACROS)
    clock = [time.perf_counter()]

    def lap() -> float:
        clock.append(time.perf_counter())
        return round(clock[-1] - clock[-2], 3)

    try:
        _extract_prompts(con)
        seconds = {"extract": lap()}
        _system_skeletons(con)
        _merge_versions(con)
        _user_prefixes(con)
        _assign(con)
        templates = _template_rows(con)
        seconds["mine"] = lap()
        _write(con, templates)
        seconds["write"] = lap()
        seconds["total"] = round(clock[-1] - clock[0], 3)
        return {**_summary(con, templates), "seconds": seconds}
    finally:
        for table in _TEMP_TABLES:
            con.execute(f"DROP TABLE IF EXISTS {table}")


# Working tables, all TEMP (on the connection, never in the file), dropped at the end.
_TEMP_TABLES = ("_tm_req", "_tm_prompts", "_tm_sys", "_tm_sys_lines", "_tm_sys_masks", "_tm_sys_struct",
                "_tm_struct_lines", "_tm_sys_key", "_tm_versions", "_tm_lines", "_tm_user_masks", "_tm_levels",
                "_tm_judged", "_tm_run", "_tm_skeletons", "_tm_assign", "_tm_ids")


def _extract_prompts(con: duckdb.DuckDBPyConnection) -> None:
    """Read the prompts out of ``requests.messages``: everything later works on these tables.

    ``_tm_req``: per request, its system prompt's hash and first user message
    (one JSON parse each); ``_tm_prompts``: the distinct (system prompt, first
    user message) pairs; ``_tm_sys``: the text of each distinct system prompt.
    That text is not kept per request (a chat re-sends the same 4 KB prompt on
    every turn, and copying it costs as much as parsing): it is read again
    once per distinct prompt, by rowid.
    """
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _tm_req AS
        SELECT *, CASE WHEN has_prompt THEN hash(sys_hash, usr) END AS prompt_hash
        FROM (SELECT rid, request_id, model, prompt_name, has_prompt, hash({_system_sql('f')}) AS sys_hash,
                     coalesce(tm_text(CASE {_first_user_sql('f')} END), '') AS usr
              FROM (SELECT rowid AS rid, request_id, model, nullif(trim(prompt_name), '') AS prompt_name,
                           messages IS NOT NULL AS has_prompt,
                           CASE WHEN messages IS NOT NULL THEN json_extract_string(messages, {_first_messages_paths()}) END
                               AS f
                    FROM requests))"""
    )
    # Distinct (system prompt, first user message) pairs: FAQ questions and
    # chat turns repeat them, so all mining runs on these, weighted by calls.
    con.execute(
        """CREATE OR REPLACE TEMP TABLE _tm_prompts AS
        SELECT prompt_hash, any_value(sys_hash) AS sys_hash, any_value(usr) AS usr, count(*) AS calls
        FROM _tm_req WHERE has_prompt GROUP BY prompt_hash"""
    )
    # The text of each distinct system prompt, read once, by rowid.
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _tm_sys AS
        WITH distinct_prompts AS (
            SELECT sys_hash, min(rid) AS rid, count(*) AS calls FROM _tm_req WHERE has_prompt GROUP BY sys_hash),
        texts AS (
            SELECT rowid AS rid, {_system_sql("json_extract_string(messages, ['$[0].role', '$[0].content'])")} AS sys
            FROM requests WHERE rowid IN (SELECT rid FROM distinct_prompts))
        SELECT d.sys_hash, d.calls, t.sys FROM distinct_prompts d JOIN texts t USING (rid)"""
    )


def _first_messages_paths() -> str:
    return "[" + ", ".join(f"'$[{i}].role', '$[{i}].content'" for i in range(FIRST_MESSAGES)) + "]"


def _system_sql(f: str) -> str:
    """The system prompt from the extracted [role, content, ...] list (empty when the first message is not one)."""
    return f"CASE WHEN {f}[1] IN ('system', 'developer') THEN coalesce(tm_text({f}[2]), '') ELSE '' END"


def _first_user_sql(f: str) -> str:
    return " ".join(f"WHEN {f}[{2 * i + 1}] = 'user' THEN {f}[{2 * i + 2}]" for i in range(FIRST_MESSAGES))


def _system_skeletons(con: duckdb.DuckDBPyConnection) -> None:
    """Per distinct system prompt: which lines are fixed, its key (``parent``) and its slot values.

    Sampled chat logs hold about one distinct system prompt per call (the
    customer context differs), each a few KB of mostly shared lines. So the
    line analysis runs on *structures*: a prompt's structure is which masked
    line sits at which position; prompts that differ only in masked values
    (names, e-mails, order ids behind ``Key:``) share it. Per-prompt work is
    reduced to hashing its lines and picking up the values of its slot lines.
    """
    con.execute(
        """CREATE OR REPLACE TEMP TABLE _tm_sys_lines AS
        SELECT sys_hash, calls, hash(unnest(lines)) AS line_hash, generate_subscripts(lines, 1) AS pos
        FROM (SELECT sys_hash, calls, string_split(sys, chr(10)) AS lines FROM _tm_sys)"""
    )
    _mask_lines(con, "_tm_sys_masks", """SELECT hash(line) AS line_hash, any_value(line) AS line
        FROM (SELECT unnest(string_split(sys, chr(10))) AS line FROM _tm_sys) GROUP BY ALL""", SYSTEM_ENTITIES)
    # Blank lines have no mask row, so they drop out of the structure.
    con.execute(
        """CREATE OR REPLACE TEMP TABLE _tm_sys_struct AS
        SELECT l.sys_hash, any_value(l.calls) AS calls, hash(sum(hash(l.pos, m.masked_hash)::HUGEINT)) AS struct
        FROM _tm_sys_lines l JOIN _tm_sys_masks m USING (line_hash) GROUP BY l.sys_hash"""
    )
    # The anchor (masked first line) groups a prompt with its versions and
    # per-customer variants; a line is fixed when prompts holding at least
    # SYSTEM_LINE_SHARE of the anchor group's calls contain it, and constant
    # when every prompt of its structure writes it the same way (then its
    # values are text, not slots: "9." and "10." of two prompt versions are
    # not a per-request value). A line is known by its masked text and which
    # occurrence of it it is (a prompt may repeat "Customer: {text}" with
    # different examples).
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _tm_struct_lines AS
        WITH structs AS (SELECT struct, sum(calls) AS calls FROM _tm_sys_struct GROUP BY struct),
        spellings AS (
            SELECT s.struct, l.pos, min(l.line_hash) AS line_hash, min(l.line_hash) = max(l.line_hash) AS one_spelling
            FROM _tm_sys_lines l JOIN _tm_sys_struct s USING (sys_hash) GROUP BY ALL),
        shaped AS (
            SELECT st.struct, st.calls, sp.pos, sp.line_hash, sp.one_spelling, m.masked_hash, m.vals_json,
                   hash(m.masked_hash, row_number() OVER (PARTITION BY st.struct, m.masked_hash ORDER BY sp.pos))
                       AS line_key
            FROM structs st JOIN spellings sp USING (struct) JOIN _tm_sys_masks m USING (line_hash)),
        anchors AS (SELECT struct, any_value(calls) AS calls, arg_min(line_key, pos) AS anchor
                    FROM shaped GROUP BY struct),
        anchor_calls AS (SELECT anchor, sum(calls) AS calls FROM anchors GROUP BY anchor),
        line_calls AS (
            SELECT a.anchor, s.line_key, sum(a.calls) AS calls FROM shaped s JOIN anchors a USING (struct) GROUP BY ALL),
        judged AS (
            SELECT s.struct, s.pos, s.line_hash, s.line_key, s.vals_json, a.anchor,
                   lc.calls >= {SYSTEM_LINE_SHARE} * ac.calls AS fixed, s.one_spelling AS constant
            FROM shaped s JOIN anchors a USING (struct) JOIN anchor_calls ac USING (anchor)
            JOIN line_calls lc ON lc.anchor = a.anchor AND lc.line_key = s.line_key)
        SELECT *, sum(CASE WHEN fixed OR previous_fixed THEN 1 ELSE 0 END) OVER (PARTITION BY struct ORDER BY pos)
                      AS segment
        FROM (SELECT *, coalesce(lag(fixed) OVER (PARTITION BY struct ORDER BY pos), true) AS previous_fixed
              FROM judged)"""
    )
    # Slot values per prompt: the masked values of fixed lines that are not
    # constant, and each run of variable lines as one value (lines joined).
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _tm_sys_key AS
        WITH slot_positions AS (
            SELECT struct, pos, fixed, segment FROM _tm_struct_lines
            WHERE NOT fixed OR (NOT constant AND vals_json <> '')),
        slot_lines AS (
            SELECT s.sys_hash, p.segment, p.fixed, l.pos, m.vals_json, m.line
            FROM _tm_sys_lines l JOIN _tm_sys_struct s USING (sys_hash)
            JOIN slot_positions p ON p.struct = s.struct AND p.pos = l.pos
            JOIN _tm_sys_masks m ON m.line_hash = l.line_hash),
        elements AS (
            SELECT sys_hash, segment,
                   CASE WHEN bool_or(fixed) THEN any_value(vals_json)
                        ELSE to_json(string_agg(line, chr(10) ORDER BY pos))::VARCHAR END AS element
            FROM slot_lines GROUP BY sys_hash, segment),
        slots AS (SELECT sys_hash, string_agg(element, ',' ORDER BY segment) AS slots FROM elements GROUP BY sys_hash),
        keys AS (
            SELECT struct, any_value(anchor) AS anchor, list(line_key ORDER BY pos) FILTER (WHERE fixed) AS fixed_lines
            FROM _tm_struct_lines GROUP BY struct)
        SELECT s.sys_hash, s.calls, st.struct, k.anchor, coalesce(k.fixed_lines, []::UBIGINT[]) AS fixed_lines,
               hash(coalesce(k.fixed_lines, []::UBIGINT[])) AS parent,
               len(coalesce(k.fixed_lines, [])) <= 1 AND length(s.sys) < {GENERIC_SYSTEM_CHARS} AS generic,
               coalesce(sl.slots, '') AS slots
        FROM _tm_sys s LEFT JOIN _tm_sys_struct st USING (sys_hash) LEFT JOIN keys k USING (struct)
        LEFT JOIN slots sl USING (sys_hash)"""
    )


def _mask_lines(con: duckdb.DuckDBPyConnection, table: str, distinct_lines_sql: str, entities: str) -> None:
    """Mask each distinct non-blank line once: (line_hash, line (trimmed), masked, masked_hash, is_kv, vals_json).

    ``vals_json`` holds the masked values as JSON array *elements* (no
    brackets; '' when none), ready to be joined into a request's slot list.
    """
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE {table} AS
        SELECT line_hash, line, masked, hash(masked) AS masked_hash, is_kv,
               CASE WHEN len(vals) = 0 THEN '' ELSE substring(to_json(vals)::VARCHAR, 2, length(to_json(vals)::VARCHAR) - 2) END
                   AS vals_json
        FROM (
            SELECT line_hash, line, kv.value <> '' AS is_kv,
                   CASE WHEN kv.value <> '' THEN kv.key || ': {{text}}' ELSE tm_assemble(pieces, found) END AS masked,
                   CASE WHEN kv.value <> '' THEN [kv.value] ELSE found END AS vals
            FROM (SELECT line_hash, line, regexp_extract(line, {_lit(KEY_VALUE_PATTERN)}, ['key', 'value']) AS kv,
                         regexp_split_to_array(line, {_lit(entities)}) AS pieces,
                         regexp_extract_all(line, {_lit(entities)}) AS found
                  FROM (SELECT line_hash, tm_trim(line) AS line FROM ({distinct_lines_sql}))
                  WHERE line <> ''))"""
    )


def _merge_versions(con: duckdb.DuckDBPyConnection) -> None:
    """Versions of one system prompt are one template: same anchor, fixed lines overlapping by VERSION_OVERLAP.

    Runs over the distinct system-prompt keys (a handful per anchor), largest
    first: a key joins the first larger key of its anchor whose fixed-line set
    it overlaps (Jaccard) by at least VERSION_OVERLAP.
    """
    keys = con.execute(
        """SELECT parent, any_value(anchor), any_value(fixed_lines), sum(calls) AS calls
        FROM _tm_sys_key WHERE anchor IS NOT NULL GROUP BY parent ORDER BY calls DESC, parent"""
    ).fetchall()
    by_anchor: dict[Any, list[tuple[Any, set]]] = defaultdict(list)
    merged: list[tuple[Any, Any]] = []
    for parent, anchor, fixed_lines, _calls in keys:
        lines = set(fixed_lines)
        for canonical, canonical_lines in by_anchor[anchor][:MAX_VERSION_CANDIDATES]:
            if len(lines & canonical_lines) >= VERSION_OVERLAP * len(lines | canonical_lines):
                merged.append((parent, canonical))
                break
        else:
            by_anchor[anchor].append((parent, lines))
    con.execute("CREATE OR REPLACE TEMP TABLE _tm_versions (parent UBIGINT, canonical UBIGINT)")
    if merged:
        con.executemany("INSERT INTO _tm_versions VALUES (?, ?)", merged)
    con.execute(
        """CREATE OR REPLACE TEMP TABLE _tm_sys_key AS
        SELECT k.* EXCLUDE (parent), coalesce(v.canonical, k.parent) AS parent, k.parent AS own_parent
        FROM _tm_sys_key k LEFT JOIN _tm_versions v USING (parent)"""
    )


def _user_prefixes(con: duckdb.DuckDBPyConnection) -> None:
    """The instruction prefix of every distinct prompt's first user message (module docstring, step 4).

    Only messages of several lines, or one ``Key: value`` line, can carry
    instruction text; their first MAX_USER_LINES non-empty lines (within the
    first 2 x MAX_USER_LINES lines) become one row each. A prefix-tree node is
    identified by the parent key and the running sum of hash(line number,
    masked line), so no list of lines is ever rebuilt. Counts are calls (each
    distinct prompt weighs its number of requests).
    """
    kv = _lit(KEY_VALUE_PATTERN)
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _tm_lines AS
        SELECT prompt_hash, calls, parent, generic, usr_hash, n, j, line, hash(line) AS line_hash
        FROM (SELECT prompt_hash, calls, parent, generic, usr_hash, len(lines) AS n,
                     left(unnest(lines), {LINE_CHARS}) AS line, generate_subscripts(lines, 1) AS j
              FROM (SELECT p.prompt_hash, p.calls, k.parent, k.generic, hash(p.usr) AS usr_hash,
                           list_filter(string_split(p.usr, chr(10))[1:{2 * MAX_USER_LINES}], lambda x: regexp_matches(x, '\\S'))
                               [1:{MAX_USER_LINES}] AS lines
                    FROM _tm_prompts p JOIN _tm_sys_key k USING (sys_hash)
                    WHERE contains(p.usr, chr(10)) OR regexp_matches(p.usr, {kv})))"""
    )
    _mask_lines(con, "_tm_user_masks", "SELECT line_hash, any_value(line) AS line FROM _tm_lines GROUP BY line_hash",
                USER_ENTITIES)
    con.execute(
        """CREATE OR REPLACE TEMP TABLE _tm_levels AS
        SELECT prompt_hash, calls, usr_hash, generic, j, line_hash, vals_json, candidate,
               hash(parent, prefix) AS node, hash(parent, prefix - line_key) AS up
        FROM (SELECT *, sum(line_key) OVER (PARTITION BY prompt_hash ORDER BY j) AS prefix
              FROM (SELECT l.prompt_hash, l.calls, l.parent, l.generic, l.usr_hash, l.j, l.line_hash, m.vals_json,
                           l.j < l.n OR m.is_kv AS candidate,
                           hash(l.j, m.masked_hash)::HUGEINT AS line_key
                    FROM _tm_lines l JOIN _tm_user_masks m USING (line_hash)))"""
    )
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _tm_judged AS
        WITH nodes AS (
            SELECT node, sum(calls) AS calls, count(DISTINCT usr_hash) AS messages,
                   count(DISTINCT line_hash) = 1 AS constant
            FROM _tm_levels GROUP BY node),
        roots AS (
            SELECT hash(k.parent, 0::HUGEINT) AS node, sum(p.calls) AS calls
            FROM _tm_prompts p JOIN _tm_sys_key k USING (sys_hash) GROUP BY k.parent)
        SELECT l.prompt_hash, l.j, l.node, l.line_hash, l.vals_json, n.constant,
               l.candidate AND n.calls >= 2 AND n.messages >= 2
               AND n.calls >= CASE WHEN l.j = 1 AND l.generic THEN {OPEN_USER_LINE_SHARE} ELSE {USER_LINE_SHARE} END
                              * coalesce(u.calls, r.calls) AS fixed
        FROM _tm_levels l JOIN nodes n USING (node)
        LEFT JOIN nodes u ON u.node = l.up LEFT JOIN roots r ON r.node = l.up"""
    )
    # Per prompt: how many leading lines are instruction text, the skeleton
    # node they end at, and the masked values of the ones that vary.
    con.execute(
        """CREATE OR REPLACE TEMP TABLE _tm_run AS
        WITH runs AS (
            SELECT prompt_hash, coalesce(min(j) FILTER (WHERE NOT fixed) - 1, max(j)) AS run
            FROM _tm_judged GROUP BY prompt_hash)
        SELECT r.prompt_hash, any_value(r.run) AS run, any_value(j.node) FILTER (WHERE j.j = r.run) AS skeleton_node,
               coalesce(string_agg(j.vals_json, ',' ORDER BY j.j) FILTER (WHERE NOT j.constant AND j.vals_json <> ''), '')
                   AS vals_json
        FROM runs r JOIN _tm_judged j ON j.prompt_hash = r.prompt_hash AND j.j <= r.run
        WHERE r.run > 0 GROUP BY r.prompt_hash"""
    )


def _assign(con: duckdb.DuckDBPyConnection) -> None:
    """Every prompt's skeleton and slots, and the template key every request lands in.

    Keys: ``explicit:<name>`` (its own name, or the majority name of its
    skeleton), ``mined:<skeleton>``, ``no-prompt:<model>``. Slot lists are
    joined as JSON text (the system prompt's values, the user instruction's,
    then the rest of the user message), much cheaper than a list per prompt.
    """
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _tm_skeletons AS
        SELECT prompt_hash, sys_hash, canonical, run, skeleton, rest <> '' AS has_rest,
               ('[' || concat_ws(',', nullif(sys_slots, ''), nullif(user_vals, ''),
                                CASE WHEN rest <> '' THEN to_json(left(rest, {REMAINDER_CHARS}))::VARCHAR END)
                || ']')::JSON AS slots
        FROM (
            SELECT p.prompt_hash, p.sys_hash, k.parent = k.own_parent AS canonical,
                   coalesce(x.run, 0) AS run, k.slots AS sys_slots, coalesce(x.vals_json, '') AS user_vals,
                   coalesce(x.skeleton_node, hash(k.parent, 0::HUGEINT)) AS skeleton,
                   CASE WHEN x.run IS NULL THEN tm_trim(p.usr) {_skip_lines_sql("x.run", "p.usr")} END AS rest
            FROM _tm_prompts p JOIN _tm_sys_key k USING (sys_hash) LEFT JOIN _tm_run x USING (prompt_hash))"""
    )
    # The most common explicit name among each skeleton's named requests (ties: the first name).
    con.execute(
        """CREATE OR REPLACE TEMP TABLE _tm_assign AS
        WITH requests AS (
            SELECT r.request_id, r.model, r.prompt_name, r.has_prompt, r.prompt_hash, s.skeleton, s.canonical
            FROM _tm_req r LEFT JOIN _tm_skeletons s USING (prompt_hash)),
        named AS (
            SELECT skeleton, first(prompt_name ORDER BY calls DESC, prompt_name) AS majority_name
            FROM (SELECT skeleton, prompt_name, count(*) AS calls FROM requests
                  WHERE skeleton IS NOT NULL AND prompt_name IS NOT NULL GROUP BY ALL)
            GROUP BY skeleton)
        SELECT r.request_id, r.prompt_hash, r.skeleton, r.canonical, r.has_prompt,
               CASE WHEN r.prompt_name IS NOT NULL THEN 'explicit:' || r.prompt_name
                    WHEN NOT r.has_prompt THEN 'no-prompt:' || coalesce(r.model, '(unknown model)')
                    WHEN n.majority_name IS NOT NULL THEN 'explicit:' || n.majority_name
                    ELSE 'mined:' || r.skeleton::VARCHAR END AS template_key
        FROM requests r LEFT JOIN named n USING (skeleton)"""
    )


def _skip_lines_sql(count: str, text: str) -> str:
    """CASE branches: ``text`` without its first ``count`` non-empty lines and the blank space after them.

    One anchored regex per possible count (constants compile once), which
    reads only the lines it skips. (trim() with a character list is slow on
    long texts; the regex takes the leading blank space along.)
    """
    return " ".join(
        f"WHEN {count} = {k} THEN regexp_replace({text}, '^(?:\\s*\\S[^\\n]*(?:\\n|$)){{{k}}}\\s*', '')"
        for k in range(1, MAX_USER_LINES + 1)
    )


def _template_rows(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """One row per template key, rendered from an example request of its most common skeleton.

    The example is the smallest request id of that skeleton, preferring
    requests whose system prompt is the skeleton's main version. Constant
    lines are shown as written; lines whose values vary are shown masked.
    """
    rows = con.execute(
        """WITH per_skeleton AS (
            SELECT template_key, skeleton, count(*) AS calls,
                   first(request_id ORDER BY canonical DESC NULLS LAST, request_id) AS example_request_id
            FROM _tm_assign GROUP BY ALL),
        main AS (
            SELECT template_key, sum(calls) AS calls,
                   first(example_request_id ORDER BY skeleton IS NULL, calls DESC, example_request_id) AS example_request_id
            FROM per_skeleton GROUP BY template_key),
        examples AS (
            SELECT m.template_key, m.calls, m.example_request_id, a.has_prompt, a.prompt_hash, s.sys_hash, s.run,
                   s.has_rest
            FROM main m JOIN _tm_assign a ON a.request_id = m.example_request_id
            LEFT JOIN _tm_skeletons s USING (prompt_hash)),
        system_text AS (
            SELECT k.sys_hash,
                   string_agg(sm.masked, chr(10) ORDER BY f.pos) FILTER (WHERE f.fixed) AS key_text,
                   string_agg(CASE WHEN NOT f.fixed THEN '{text}' WHEN f.constant THEN sm.line ELSE sm.masked END,
                              chr(10) ORDER BY f.pos) FILTER (WHERE f.fixed OR f.previous_fixed) AS skeleton
            FROM _tm_sys_key k JOIN _tm_struct_lines f USING (struct) JOIN _tm_sys_masks sm USING (line_hash)
            WHERE k.sys_hash IN (SELECT sys_hash FROM examples) GROUP BY k.sys_hash),
        user_text AS (
            SELECT j.prompt_hash, list(um.masked ORDER BY j.j) AS key_lines,
                   list(CASE WHEN j.constant THEN um.line ELSE um.masked END ORDER BY j.j) AS shown_lines
            FROM _tm_judged j JOIN examples e ON e.prompt_hash = j.prompt_hash AND j.j <= e.run
            JOIN _tm_user_masks um USING (line_hash)
            GROUP BY j.prompt_hash)
        SELECT e.template_key, e.calls, e.example_request_id, e.has_prompt, coalesce(st.skeleton, ''),
               coalesce(st.key_text, ''), k.generic, coalesce(ut.key_lines, []), coalesce(ut.shown_lines, []),
               coalesce(e.has_rest, false)
        FROM examples e LEFT JOIN system_text st USING (sys_hash) LEFT JOIN _tm_sys_key k USING (sys_hash)
        LEFT JOIN user_text ut USING (prompt_hash)
        ORDER BY e.calls DESC, e.template_key"""
    ).fetchall()
    templates = []
    for key, calls, example, has_prompt, system_shown, system_key, generic, user_key, user_shown, user_rest in rows:
        kind, _, value = key.partition(":")
        if has_prompt:
            skeleton_text = "[system]\n" + system_key + "\n[user]\n" + "\n".join(user_key)
            signature = _signature(system_shown, list(user_shown), bool(user_rest))
        else:
            skeleton_text, signature = "", "(no prompt logged)"
        if kind == "explicit":
            template_id, source, name = _short_hash("explicit:" + value), "explicit", value
        elif kind == "no-prompt":
            template_id, source, name = _short_hash("no-prompt:" + value), "mined", f"(no prompt logged: {value})"
        else:
            template_id, source = _short_hash("mined:" + skeleton_text), "mined"
            name = _derived_name(system_shown.split("\n", 1)[0] if system_key else "", bool(generic), list(user_shown))
        templates.append({"template_key": key, "template_id": template_id, "source": source, "name": name,
                          "signature": signature, "example_request_id": example, "calls": calls})
    _unique_names(templates)
    return templates


def _signature(system_skeleton: str, user_lines: list[str], user_rest: bool) -> str:
    parts = []
    if system_skeleton:
        parts.append("[system]\n" + system_skeleton)
    user = user_lines + (["{text}"] if user_rest else [])
    if user:
        parts.append("[user]\n" + "\n".join(user))
    return "\n".join(parts) or "(empty prompt)"


def _derived_name(system_key: str, generic: bool, user_lines: list[str]) -> str:
    """A short readable name: the system prompt's opening words, or the user instruction's."""
    sources = [system_key.split("\n", 1)[0]] if system_key and not generic else []
    if user_lines:
        sources.append(user_lines[0])
    if system_key and generic:
        sources.append(system_key.split("\n", 1)[0])
    for text in sources:
        words = re.sub(r"\s+", " ", text).strip()
        if words and words != "{text}":
            return _first_words(words)
    return "(no system prompt)"


def _first_words(text: str, limit: int = 48) -> str:
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0].rstrip(" ,.;:")
    return cut + "…"


def _unique_names(templates: list[dict[str, Any]]) -> None:
    """Mined names that collide get the calls rank as a suffix: '(2)', '(3)' (templates come by calls)."""
    seen: Counter[str] = Counter()
    for template in templates:
        seen[template["name"]] += 1
        if seen[template["name"]] > 1 and template["source"] == "mined":
            template["name"] = f"{template['name']} ({seen[template['name']]})"


def _short_hash(text: str) -> str:
    import hashlib

    return hashlib.md5(text.encode()).hexdigest()[:16]


def _write(con: duckdb.DuckDBPyConnection, templates: list[dict[str, Any]]) -> None:
    keys = [(t["template_key"], t["template_id"]) for t in templates]
    con.execute("CREATE OR REPLACE TEMP TABLE _tm_ids (template_key VARCHAR, template_id VARCHAR)")
    if keys:
        con.executemany("INSERT INTO _tm_ids VALUES (?, ?)", keys)
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute("DELETE FROM request_templates")
        con.execute("DELETE FROM templates")
        if templates:
            con.executemany(
                "INSERT INTO templates (template_id, source, name, signature, example_request_id) VALUES (?, ?, ?, ?, ?)",
                [(t["template_id"], t["source"], t["name"], t["signature"], t["example_request_id"]) for t in templates],
            )
        con.execute(
            """INSERT INTO request_templates
            SELECT a.request_id, i.template_id, s.slots
            FROM _tm_assign a JOIN _tm_ids i USING (template_key) LEFT JOIN _tm_skeletons s USING (prompt_hash)"""
        )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def _summary(con: duckdb.DuckDBPyConnection, templates: list[dict[str, Any]]) -> dict[str, Any]:
    requests, no_prompt, named = con.execute(
        """SELECT count(*), count(*) FILTER (WHERE NOT has_prompt),
                  count(*) FILTER (WHERE template_key LIKE 'explicit:%') FROM _tm_assign"""
    ).fetchall()[0]
    no_prompt_templates = [t for t in templates if t["template_key"].startswith("no-prompt:")]
    summary = {
        "templates": len(templates),
        "explicit": sum(t["source"] == "explicit" for t in templates),
        "mined": sum(t["source"] == "mined" for t in templates),
        "requests": requests,
        "requests_in_explicit": named,
        "no_prompt_requests": no_prompt,
        "no_prompt_templates": len(no_prompt_templates),
        "note": None,
    }
    if no_prompt:
        summary["note"] = (
            f"{no_prompt:,} of {requests:,} requests logged no prompt text (usage-only export): they are "
            f"grouped by model into {len(no_prompt_templates)} '(no prompt logged: MODEL)' template(s), "
            "which the prompt-based detectors cannot look into"
        )
    return summary


# --------------------------------------------------------------------------- accuracy


def adjusted_rand_index(contingency: Iterable[tuple[Any, Any, int]]) -> float:
    """Adjusted Rand index (Hubert & Arabie) of two labelings, from (truth, predicted, count) cells.

    ARI = (index - expected) / (max - expected), with index = sum C(n_ij, 2)
    over cells, expected = sum C(a_i, 2) * sum C(b_j, 2) / C(n, 2) and max the
    mean of the two marginal sums. 1.0 when both labelings are the same
    partition, ~0 for independent ones. Degenerate case (both labelings put
    everything in one group, or every item alone): 1.0, as sklearn does.
    """
    rows: Counter[Any] = Counter()
    cols: Counter[Any] = Counter()
    index = n = 0
    for truth, predicted, count in contingency:
        if count <= 0:
            continue
        rows[truth] += count
        cols[predicted] += count
        index += comb(count, 2)
        n += count
    if n < 2:
        return 1.0
    sum_rows = sum(comb(a, 2) for a in rows.values())
    sum_cols = sum(comb(b, 2) for b in cols.values())
    expected = sum_rows * sum_cols / comb(n, 2)
    maximum = (sum_rows + sum_cols) / 2
    if maximum == expected:
        return 1.0
    return (index - expected) / (maximum - expected)


def correct_share(contingency: Iterable[tuple[Any, Any, int]]) -> float:
    """Share of items in a correctly identified group.

    An item (truth t, predicted p) is correct when p's majority truth label is
    t AND t's majority predicted group is p: the two groups identify each
    other. A truth template split in two counts only its larger part; two
    truth templates merged count only the larger one. Ties go to the label
    that sorts first as text, so the figure is deterministic.
    """
    cells = [(t, p, c) for t, p, c in contingency if c > 0]
    total = sum(c for _, _, c in cells)
    if total == 0:
        return 1.0
    majority_truth = _majority((p, t, c) for t, p, c in cells)
    majority_pred = _majority(cells)
    correct = sum(c for t, p, c in cells if majority_truth[p] == t and majority_pred[t] == p)
    return correct / total


def _majority(cells: Iterable[tuple[Any, Any, int]]) -> dict[Any, Any]:
    """For each first label, the second label with the largest count (ties: first as text)."""
    best: dict[Any, tuple[int, str, Any]] = {}
    for a, b, c in cells:
        candidate = (-c, str(b), b)
        if a not in best or candidate[:2] < best[a][:2]:
            best[a] = candidate
    return {a: v[2] for a, v in best.items()}


def contingency_from_labels(truth: Iterable[Any], predicted: Iterable[Any]) -> list[tuple[Any, Any, int]]:
    """(truth, predicted, count) cells of two aligned label sequences."""
    return [(t, p, c) for (t, p), c in Counter(zip(truth, predicted, strict=True)).items()]


def read_truth(path: Path) -> dict[str, str]:
    """native_id → template_id of a generator's ground-truth CSV (gzip when it ends in .gz)."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", newline="") as handle:
        return {row["native_id"]: row["template_id"] for row in csv.DictReader(handle)}


def score_against_truth(con: duckdb.DuckDBPyConnection, truth_path: Path) -> dict[str, Any]:
    """ARI and correct share of ``request_templates`` against a ground-truth CSV (joined on native_id)."""
    truth = read_truth(truth_path)
    con.execute("CREATE OR REPLACE TEMP TABLE _tm_truth (native_id VARCHAR, truth VARCHAR)")
    con.executemany("INSERT INTO _tm_truth VALUES (?, ?)", list(truth.items()))
    try:
        cells = con.execute(
            """SELECT t.truth, rt.template_id, count(*) FROM requests r
            JOIN request_templates rt USING (request_id) JOIN _tm_truth t USING (native_id)
            GROUP BY ALL"""
        ).fetchall()
        unmatched = con.execute(
            "SELECT count(*) FROM requests r ANTI JOIN _tm_truth t USING (native_id)"
        ).fetchall()[0][0]
    finally:
        con.execute("DROP TABLE IF EXISTS _tm_truth")
    per_truth: dict[str, int] = defaultdict(int)
    for t, _, c in cells:
        per_truth[t] += c
    return {
        "requests_scored": sum(c for _, _, c in cells),
        "requests_without_truth": unmatched,
        "truth_templates": len(per_truth),
        "mined_templates": len({p for _, p, _ in cells}),
        "ari": adjusted_rand_index(cells),
        "correct_share": correct_share(cells),
    }
