"""Task type and recommended model tier of every prompt template.

Reads: ``templates``, ``request_templates``, ``requests``.
Writes: ``templates.task_type``, ``task_confidence``, ``task_evidence``, ``tier``
(every row of ``templates`` is rewritten on each run).

Method
------
Each template gets a score per task type from explainable rules over
features of its own traffic, and takes the best:

- *Prompt wording*: cue words in the system prompt and the user message
  ("classify", "category", "extract", "JSON", "summarize", "draft", "reply",
  "code", "snippet", "step by step", "eligible", "policy", ...). A cue counts
  as the template's wording only when it occurs in at least half of the
  sampled prompts: instructions repeat on every call, words that the
  variable part (a customer's e-mail) happens to contain do not.
- *Output shape*: length (median and 90th percentile output tokens), share
  of outputs that parse as a JSON object or array, share with a code fence,
  label-like outputs (one to three words) and how many distinct outputs
  there are per call (a small label set means classification), key: value
  lines, greeting and sign-off (an e-mail), numbered steps (worked reasoning),
  reasoning tokens.
- *Input shape*: number of turns and whether earlier assistant turns are
  re-sent (a conversation), whether the user message is a question, how
  often the same question comes back, how long the user's text is (a long
  document needs chunking).

Every rule that fires adds its points to one task type; ``task_evidence``
lists the features, the cue words found, the rules that fired for the
winner and every type's score, so a reader can see why. The confidence is
0.5 when the runner-up ties the winner and 1.0 when nothing else scored,
discounted when the winner's own evidence is thin (below
``STRONG_EVIDENCE`` points). A template whose best score stays under
``MIN_SCORE`` is ``unknown``, as is a template without prompt text (a
usage-only export): tier NULL, and the evidence says why.

Tiers follow DESIGN.md (FAQ, slot extraction, classification and
structured extraction → small; e-mail drafting, code, summarisation and
long-document summarisation with chunking → mid; complex reasoning and
creative/research writing → large). Multi-turn support ``chat`` is not in
that list: we recommend ``large``. A support conversation mixes every other
task (policy questions, order look-ups, judgement on refunds and
escalations) over a long, growing context, unsupervised and in front of the
customer; no single cheaper tier is safe for all of it, so we do not call a
large model over-powered there. Its waste is the re-sent history, which the
context-bloat finding prices; a replay may still show that a mid model
passes.

Sampling, and why in vectors
----------------------------
Features need the prompt text, and ``requests.messages`` is by far the
largest column (a late chat turn re-sends ~30 KB). DuckDB decompresses a
string column a vector (2,048 rows) at a time, so reading one row costs its
whole vector, and a random sample of every template decodes the whole
column (4-7 s per 1M chat-heavy rows, more than this step's budget). The
sample is therefore taken in vectors. One pass over the ids (template of
every row, and where the row sits) counts each template's calls per vector;
every template then walks the vectors holding its calls in one order shared
by all templates (a hash of the vector number), taking at most a quarter of
its target from each, until it has ``SAMPLE_PER_TEMPLATE`` requests (fewer
when there are many templates: ``SAMPLE_ROWS_BUDGET`` in all, never fewer
than ``MIN_SAMPLE_PER_TEMPLATE``). The shared order makes templates meet in
the same few vectors; the quarter cap spreads a busy template over several
stretches of its traffic; a template found in few vectors takes more from
each, so a small ledger is read whole. Each template's first vector is always
read, further ones up to ``SAMPLE_VECTOR_BUDGET``. Vectors are read with
``rowid`` range filters, which DuckDB prunes inside the scan (a join or an
IN list on rowid is not pruned). Measured on 1M generated requests (8
templates): 8 vectors, ~1 s for this whole step; 320 templates: 42 vectors,
~2-3 s.

The assumption is that a template's calls look alike over time (it is one
prompt skeleton), so a few stretches of its traffic describe it. Everything
is deterministic: hashes, no random state, the same ledger gives the same
sample and the same rows.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import duckdb

from audit.db import sql_string

SAMPLE_PER_TEMPLATE = 200      # requests whose text is read, per template (at most) ...
SAMPLE_ROWS_BUDGET = 8000      # ... and in all: with many templates each gets fewer,
MIN_SAMPLE_PER_TEMPLATE = 30   # but never fewer than this (when it has them)
VECTORS_PER_SAMPLE = 4         # a template's sample spans at least this many stretches of traffic
MAX_VECTORS_PER_TEMPLATE = 8
SAMPLE_VECTOR_BUDGET = 64      # vectors read beyond each template's first (~15 ms each at 1M chat rows)
VECTOR_ROWS = 2048             # DuckDB's vector size: the unit a string column is decompressed in

CUE_SHARE = 0.5                # a cue word is the template's wording when this share of its prompts has it
MIN_SCORE = 1.5                # below this, the type is 'unknown'
STRONG_EVIDENCE = 4.0          # a winner with this many points is not discounted for thin evidence
CHARS_PER_TOKEN = 4.0          # to estimate the user text's tokens (only total input tokens are logged)
LONG_DOCUMENT_TOKENS = 3000    # user text beyond this needs chunking on a mid-tier model

TIERS: dict[str, str] = {
    "faq_lookup": "small",
    "slot_extraction": "small",
    "classification": "small",
    "structured_extraction": "small",
    "email_drafting": "mid",
    "code_generation": "mid",
    "summarization": "mid",
    "long_document_summarization": "mid",
    "complex_reasoning": "large",
    "creative_writing": "large",
    "chat": "large",            # see the module docstring
}
TASK_TYPES = tuple(TIERS)

# Cue words (RE2, matched case-insensitively against the system prompt and the
# head and tail of the user message). Generic wording a real prompt uses for
# the task, not the phrases of any one product.
PROMPT_CUES: dict[str, str] = {
    "classify": r"\b(classif(y|ies|ied|ier|ication)|categori[sz]e|categor(y|ies)|triage|sentiment|label)\b",
    "one_label_only": r"(exactly one|one of the following|one of:|(category|label|class) name only|"
                      r"only the (category|label|class)|answer with (only|just|one)|single (word|label|category))",
    "extract": r"\b(extract(s|ed|ion|ing)?|pull out|parse)\b",
    "json": r"\b(json|schema|key[- ]value|keys|fields)\b",
    "slots": r"\b(slots?|entit(y|ies)|intent|parameters)\b",
    "summarize": r"\b(summar(y|ies|ize|ise|izes|ises|izing|ising)|tl;?dr|condense|key (points|takeaways)|synopsis|"
                 r"recap)\b",
    "document": r"\b(documents?|reports?|transcripts?|chapters?|papers?|minutes|contracts?|filings?|manuscripts?)\b",
    "draft": r"\b(draft(s|ing)?|compose|write (a|an|the) (reply|response|e-?mail|letter|message))\b",
    "email": r"\b(e-?mails?|reply|replies|letters?|subject line|recipient|salutation|sign[- ]?off)\b",
    "code": r"\b(code|snippets?|functions?|scripts?|programs?|programming|sql|regex|python|javascript|typescript|"
            r"golang|bash|curl|sdk|api|endpoints?|implement|refactor|debug)\b",
    "step_by_step": r"(step[- ]by[- ]step|think (carefully|through)|show your (work|reasoning)|chain of thought)",
    "reasoning": r"\b(reason(ing)?|justify|deduce|analy[sz]e|assess|evaluate|decide|determine)\b",
    "rules_policy": r"\b(eligib(le|ility)|polic(y|ies)|rules?|criteria|regulations?|compliance)\b",
    "calculation": r"\b(calculat(e|ion|ions)|compute|arithmetic|round (money|amounts?|to))\b",
    "creative": r"\b(story|stories|poems?|poetry|fiction(al)?|creative(ly)?|narrative|novel|screenplay|lyrics|"
                r"essays?|blog|slogans?|taglines?|imaginative|vivid)\b",
    "research": r"\b(research|literature|citations?|sources|references|in-depth|white ?paper)\b",
    "faq": r"\b(faqs?|frequently asked|common (customer )?questions|help ?desk|knowledge base|quick answers?)\b",
    "conversation": r"\b(chat|conversation|multi-turn|dialog(ue)?)\b",
}

# A line only source code starts with (for code answered without a fence).
_CODE_LINE = (r"(?m)^\s*(def \w+\(|class \w+[:(]|import \w|from [\w.]+ import |function \w+\(|const \w+ =|"
              r"let \w+ =|public (static |class )|#include |SELECT\s[^;]*?\sFROM\s|CREATE TABLE |package \w|func \w+\(|"
              r"fn \w+\(|curl -)")
_QUESTION_START = (r"^\s*(how|what|whats|when|where|why|who|which|can|could|do|does|did|is|are|will|would|should|"
                   r"may|any)\b")


# --------------------------------------------------------------------------- sampling


def _insert_columns(con: duckdb.DuckDBPyConnection, table: str, rows: list[tuple]) -> None:
    """Insert rows in one statement (one list per column): executemany is a round trip per row."""
    if not rows:
        return
    columns = list(zip(*rows, strict=True))
    con.execute(f"INSERT INTO {table} SELECT {', '.join(f'unnest(${i + 1})' for i in range(len(columns)))}",
                [list(c) for c in columns])


def _choose_sample(con: duckdb.DuckDBPyConnection) -> tuple[list[tuple[int, int]], int]:
    """Pick the vectors to read into ``_task_picks`` (template_id, vec, cap); return rowid ranges, vector count."""
    # Where each template's calls sit in the table: the one full pass, over
    # ids only (never the text).
    con.execute(
        """CREATE OR REPLACE TEMP TABLE _task_rows AS
        SELECT rt.template_id, r.rowid AS row_number_in_table, hash(r.request_id) AS request_hash
        FROM request_templates rt JOIN requests r USING (request_id)"""
    )
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _task_vectors AS
        SELECT template_id, row_number_in_table // {VECTOR_ROWS} AS vec, count(*) AS n
        FROM _task_rows GROUP BY ALL"""
    )
    templates = con.execute("SELECT count(DISTINCT template_id) FROM _task_vectors").fetchall()[0][0]
    target = max(MIN_SAMPLE_PER_TEMPLATE, min(SAMPLE_PER_TEMPLATE, SAMPLE_ROWS_BUDGET // max(templates, 1)))
    # Per template, the vectors holding its calls in one order shared by all
    # templates (a hash of the vector number), so that templates agree on the
    # same few vectors. Each vector gives at most ``cap`` rows, so a busy
    # template's sample spans several stretches of traffic; a template found
    # in few vectors takes more from each (a small ledger is read whole).
    candidates = con.execute(
        f"""WITH capped AS (
            SELECT template_id, vec, n, sum(n) OVER (PARTITION BY template_id) AS calls,
                   ceil({target} / least({VECTORS_PER_SAMPLE}, count(*) OVER (PARTITION BY template_id)))::BIGINT AS cap
            FROM _task_vectors)
        SELECT template_id, vec, cap, pick_no, calls FROM (
            SELECT template_id, vec, cap, calls,
                   row_number() OVER w AS pick_no,
                   coalesce(sum(least(n, cap)) OVER (w ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0)
                       AS rows_before
            FROM capped
            WINDOW w AS (PARTITION BY template_id ORDER BY hash(vec), vec))
        WHERE rows_before < {target} AND pick_no <= {MAX_VECTORS_PER_TEMPLATE}
        ORDER BY pick_no, calls DESC, template_id"""
    ).fetchall()
    # Every template's first vector is read; further ones while the budget
    # lasts, busiest templates first (at most a few thousand rows: Python).
    chosen: set[int] = set()
    extra = 0
    picks = []
    for template_id, vec, cap, pick_no, _calls in candidates:
        if vec in chosen or pick_no == 1:
            pass
        elif extra < SAMPLE_VECTOR_BUDGET:
            extra += 1
        else:
            continue
        chosen.add(vec)
        picks.append((template_id, vec, cap))
    con.execute("CREATE OR REPLACE TEMP TABLE _task_picks (template_id VARCHAR, vec BIGINT, cap BIGINT)")
    _insert_columns(con, "_task_picks", picks)
    ranges: list[tuple[int, int]] = []
    for vec in sorted(chosen):
        start, end = vec * VECTOR_ROWS, vec * VECTOR_ROWS + VECTOR_ROWS - 1
        if ranges and ranges[-1][1] + 1 == start:
            ranges[-1] = (ranges[-1][0], end)
        else:
            ranges.append((start, end))
    return ranges, len(chosen)


def _read_sample(con: duckdb.DuckDBPyConnection, ranges: list[tuple[int, int]]) -> None:
    """``_task_sample``: the picked rows with their text, at most the pick's cap per template and vector."""

    def scans(columns: str) -> str:
        # One range scan per run of vectors: DuckDB prunes a rowid range
        # inside the scan; it does not prune through a join or an IN list.
        return " UNION ALL ".join(
            f"SELECT rowid AS row_number_in_table, {columns} FROM requests WHERE rowid BETWEEN {start} AND {end}"
            for start, end in ranges
        ) or f"SELECT rowid AS row_number_in_table, {columns} FROM requests WHERE false"

    # First which rows (from the ids of the full pass), then their text: the
    # big strings are never carried through a join over the whole table.
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _task_sample_rows AS
        SELECT t.template_id, t.row_number_in_table
        FROM _task_rows t
        JOIN _task_picks p ON p.template_id = t.template_id AND p.vec = t.row_number_in_table // {VECTOR_ROWS}
        QUALIFY row_number() OVER (PARTITION BY t.template_id, p.vec ORDER BY t.request_hash, t.row_number_in_table)
                <= p.cap"""
    )
    columns = "request_id, messages, response_text, input_tokens, output_tokens, reasoning_tokens, temperature"
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _task_sample AS
        SELECT s.template_id, f.* EXCLUDE (row_number_in_table)
        FROM ({scans(columns)}) f JOIN _task_sample_rows s USING (row_number_in_table)"""
    )


# --------------------------------------------------------------------------- features


# Every cue word in one pass over the prompt text (one regex is ~4x faster
# than one per cue); each cue is then tested on the few words found.
_ANY_CUE = "|".join(f"(?:{pattern})" for pattern in PROMPT_CUES.values())


def _per_request_features(con: duckdb.DuckDBPyConnection) -> None:
    """``_task_request_features``: one row per sampled request, its text reduced to the features."""
    any_cue = sql_string(_ANY_CUE)
    # Words = whitespace runs + 1: splitting every text into a list costs more
    # than the rest of this query.
    con.execute(
        """CREATE OR REPLACE TEMP MACRO _task_words(text) AS
           CASE WHEN text IS NULL OR trim(text) = '' THEN 0
                ELSE 1 + length(regexp_replace(trim(text), '\\s+', ' ', 'g'))
                       - length(replace(regexp_replace(trim(text), '\\s+', ' ', 'g'), ' ', ''))
           END"""
    )
    con.execute(
        rf"""CREATE OR REPLACE TEMP TABLE _task_request_features AS
        WITH messages AS (
            SELECT * EXCLUDE (messages), messages IS NOT NULL AS logged_prompt,
                   [{{'role': lower(m.role),
                     -- content given as parts ([{{"type": "text", "text": ...}}]): their text
                     'content': CASE WHEN left(m.content, 1) = '[' AND json_valid(m.content)
                                     THEN array_to_string(json_extract_string(m.content, '$[*].text'), ' ')
                                     ELSE m.content END}}
                    for m in coalesce(from_json(messages, '[{{"role": "VARCHAR", "content": "VARCHAR"}}]'), [])]
                   AS turns_list
            FROM _task_sample
        ), per_request AS (
            SELECT template_id, request_id, input_tokens, output_tokens, reasoning_tokens, temperature,
                   logged_prompt AND len(turns_list) > 0 AS has_prompt,
                   coalesce([t.content for t in turns_list if t.role = 'user'][-1], '') AS user_text,
                   -- Instructions sit in the system prompt; retrieved articles appended
                   -- after it are content, so only its head is read.
                   coalesce(left(array_to_string([t.content for t in turns_list if t.role IN ('system', 'developer')],
                                                 ' '), 8000), '') AS system_text,
                   len([t for t in turns_list if t.role IN ('user', 'assistant')]) AS turns,
                   len([t for t in turns_list if t.role = 'assistant']) > 0 AS resends_history,
                   nullif(trim(response_text), '') AS output
            FROM messages
        ), system_cues AS (
            -- A template's system prompt is mostly the same text: read each once.
            SELECT system_text, regexp_extract_all(lower(system_text), {any_cue}) AS words
            FROM (SELECT DISTINCT system_text FROM per_request)
        ), shaped AS (
            SELECT p.* EXCLUDE (system_text),
                   -- An instruction in the user message comes before or after the
                   -- material it applies to: its head and tail.
                   list_distinct(c.words || regexp_extract_all(
                       lower(left(p.user_text, 2000) || ' ' || right(p.user_text, 1000)), {any_cue})) AS prompt_words,
                   regexp_replace(output, '^```[A-Za-z0-9_+-]*\s*|\s*```$', '', 'g') AS output_unfenced,
                   _task_words(output) AS output_words,
                   _task_words(user_text) AS user_words,
                   -- "field: value": a name without digits ("Step 1: ..." is not one), a short value
                   len(regexp_extract_all(output, '(?m)^\s*[A-Za-z_][A-Za-z_ -]{{0,30}}:[ \t]*\S[^\n]{{0,60}}$'))
                       AS key_value_lines,
                   len(regexp_extract_all(output, '(?m)^.*\S.*$')) AS output_lines
            FROM per_request p JOIN system_cues c USING (system_text)
        )
        SELECT *,
               output IS NOT NULL AND json_valid(output_unfenced) AND left(output_unfenced, 1) IN ('{{', '[')
                   AS output_json
        FROM shaped"""
    )


def _template_features(con: duckdb.DuckDBPyConnection) -> dict[str, dict[str, Any]]:
    """One aggregate per template over its sampled requests, plus the cue words most of its prompts share."""
    cue_columns = ",\n".join(
        f"avg(regexp_matches(array_to_string(prompt_words, ' | '), {sql_string(pattern)})::INT) "
        f"FILTER (WHERE has_prompt) AS cue_{name}"
        for name, pattern in PROMPT_CUES.items()
    )
    cursor = con.execute(
        rf"""SELECT template_id,
           count(*) AS sampled,
           count(*) FILTER (WHERE has_prompt) AS with_prompt,
           count(output) AS with_output,
           median(output_tokens) FILTER (WHERE output IS NOT NULL) AS median_output_tokens,
           quantile_cont(output_tokens, 0.9) FILTER (WHERE output IS NOT NULL) AS p90_output_tokens,
           median(input_tokens) AS median_input_tokens,
           median(length(user_text)) FILTER (WHERE has_prompt) / {CHARS_PER_TOKEN} AS user_text_tokens_median,
           median(user_words) FILTER (WHERE has_prompt) AS user_words_median,
           median(turns) FILTER (WHERE has_prompt) AS turns_median,
           min(turns) FILTER (WHERE has_prompt) AS turns_min,
           max(turns) FILTER (WHERE has_prompt) AS turns_max,
           avg(resends_history::INT) FILTER (WHERE has_prompt) AS resends_history,
           avg((regexp_matches(user_text, '\?\s*$')
                OR regexp_matches(user_text, {sql_string(_QUESTION_START)}, 'i'))::INT)
               FILTER (WHERE has_prompt AND user_text <> '') AS question_form,
           1 - count(DISTINCT trim(regexp_replace(lower(user_text), '[^a-z0-9]+', ' ', 'g'))) FILTER (WHERE has_prompt)
               / greatest(count(*) FILTER (WHERE has_prompt), 1) AS repeated_user_text,
           avg(output_json::INT) FILTER (WHERE output IS NOT NULL) AS output_is_json,
           avg(contains(output, '```')::INT) FILTER (WHERE output IS NOT NULL) AS code_fenced,
           avg(regexp_matches(output, {sql_string(_CODE_LINE)})::INT) FILTER (WHERE output IS NOT NULL) AS code_lines,
           avg((NOT output_json AND length(output) <= 40 AND output_words <= 3 AND NOT contains(output, chr(10)))::INT)
               FILTER (WHERE output IS NOT NULL) AS label_like_outputs,
           count(DISTINCT trim(regexp_replace(lower(output), '[^a-z0-9]+', ' ', 'g'))) AS distinct_outputs,
           avg((NOT output_json AND output_words <= 80 AND key_value_lines >= 2
                AND 2 * key_value_lines >= output_lines)::INT)
               FILTER (WHERE output IS NOT NULL) AS key_value_outputs,
           avg((regexp_matches(output, '^(subject:|dear\b|hi\b|hello\b|hey\b|good (morning|afternoon|evening)\b)', 'i')
                OR regexp_matches(output, '\n\s*((best|kind|warm)\s+)?(regards|wishes|sincerely)\b', 'i'))::INT)
               FILTER (WHERE output IS NOT NULL) AS greeting_or_signoff,
           avg((len(regexp_extract_all(output, '(?im)^\s*(?:[*#]+\s*)?(?:step\s*\d+|\d+[.)]\s)')) >= 3)::INT)
               FILTER (WHERE output IS NOT NULL) AS numbered_steps,
           avg(regexp_matches(output, '\b(therefore|thus|hence|in conclusion|conclusion:|in total)\b', 'i')::INT)
               FILTER (WHERE output IS NOT NULL) AS conclusion_markers,
           avg((coalesce(reasoning_tokens, 0) > 0)::INT) AS uses_reasoning_tokens,
           median(temperature) AS temperature_median,
           {cue_columns}
        FROM _task_request_features
        GROUP BY template_id"""
    )
    names = [d[0] for d in cursor.description]
    features = {row[0]: dict(zip(names, row, strict=True)) for row in cursor.fetchall()}
    # The cue words themselves, for the evidence: those in at least CUE_SHARE of the prompts.
    for template_id, words in con.execute(
        f"""WITH prompts AS (SELECT * FROM _task_request_features WHERE has_prompt)
        SELECT template_id, list(word ORDER BY share DESC, word)[1:12] FROM (
                SELECT template_id, word, count(*) / any_value(n.prompts) AS share
                FROM (SELECT template_id, unnest(prompt_words) AS word FROM prompts)
                JOIN (SELECT template_id, count(*) AS prompts FROM prompts GROUP BY template_id) n USING (template_id)
                GROUP BY template_id, word)
            WHERE share >= {CUE_SHARE} GROUP BY template_id"""
    ).fetchall():
        features[template_id]["prompt_words"] = words
    return features


# --------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class Rule:
    task_type: str
    name: str
    points: float
    fires: Callable[[dict[str, Any]], bool]


def _at_least(feature: str, threshold: float) -> Callable[[dict[str, Any]], bool]:
    return lambda f: f.get(feature) is not None and f[feature] >= threshold


def _at_most(feature: str, threshold: float) -> Callable[[dict[str, Any]], bool]:
    return lambda f: f.get(feature) is not None and f[feature] <= threshold


def _cue(name: str) -> Callable[[dict[str, Any]], bool]:
    return lambda f: name in f["prompt_keywords"]


def _all(*conditions: Callable[[dict[str, Any]], bool]) -> Callable[[dict[str, Any]], bool]:
    return lambda f: all(c(f) for c in conditions)


def _prose(f: dict[str, Any]) -> bool:
    """Most outputs are free text: not JSON, not code, not a bare label."""
    shares = [f.get(k) for k in ("output_is_json", "code_fenced", "label_like_outputs")]
    return f.get("with_output", 0) > 0 and all(s is not None and s < 0.3 for s in shares)


def _conversation(f: dict[str, Any]) -> bool:
    """Earlier assistant turns are re-sent, and the number of turns varies (few-shot examples do not)."""
    return (f.get("resends_history") or 0) >= 0.2 and (f.get("turns_max") or 0) > (f.get("turns_min") or 0)


def _single_turn(f: dict[str, Any]) -> bool:
    return not _conversation(f)


def _small_label_set(f: dict[str, Any]) -> bool:
    """Few distinct outputs for many calls: a closed set of labels."""
    n = f.get("with_output") or 0
    return n >= 10 and f["distinct_outputs"] <= 30 and f["distinct_outputs"] <= 0.5 * n


def _structured_output(f: dict[str, Any]) -> bool:
    """Most outputs are a JSON object/array or key: value lines."""
    return max(f.get("output_is_json") or 0, f.get("key_value_outputs") or 0) >= 0.6


def _long_document(f: dict[str, Any]) -> bool:
    return (f.get("user_text_tokens_median") or 0) >= LONG_DOCUMENT_TOKENS


def _shorter_than_input(f: dict[str, Any]) -> bool:
    """Output well under the user text it was given: a condensation."""
    user, out = f.get("user_text_tokens_median"), f.get("median_output_tokens")
    return user is not None and out is not None and user >= 150 and out <= 0.5 * user


def _asks_for_reasoning(f: dict[str, Any]) -> bool:
    return bool({"step_by_step", "reasoning", "rules_policy", "calculation"} & set(f["prompt_keywords"]))


def _asks_for_writing(f: dict[str, Any]) -> bool:
    return bool({"creative", "research"} & set(f["prompt_keywords"]))


def _summary_cues(f: dict[str, Any]) -> bool:
    return "summarize" in f["prompt_keywords"]


RULES: list[Rule] = [
    # FAQ: short standalone questions, answered briefly, that come back again and again.
    Rule("faq_lookup", "prompt says FAQ / common questions / help desk", 1.5, _cue("faq")),
    Rule("faq_lookup", "user messages are questions (question_form >= 0.6)", 1.5,
         _all(_single_turn, _at_least("question_form", 0.6))),
    Rule("faq_lookup", "short user messages (median <= 25 words)", 0.5,
         _all(_single_turn, _at_most("user_words_median", 25))),
    Rule("faq_lookup", "short prose answers (median <= 120 output tokens)", 0.5,
         _all(_single_turn, _prose, _at_most("median_output_tokens", 120))),
    Rule("faq_lookup", "the same questions come back (repeated_user_text >= 0.3)", 1.0,
         _all(_single_turn, _at_least("repeated_user_text", 0.3))),
    # Chat: a conversation whose history is re-sent on every turn.
    Rule("chat", "earlier assistant turns re-sent, turn count varies", 5.0, _conversation),
    Rule("chat", "prompt says chat / conversation", 0.5, _all(_conversation, _cue("conversation"))),
    Rule("chat", "short replies (median <= 150 output tokens)", 0.5,
         _all(_conversation, _at_most("median_output_tokens", 150))),
    # Classification: a closed label set.
    Rule("classification", "prompt says classify / category / label", 1.5, _cue("classify")),
    Rule("classification", "prompt asks for exactly one label", 0.5, _cue("one_label_only")),
    Rule("classification", "label-like outputs (share >= 0.8)", 2.0, _at_least("label_like_outputs", 0.8)),
    Rule("classification", "small label set (distinct outputs <= 30 and <= half the calls)", 1.0, _small_label_set),
    Rule("classification", "tiny outputs (median <= 8 tokens)", 0.5, _at_most("median_output_tokens", 8)),
    # Extraction: JSON (or key: value lines) out of the input. The input's
    # length tells the two apart: a document or e-mail (structured extraction)
    # or a short utterance (slot filling).
    Rule("structured_extraction", "prompt says extract", 1.0, _cue("extract")),
    Rule("structured_extraction", "prompt says JSON / schema / fields", 1.0, _cue("json")),
    Rule("structured_extraction", "outputs are JSON or key: value lines (share >= 0.6)", 2.0, _structured_output),
    Rule("structured_extraction", "structured output from a text, not an utterance (median user words > 40)", 1.0,
         _all(_structured_output, lambda f: (f.get("user_words_median") or 0) > 40)),
    Rule("slot_extraction", "prompt says extract", 1.0, _cue("extract")),
    Rule("slot_extraction", "prompt says slots / entities / intent / parameters", 1.0, _cue("slots")),
    Rule("slot_extraction", "outputs are JSON or key: value lines (share >= 0.6)", 2.0, _structured_output),
    Rule("slot_extraction", "structured output from a short utterance (median user words <= 40)", 1.5,
         _all(_structured_output, _at_most("user_words_median", 40))),
    # Summarisation: condense the given text; a long one needs chunking.
    Rule("summarization", "prompt says summarize", 2.0, _all(_summary_cues, lambda f: not _long_document(f))),
    Rule("summarization", "output well under the input (<= half, input >= 150 tokens)", 1.0,
         _all(_single_turn, _shorter_than_input, lambda f: not _long_document(f))),
    Rule("summarization", "prose outputs", 0.5, _all(_summary_cues, _prose, lambda f: not _long_document(f))),
    Rule("long_document_summarization", "prompt says summarize", 2.0, _all(_summary_cues, _long_document)),
    Rule("long_document_summarization",
         f"user text is a long document (median >= {LONG_DOCUMENT_TOKENS} tokens)", 1.0,
         _all(_single_turn, _long_document, lambda f: _summary_cues(f) or "document" in f["prompt_keywords"])),
    Rule("long_document_summarization", "output well under the input", 1.0,
         _all(_single_turn, _shorter_than_input, _long_document)),
    # E-mail drafting: a letter with greeting and sign-off.
    Rule("email_drafting", "prompt says draft / compose / write a reply", 1.5, _cue("draft")),
    Rule("email_drafting", "prompt says e-mail / reply / letter", 1.0, _cue("email")),
    Rule("email_drafting", "outputs open with a greeting or subject, or end with a sign-off (share >= 0.5)", 2.0,
         _all(_single_turn, _at_least("greeting_or_signoff", 0.5))),
    Rule("email_drafting", "letter-length prose (60-500 output tokens)", 0.5,
         _all(_prose, _at_least("median_output_tokens", 60), _at_most("median_output_tokens", 500))),
    # Code: fenced code in the answers.
    Rule("code_generation", "prompt says code / snippet / function / API", 1.5, _cue("code")),
    Rule("code_generation", "outputs hold code: a fence or lines only code starts with (share >= 0.3)", 3.0,
         lambda f: max(f.get("code_fenced") or 0, f.get("code_lines") or 0) >= 0.3),
    # Complex reasoning: worked, multi-step answers over rules and numbers.
    Rule("complex_reasoning", "prompt says step by step / show your reasoning", 1.5, _cue("step_by_step")),
    Rule("complex_reasoning", "prompt says reason / assess / decide", 0.5, _cue("reasoning")),
    Rule("complex_reasoning", "prompt cites rules / policy / eligibility", 0.5, _cue("rules_policy")),
    Rule("complex_reasoning", "prompt asks for calculations", 0.5, _cue("calculation")),
    # Long, numbered answers are also what research writing looks like: the
    # output shape counts for reasoning only when the prompt asks for it.
    Rule("complex_reasoning", "long answers (median >= 250 output tokens) to a reasoning prompt", 1.0,
         _all(_single_turn, _prose, _asks_for_reasoning, _at_least("median_output_tokens", 250))),
    Rule("complex_reasoning", "answers worked in numbered steps (share >= 0.5) for a reasoning prompt", 1.5,
         _all(_single_turn, _asks_for_reasoning, _at_least("numbered_steps", 0.5))),
    Rule("complex_reasoning", "answers end in a conclusion (share >= 0.5)", 0.5,
         _all(_asks_for_reasoning, _at_least("conclusion_markers", 0.5))),
    Rule("complex_reasoning", "the model spends reasoning tokens (share >= 0.5)", 2.0,
         _at_least("uses_reasoning_tokens", 0.5)),
    # Creative and research writing: long, open-ended prose.
    Rule("creative_writing", "prompt says story / poem / essay / blog / creative", 2.0, _cue("creative")),
    Rule("creative_writing", "prompt says research / literature / sources", 2.0, _cue("research")),
    Rule("creative_writing", "long prose answers (median >= 300 output tokens) to a writing prompt", 1.0,
         _all(_single_turn, _prose, _asks_for_writing, _at_least("median_output_tokens", 300))),
    Rule("creative_writing", "every answer is different and sampled warm (temperature >= 0.8)", 0.5,
         lambda f: (f.get("temperature_median") or 0) >= 0.8 and f.get("with_output", 0) > 0
         and f["distinct_outputs"] >= 0.9 * f["with_output"]),
]


def _round(value: Any) -> Any:
    return round(value, 3) if isinstance(value, float) else value


def decide(features: dict[str, Any]) -> tuple[str, float | None, dict[str, Any]]:
    """(task type, confidence, evidence) for one template's features."""
    if not features.get("with_prompt"):
        reason = ("no requests of this template are in the ledger" if not features.get("sampled")
                  else "no prompt text logged (usage-only export): wording and turns cannot be read")
        return "unknown", None, {"reason": reason, "sampled_requests": features.get("sampled", 0)}
    scores: dict[str, float] = {t: 0.0 for t in TASK_TYPES}
    fired: dict[str, list[dict[str, Any]]] = {t: [] for t in TASK_TYPES}
    for rule in RULES:
        if rule.fires(features):
            scores[rule.task_type] += rule.points
            fired[rule.task_type].append({"rule": rule.name, "points": rule.points})
    ranked = sorted(scores.items(), key=lambda kv: (-kv[1], TASK_TYPES.index(kv[0])))
    (best, best_score), (runner_up, runner_up_score) = ranked[0], ranked[1]
    evidence: dict[str, Any] = {
        **{k: _round(v) for k, v in features.items() if not k.startswith("cue_") and k != "template_id"},
        "scores": {t: s for t, s in ranked if s > 0},
    }
    if best_score < MIN_SCORE:
        evidence["reason"] = f"no task type reached {MIN_SCORE} points"
        return "unknown", None, evidence
    margin = 0.5 + 0.5 * (best_score - runner_up_score) / best_score
    confidence = round(margin * min(1.0, best_score / STRONG_EVIDENCE), 3)
    evidence["rules"] = fired[best]
    evidence["runner_up"] = {"task_type": runner_up, "score": runner_up_score} if runner_up_score > 0 else None
    return best, confidence, evidence


# --------------------------------------------------------------------------- entry point


def classify_templates(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """Set task_type, task_confidence, task_evidence and tier on every template; return counts per type and tier."""
    ranges, vectors_read = _choose_sample(con)
    _read_sample(con, ranges)
    _per_request_features(con)
    by_template = _template_features(con)

    results = []
    for (template_id,) in con.execute("SELECT template_id FROM templates ORDER BY template_id").fetchall():
        features = by_template.get(template_id, {"sampled": 0, "with_prompt": 0})
        if features.get("with_prompt"):
            features["prompt_keywords"] = sorted(
                name for name in PROMPT_CUES if (features.get(f"cue_{name}") or 0) >= CUE_SHARE
            )
        task_type, confidence, evidence = decide(features)
        results.append((template_id, task_type, confidence, json.dumps(evidence, default=str), TIERS.get(task_type)))

    con.execute("CREATE OR REPLACE TEMP TABLE _task_results "
                "(template_id VARCHAR, task_type VARCHAR, task_confidence DOUBLE, task_evidence JSON, tier VARCHAR)")
    _insert_columns(con, "_task_results", results)
    con.execute(
        """UPDATE templates SET task_type = r.task_type, task_confidence = r.task_confidence,
                                task_evidence = r.task_evidence, tier = r.tier
        FROM _task_results r WHERE templates.template_id = r.template_id"""
    )
    for table in ("_task_rows", "_task_vectors", "_task_picks", "_task_sample_rows", "_task_sample",
                  "_task_request_features", "_task_results"):
        con.execute(f"DROP TABLE IF EXISTS {table}")
    con.execute("DROP MACRO IF EXISTS _task_words")
    return {
        "templates": len(results),
        "by_task_type": dict(sorted(Counter(r[1] for r in results).items())),
        "by_tier": dict(sorted(Counter(r[4] or "none" for r in results).items())),
        "sampled_requests": sum(f.get("sampled", 0) for f in by_template.values()),
        "vectors_read": vectors_read,
    }
