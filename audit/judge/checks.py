"""Automatic, task-aware checks: is a candidate's answer as good as the production one?

Reads and writes no tables: pure functions over answer pairs. ``audit.judge``
runs them over ``replays`` × ``requests`` and stores the results in
``verdicts`` (``source = 'check'``).

A production request was answered by the original (expensive) model; a cheaper
candidate answered the same conversation. Without any API call, the checks a
pair gets follow the template's task type (``templates.task_type``):

=============================  ===============================================
task type                      checks (gating unless said otherwise)
=============================  ===============================================
classification                 ``label_match`` when the original is a label
                               (at most 12 words); otherwise free text
faq_lookup                     ``exact_match`` when both answers are short;
                               otherwise free text
slot_extraction,               ``json_valid``, ``json_schema``, ``json_fields``
structured_extraction          when the original is JSON; otherwise
                               ``exact_match`` (slots) or free text
complex_reasoning              ``final_answer`` when the original has one;
                               otherwise free text
everything else, 'unknown'     free text: ``embedding_similarity``,
and None                       ``length_ratio``, ``key_facts`` (free text
                               about one case), ``rouge_l`` (shown only);
                               JSON checks when the original is bare JSON
every type                     ``empty_answer`` and ``refusal``
=============================  ===============================================

The thresholds, all in ``THRESHOLDS``:

- ``label_max_words`` (12): an answer this short is a label. Labels and short
  answers are normalised (lower case; punctuation, quotes, underscores and
  "Label:"/"Category:"/"Answer:" prefixes dropped) and match when equal, or
  when a short candidate contains the original label as whole words ("The
  category is billing.") and not right after a negation ("not billing").
- ``json_fields`` (0.8): the share of the original's fields (leaf values,
  nested keys flattened) whose normalised value the candidate repeats. With
  four fields, all four must agree. JSON is taken from the whole answer, a
  ```json fence, or the first {...}/[...] block; ``json_schema`` wants the
  same top-level keys with compatible types (null is compatible with any).
- ``final_answer_rel_tol`` (1e-9): numbers compare equal within this
  relative tolerance, or when both show decimals and the more precise one
  rounds to the other ("3.33" and "3.3333"); "42" and "42.4" differ. The
  final answer is taken from ``\\boxed{}``, else after "####", else after the
  last "answer:"/"answer is"/"conclusion:" (the first number there), else
  the last number in the text. Numbers glued to letters (order AC-1234567,
  rule R10) are identifiers, not answers.
- ``embedding_similarity`` (0.70, see below): cosine of the two answers'
  all-MiniLM-L6-v2 embeddings.
- ``length_ratio_max`` (3.0) and ``length_min_diff_words`` (10): the
  candidate's word count over the original's must lie in [1/3, 3], unless the
  two differ by fewer than 10 words (a one-word reply against a ten-word one
  is not a length problem). Gating on this wide range only: a candidate a
  third as long has usually dropped content or stopped early; three times as
  long ignores the length the prompt asked for, and costs output tokens,
  which is what the audit prices. Ordinary variation (0.5-2x) passes.
- ``key_facts`` (0.5, from 1 fact): for free text about one case (summaries,
  e-mails, chat, FAQ, unknown; not code or fiction), the identifiers and
  numbers (order AC-8767807, $39.95, 1,250) that the original took from the
  prompt: the candidate must repeat at least half of them. Similarity says
  "same topic and shape"; this says "same case". Measured on sample_logs, an
  answer to another request of the same template fails it 94-100% of the time
  where it applies (product summaries 100% of pairs, e-mail drafts 90%, chat
  6%; FAQ answers hold no such facts). On LLMBar/MT-Bench (two models, same
  prompt) it applies to 10-12% of pairs and fails the worse answer (by the
  human label) 19 times, the better one 10: it also fails good answers that
  word the facts differently, another reason free text wants the judge.
- ``rouge_l``: ROUGE-L F1 over lower-cased word tokens, shown for the reader
  and never gating: two good answers often share few words.
- ``refusal_head_chars`` (300): a refusal ("I'm sorry, but I can't...", "As
  an AI...") is looked for at the start of the answer; it fails when the
  candidate refuses and the original did not.

An empty or whitespace-only candidate fails ``empty_answer`` and gets no other
check. ``passed`` is None when a check cannot be judged (the original itself
is empty, or not JSON where JSON was expected, and so on).

Calibration of the similarity threshold
---------------------------------------
Share of answer pairs whose MiniLM cosine reaches each threshold:

=====================================================  ====  ====  ====  ====  ====
pairs (n)                                              0.60  0.65  0.70  0.75  0.80
=====================================================  ====  ====  ====  ====  ====
MT-Bench: two models, same prompt (200)                0.80  0.72  0.64  0.54  0.41
LLMBar-Natural: two models, same prompt (100)          0.57  0.52  0.47  0.33  0.27
either file: answers to different prompts (300)        0.00  0.00  0.00  0.00  0.00
sample_logs email drafts, another request (132)        0.48  0.23  0.09  0.05  0.03
sample_logs code snippets, another request (29)        0.45  0.31  0.14  0.00  0.00
sample_logs chat replies, another request (199)        0.03  0.02  0.01  0.01  0.01
sample_logs product summaries, another request (199)   0.06  0.04  0.03  0.03  0.03
=====================================================  ====  ====  ====  ====  ====

Any threshold rejects an answer to another question. The hard wrong answer
is the right kind of text about the wrong case: the same template's answer
to another request (another customer's e-mail, another endpoint's snippet).
0.70 is the lowest threshold at which those pass at most ~1 time in 7
(emails 9%, code 14%). The price: two competent models answering the same
open question agree this closely only 64% (MT-Bench) or 47% (LLMBar) of the
time. The check is conservative: on open-ended free text it fails many
acceptable answers, so a free-text template rarely reaches ``switch`` on
checks alone; the LLM judge or a human review is the evidence there. MiniLM
reads the first 256 word pieces (~190 words) of each answer only. Numbers
and names inside an answer (an order id, an amount) barely move the cosine:
similarity says "same topic and shape", not "same facts".
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from audit.judge.embed import Embedder

THRESHOLDS: dict[str, float] = {
    # An answer of at most this many words is a label / short answer.
    "label_max_words": 12,
    # Share of the original's JSON fields the candidate must repeat.
    "json_fields": 0.8,
    # Relative tolerance of numeric final answers (beyond rounding to the shown decimals).
    "final_answer_rel_tol": 1e-9,
    # Cosine similarity of MiniLM embeddings a free-text answer must reach (calibrated: module docstring).
    "embedding_similarity": 0.70,
    # Candidate/original word-count ratio must lie in [1/x, x] ...
    "length_ratio_max": 3.0,
    # ... unless the two differ by fewer words than this.
    "length_min_diff_words": 10,
    # Share of the ids and numbers the original took from the prompt that the candidate must repeat ...
    "key_facts": 0.5,
    # ... when the original repeats at least this many (fewer: no key_facts check).
    "key_facts_min": 1,
    # Characters at the start of an answer searched for a refusal.
    "refusal_head_chars": 300,
}

JSON_TYPES = ("slot_extraction", "structured_extraction")


@dataclass(frozen=True)
class CheckResult:
    metric: str            # label_match, exact_match, json_valid, json_schema, json_fields, final_answer,
                           # embedding_similarity, rouge_l, length_ratio, refusal, empty_answer
    score: float | None
    threshold: float | None
    passed: bool | None    # None: could not be judged (e.g. the original itself is not JSON)
    gating: bool           # counts toward the request's pass; non-gating ones are shown only (rouge_l)
    reason: str | None     # one line, human readable: why it failed (or could not be judged)


@dataclass(frozen=True)
class AnswerPair:
    task_type: str | None
    prompt: str            # the last user message (context for refusal/labels)
    original: str          # the production answer
    candidate: str         # the candidate's answer


# --------------------------------------------------------------------------- the entry points


def check_answers(pairs: Sequence[AnswerPair], embedder: Embedder | None = None) -> list[list[CheckResult]]:
    """The checks of every pair, in order. Free-text pairs are embedded in one batch.

    ``embedder`` None loads the packaged MiniLM (``default_embedder``), and only
    when some pair needs it.
    """
    results: list[list[CheckResult]] = []
    free_text: list[int] = []  # indexes of pairs waiting for their similarity
    for index, pair in enumerate(pairs):
        checks, needs_similarity = _check_without_embeddings(pair)
        results.append(checks)
        if needs_similarity:
            free_text.append(index)
    if free_text:
        if embedder is None:
            from audit.judge.embed import default_embedder

            embedder = default_embedder()
        scores = embedder.similarity([pairs[i].original for i in free_text], [pairs[i].candidate for i in free_text])
        for index, score in zip(free_text, scores):
            # Right after empty_answer and refusal: the headline check of free text comes first.
            results[index].insert(2, similarity_result(score))
    return results


def request_passed(results: Sequence[CheckResult]) -> bool | None:
    """True when every judgeable gating check passed, False when one failed, None when none could be judged."""
    gating = [r.passed for r in results if r.gating and r.passed is not None]
    if not gating:
        return None
    return all(gating)


def checks_for(task_type: str | None) -> str:
    """One line: which checks a task type gets (for the report and the README)."""
    always = "; always: empty answer, refusal"
    if task_type == "classification":
        return "label match (normalised; original of at most 12 words), else free-text checks" + always
    if task_type == "faq_lookup":
        return "exact match when both answers are short (normalised), else free-text checks" + always
    if task_type == "slot_extraction":
        return ("JSON valid, same keys and types, >= 80% of fields equal; exact match when the original is not JSON"
                + always)
    if task_type == "structured_extraction":
        return ("JSON valid, same keys and types, >= 80% of fields equal; free-text checks when the original is not "
                "JSON" + always)
    if task_type == "complex_reasoning":
        return ("same final answer (number or text after 'answer:', '####', \\boxed{}), else free-text checks"
                + always)
    facts = (", the ids and numbers the original took from the prompt (at least half)"
             if (task_type or "unknown") in KEY_FACT_TYPES else "")
    return (f"embedding similarity >= {THRESHOLDS['embedding_similarity']:.2f} (MiniLM), length within "
            f"1/{THRESHOLDS['length_ratio_max']:g}-{THRESHOLDS['length_ratio_max']:g}x{facts}, ROUGE-L shown" + always)


def pairwise_preference(prompt: str, output_1: str, output_2: str, task_type: str | None,
                        embedder: Embedder | None = None) -> str:
    """'1', '2' or 'tie': which of two answers to the same prompt passes more reference-free checks.

    The checks compare a candidate with a reference; two answers without a
    reference can only be told apart by what needs none: emptiness, a refusal,
    and, where the task type asks for them, parseable JSON, an extractable
    final answer or a label-length answer. Two answers that both pass (the
    usual case) are a tie: the checks cannot say which is better, and saying
    so is the honest answer. ``embedder`` is not used (similarity needs a
    reference); it is accepted so every method has the same signature.
    """
    score_1 = _reference_free_passes(output_1, task_type)
    score_2 = _reference_free_passes(output_2, task_type)
    if score_1 == score_2:
        return "tie"
    return "1" if score_1 > score_2 else "2"


# --------------------------------------------------------------------------- routing


def _check_without_embeddings(pair: AnswerPair) -> tuple[list[CheckResult], bool]:
    """Every check of one pair except the similarity; and whether it needs one."""
    if not pair.candidate.strip():
        return [CheckResult("empty_answer", None, None, False, True, "the candidate's answer is empty")], False
    results = [CheckResult("empty_answer", None, None, True, True, None), refusal_result(pair.original, pair.candidate)]
    task_type = pair.task_type or "unknown"
    original, candidate = pair.original, pair.candidate
    max_words = THRESHOLDS["label_max_words"]
    if task_type == "classification" and word_count(original) <= max_words:
        return [*results, match_result("label_match", original, candidate, label="label")], False
    if task_type == "faq_lookup" and word_count(original) <= max_words and word_count(candidate) <= max_words:
        return [*results, match_result("exact_match", original, candidate, label="answer")], False
    if task_type in JSON_TYPES or (task_type == "unknown" and _is_bare_json(original)):
        parsed_original = extract_json(original)
        if parsed_original is not None:
            return [*results, *json_results(parsed_original, candidate)], False
        if task_type == "slot_extraction":
            return [*results, match_result("exact_match", original, candidate, label="answer")], False
    if task_type == "complex_reasoning":
        expected = final_answer(original)
        if expected is not None:
            return [*results, final_answer_result(expected, candidate)], False
    if not original.strip():
        return [*results, CheckResult("embedding_similarity", None, THRESHOLDS["embedding_similarity"], None, True,
                                      "the original answer is empty")], False
    facts = key_facts_result(pair.prompt, original, candidate) if task_type in KEY_FACT_TYPES else None
    return [*results, length_ratio_result(original, candidate), *([facts] if facts else []),
            rouge_l_result(original, candidate)], True


def _reference_free_passes(answer: str, task_type: str | None) -> int:
    """How many of the checks that need no reference an answer passes."""
    if not answer.strip():
        return 0
    passes = 1 + (not is_refusal(answer))
    if task_type in JSON_TYPES:
        passes += extract_json(answer) is not None
    elif task_type == "complex_reasoning":
        passes += final_answer(answer) is not None
    elif task_type == "classification":
        passes += word_count(answer) <= THRESHOLDS["label_max_words"]
    return passes


# --------------------------------------------------------------------------- labels and short answers

_LABEL_PREFIX = re.compile(
    r"^\s*(?:the\s+)?(?:final\s+)?(?:label|category|class|classification|intent|sentiment|answer|result)"
    r"\s*(?::|=|\bis\b)\s*",
    re.IGNORECASE,
)
_INNER_MARK = re.compile(r"(?<=[^\W\d_])[.'\u2019](?=[^\W\d_])")
_NEGATIONS = frozenset({"not", "no", "isn", "isnt", "never", "neither", "nor", "without"})


def word_count(text: str) -> int:
    return len(text.split())


def normalise_text(text: str) -> str:
    """Lower case, without fences, label prefixes, punctuation, quotes or underscores; single spaces."""
    text = text.strip().strip("`").strip()
    previous = None
    while previous != text:  # "Answer: Category: billing"
        previous, text = text, _LABEL_PREFIX.sub("", text, count=1)
    # Dots and apostrophes inside words go without a space ("a.m." = "am", "don't" = "dont"), other
    # punctuation becomes one; digits keep their dots apart ("3.5" is "3 5", never "35").
    text = _INNER_MARK.sub("", text.lower())
    return " ".join(re.sub(r"[\W_]+", " ", text).split())


def labels_agree(original: str, candidate: str) -> bool:
    """Equal once normalised, or a short candidate naming the original label as whole words (not negated)."""
    expected, got = normalise_text(original), normalise_text(candidate)
    if expected == got:
        return True
    if not expected or word_count(candidate) > THRESHOLDS["label_max_words"]:
        return False
    words, label = got.split(), expected.split()
    for start in range(len(words) - len(label) + 1):
        if words[start:start + len(label)] == label and (start == 0 or words[start - 1] not in _NEGATIONS):
            return True
    return False


def match_result(metric: str, original: str, candidate: str, *, label: str) -> CheckResult:
    if not normalise_text(original):
        return CheckResult(metric, None, None, None, True, f"the original {label} is empty once normalised")
    if labels_agree(original, candidate):
        return CheckResult(metric, 1.0, None, True, True, None)
    return CheckResult(metric, 0.0, None, False, True,
                       f"{label} {_quote(candidate)} != original {_quote(original)}")


def _quote(text: str, limit: int = 60) -> str:
    one_line = " ".join(text.split())
    return repr(one_line if len(one_line) <= limit else one_line[: limit - 3] + "...")


# --------------------------------------------------------------------------- JSON

_FENCE = re.compile(r"```[ \t]*(?:json|JSON|javascript|js)?[ \t]*\n?(.*?)```", re.DOTALL)
_JSON_START = re.compile(r"[\[{]")
MAX_JSON_STARTS = 50  # block starts tried in prose before giving up


def _is_bare_json(text: str) -> bool:
    try:
        return isinstance(json.loads(text), (dict, list))
    except ValueError:
        return False


def extract_json(text: str) -> dict | list | None:
    """The JSON object or array of an answer: the whole text, a ``` fence, or the first {...}/[...] block."""
    stripped = text.strip()
    try:
        value = json.loads(stripped)
        if isinstance(value, (dict, list)):
            return value
    except ValueError:
        pass
    for fence in _FENCE.finditer(text):
        try:
            value = json.loads(fence.group(1).strip())
            if isinstance(value, (dict, list)):
                return value
        except ValueError:
            continue
    decoder = json.JSONDecoder()
    for attempt, start in enumerate(_JSON_START.finditer(text)):
        if attempt >= MAX_JSON_STARTS:
            break
        try:
            value, _ = decoder.raw_decode(text, start.start())
        except ValueError:
            continue
        if isinstance(value, (dict, list)):
            return value
    return None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _types_compatible(a: Any, b: Any) -> bool:
    return a is None or b is None or _json_type(a) == _json_type(b)


def json_results(original: dict | list, candidate_text: str) -> list[CheckResult]:
    """json_valid, json_schema and json_fields of a candidate against the original's parsed JSON."""
    candidate = extract_json(candidate_text)
    if candidate is None:
        not_json = "not judged: the candidate's answer is not JSON"
        return [
            CheckResult("json_valid", 0.0, None, False, True, "the candidate's answer holds no JSON object or array"),
            CheckResult("json_schema", None, None, None, True, not_json),
            CheckResult("json_fields", None, THRESHOLDS["json_fields"], None, True, not_json),
        ]
    return [CheckResult("json_valid", 1.0, None, True, True, None), schema_result(original, candidate),
            fields_result(original, candidate)]


def schema_result(original: dict | list, candidate: dict | list) -> CheckResult:
    """Same top-level shape: keys and their types for an object, element kinds for an array."""
    if _json_type(original) != _json_type(candidate):
        return CheckResult("json_schema", 0.0, None, False, True,
                           f"top level is {_json_type(candidate)}, original is {_json_type(original)}")
    if isinstance(original, list):
        assert isinstance(candidate, list)
        kinds = {_json_type(v) for v in original} - {"null"}
        got = {_json_type(v) for v in candidate} - {"null"}
        keys = set().union(*(v.keys() for v in original if isinstance(v, dict)))
        got_keys = set().union(*(v.keys() for v in candidate if isinstance(v, dict)))
        if (kinds and got and kinds != got) or keys != got_keys:
            return CheckResult("json_schema", 0.0, None, False, True,
                               f"array elements differ: {sorted(got | got_keys)} vs original {sorted(kinds | keys)}")
        return CheckResult("json_schema", 1.0, None, True, True, None)
    assert isinstance(candidate, dict)
    union = set(original) | set(candidate)
    matching = [k for k in original if k in candidate and _types_compatible(original[k], candidate[k])]
    score = len(matching) / len(union) if union else 1.0
    if score == 1.0:
        return CheckResult("json_schema", 1.0, None, True, True, None)
    problems = []
    missing = [k for k in original if k not in candidate]
    extra = [k for k in candidate if k not in original]
    retyped = [f"{k} {_json_type(candidate[k])} != {_json_type(original[k])}"
               for k in original if k in candidate and not _types_compatible(original[k], candidate[k])]
    if missing:
        problems.append("missing " + ", ".join(missing))
    if extra:
        problems.append("extra " + ", ".join(extra))
    if retyped:
        problems.append("type " + ", ".join(retyped))
    return CheckResult("json_schema", round(score, 4), None, False, True, "; ".join(problems))


_PLAIN_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_NULL_WORDS = frozenset({"", "null", "none", "n a", "na", "nil", "unknown"})


def _normalise_value(value: Any) -> Any:
    """A leaf value for comparison: None, a bool, a float, or normalised text."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        number = value.strip().replace(",", "").replace("$", "")
        if _PLAIN_NUMBER.fullmatch(number):  # not float(): "NaN" or "Infinity" may be a product's name
            return float(number)
        text = normalise_text(value)
        return None if text in _NULL_WORDS else text
    return json.dumps(value, sort_keys=True)


def _flatten(value: Any, path: str = "") -> dict[str, Any]:
    """Leaf path -> normalised value; a list of scalars is one leaf (compared as a sorted multiset)."""
    if isinstance(value, dict) and value:
        leaves: dict[str, Any] = {}
        for key, item in value.items():
            leaves.update(_flatten(item, f"{path}.{key}" if path else str(key)))
        return leaves
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        leaves = {}
        for i, item in enumerate(value):
            leaves.update(_flatten(item, f"{path}[{i}]"))
        return leaves
    if isinstance(value, list):
        return {path: tuple(sorted((_normalise_value(v) for v in value), key=repr))}
    if isinstance(value, dict):  # empty object
        return {path: ()}
    return {path: _normalise_value(value)}


def _values_equal(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=THRESHOLDS["final_answer_rel_tol"], abs_tol=1e-12)
    return a == b


def fields_result(original: dict | list, candidate: dict | list) -> CheckResult:
    """Share of the original's leaf fields the candidate repeats (normalised values)."""
    threshold = THRESHOLDS["json_fields"]
    expected, got = _flatten(original), _flatten(candidate)
    if not expected or expected == {"": ()}:
        return CheckResult("json_fields", None, threshold, None, True, "the original JSON has no fields")
    wrong = [path for path, value in expected.items() if path not in got or not _values_equal(value, got[path])]
    score = round(1 - len(wrong) / len(expected), 4)
    if score >= threshold:
        return CheckResult("json_fields", score, threshold, True, True, None)
    details = [
        f"{path or 'value'} missing" if path not in got
        else f"{path or 'value'} {_shown(got[path])} != {_shown(expected[path])}"
        for path in wrong[:3]
    ]
    more = f" (+{len(wrong) - 3} more)" if len(wrong) > 3 else ""
    return CheckResult("json_fields", score, threshold, False, True,
                       f"{len(expected) - len(wrong)}/{len(expected)} fields agree: " + "; ".join(details) + more)


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return _quote(str(value), 30) if isinstance(value, str) else str(value)


# --------------------------------------------------------------------------- final answers

_BOXED = re.compile(r"\\boxed\s*\{((?:[^{}]|\{[^{}]*\})*)\}")
_HASHES = re.compile(r"####\s*([^\n]+)")
_MARKER = re.compile(r"\b(?:final\s+answer|answer|conclusion)\b\s*(?:is\b|:|=)\s*([^\n]+)", re.IGNORECASE)
# A number that is not part of an identifier or a date: not glued to a letter, digit, dot, hyphen or
# slash before it (order AC-1234567, rule R10), nor to a letter, a slash or "-digit" after it
# (2025-03-01, 3/4/2025).
_NUMBER = re.compile(r"(?<![\w.\-/])(-?)\$?((?:\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?)(?![\w/]|-\d)")

# \frac{1}{2}, \dfrac{1}{2} or 1/2 (not a date: 3/4/2025), in an answer segment only.
_FRACTION = re.compile(r"\\d?frac\s*\{\s*(-?\d+)\s*\}\s*\{\s*(\d+)\s*\}|(?<![\w./])(-?\d+)\s*/\s*(\d+)(?![\w/])")


@dataclass(frozen=True)
class FinalAnswer:
    text: str               # the answer segment (normalised text when it has no number)
    number: float | None
    decimals: int           # digits after the decimal point as written


def final_answer(text: str) -> FinalAnswer | None:
    """The final answer of a worked solution, or None when it has none."""
    for pattern in (_BOXED, _HASHES, _MARKER):
        matches = pattern.findall(text)
        if matches:
            segment = matches[-1].strip()
            fraction = _FRACTION.search(segment)
            number = _NUMBER.search(segment)
            if fraction and (not number or fraction.start() <= number.start()):
                numerator = int(fraction.group(1) or fraction.group(3))
                denominator = int(fraction.group(2) or fraction.group(4))
                if denominator:
                    return FinalAnswer(segment, numerator / denominator, 0)
            if number:
                return _numeric_answer(segment, number)
            # A worded answer is its first clause: "Yes, she qualifies." -> "yes".
            normalised = normalise_text(re.split(r"[.,;:!?]\s", segment + " ")[0])
            if normalised:
                return FinalAnswer(normalised, None, 0)
    numbers = list(_NUMBER.finditer(text))
    if numbers:
        return _numeric_answer(numbers[-1].group(0), numbers[-1])
    return None


def _numeric_answer(segment: str, match: re.Match[str]) -> FinalAnswer:
    value = float(match.group(2).replace(",", ""))
    return FinalAnswer(segment, -value if match.group(1) else value, len(match.group(3) or ""))


def answers_agree(expected: FinalAnswer, got: FinalAnswer) -> bool:
    if expected.number is None or got.number is None:
        if expected.number is not None or got.number is not None:
            return False
        return expected.text == got.text or labels_agree(expected.text, got.text)
    if math.isclose(expected.number, got.number, rel_tol=THRESHOLDS["final_answer_rel_tol"], abs_tol=1e-12):
        return True
    if expected.decimals and got.decimals:  # "3.33" and "3.3333": the same value, shown rounded
        coarse = min(expected.decimals, got.decimals)
        return round(expected.number, coarse) == round(got.number, coarse)
    return False


def _shown_answer(answer: FinalAnswer) -> str:
    return f"{answer.number:g}" if answer.number is not None else _quote(answer.text, 40)


def final_answer_result(expected: FinalAnswer, candidate: str) -> CheckResult:
    got = final_answer(candidate)
    if got is None:
        return CheckResult("final_answer", 0.0, None, False, True,
                           f"no final answer found; original's is {_shown_answer(expected)}")
    if answers_agree(expected, got):
        return CheckResult("final_answer", 1.0, None, True, True, None)
    return CheckResult("final_answer", 0.0, None, False, True,
                       f"final answer {_shown_answer(got)} != original {_shown_answer(expected)}")


# --------------------------------------------------------------------------- free text


def similarity_result(score: float) -> CheckResult:
    threshold = THRESHOLDS["embedding_similarity"]
    score = round(score, 4)
    if score >= threshold:
        return CheckResult("embedding_similarity", score, threshold, True, True, None)
    shown = f"{score:.2f}"
    if shown == f"{threshold:.2f}":  # 0.6995 is not "0.70 < 0.70"
        shown = f"{score:.4f}"
    return CheckResult("embedding_similarity", score, threshold, False, True,
                       f"meaning differs from the original (similarity {shown} < {threshold:.2f})")


def length_ratio_result(original: str, candidate: str) -> CheckResult:
    """Candidate words / original words; gating on the wide range [1/x, x] (module docstring)."""
    widest = THRESHOLDS["length_ratio_max"]
    original_words, candidate_words = word_count(original), word_count(candidate)
    ratio = round(candidate_words / original_words, 4)
    in_range = 1 / widest <= ratio <= widest
    if in_range or abs(candidate_words - original_words) < THRESHOLDS["length_min_diff_words"]:
        return CheckResult("length_ratio", ratio, widest, True, True, None)
    side = "shorter" if ratio < 1 else "longer"
    return CheckResult("length_ratio", ratio, widest, False, True,
                       f"{candidate_words} words vs original {original_words}: {ratio:.2f}x, "
                       f"more than {widest:g}x {side}")


# Facts: identifiers mixing letters and digits (order AC-8767807, ticket T-684431) and numbers of two or
# more digits or with decimals (amounts, quantities); one-digit numbers are too common to mean a fact.
_FACT = re.compile(r"(?<![\w.])(?:[A-Za-z]{1,6}[-#]?\d{3,}[\w-]*|\$?\d{1,3}(?:,\d{3})+(?:\.\d+)?|\$?\d+\.\d+|\$?\d{2,})(?![\w])")
# Free text about one case (a customer's e-mail, a ticket, a document); code and fiction are left out.
KEY_FACT_TYPES = ("summarization", "long_document_summarization", "email_drafting", "chat", "faq_lookup", "unknown")


def facts_of(text: str) -> set[str]:
    """The identifiers and numbers of a text, normalised ($ and thousands separators dropped, lower case)."""
    return {m.group(0).lower().replace("$", "").replace(",", "") for m in _FACT.finditer(text)}


def key_facts_result(prompt: str, original: str, candidate: str) -> CheckResult | None:
    """The ids and numbers the original took from the prompt must mostly reappear in the candidate.

    Similarity reads "same topic and shape"; this reads "same case": an answer about another order
    scores high on similarity and fails here. None (no check) when the original repeats fewer than
    ``key_facts_min`` facts of the prompt: nothing to hold the candidate to.
    """
    grounded = facts_of(original) & facts_of(prompt)
    if len(grounded) < THRESHOLDS["key_facts_min"]:
        return None
    present = grounded & facts_of(candidate)
    score = round(len(present) / len(grounded), 4)
    passed = score >= THRESHOLDS["key_facts"]
    missing = sorted(grounded - present)
    reason = None if passed else (f"repeats {len(present)} of the {len(grounded)} ids and numbers the original took "
                                  f"from the prompt (missing {', '.join(missing[:4])}{'…' if len(missing) > 4 else ''})")
    return CheckResult("key_facts", score, THRESHOLDS["key_facts"], passed, True, reason)


_TOKEN = re.compile(r"\w+")


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence, bit-parallel (Allison & Dix 1986; Hyyrö 2004).

    One big-integer step per token of ``a`` instead of a len(a) x len(b)
    table: two 2,000-word answers take milliseconds, not seconds.
    """
    if not a or not b:
        return 0
    positions: dict[str, int] = {}
    for i, token in enumerate(b):
        positions[token] = positions.get(token, 0) | (1 << i)
    mask = (1 << len(b)) - 1
    row = mask
    for token in a:
        matches = row & positions.get(token, 0)
        row = ((row + matches) | (row - matches)) & mask
    return len(b) - row.bit_count()


def rouge_l(original: str, candidate: str) -> float:
    """ROUGE-L F1 of the candidate against the original, on lower-cased word tokens."""
    reference, hypothesis = _TOKEN.findall(original.lower()), _TOKEN.findall(candidate.lower())
    common = lcs_length(reference, hypothesis)
    if not common:
        return 0.0
    precision, recall = common / len(hypothesis), common / len(reference)
    return 2 * precision * recall / (precision + recall)


def rouge_l_result(original: str, candidate: str) -> CheckResult:
    return CheckResult("rouge_l", round(rouge_l(original, candidate), 4), None, None, False, None)


# --------------------------------------------------------------------------- refusals

_REFUSAL_VERBS = (r"(?:help|assist|provide|comply|fulfill?|answer|complete|do|generate|create|write|engage|continue|"
                  r"support)")
_REFUSAL = re.compile(
    r"\bas an ai\b"
    r"|\bi\s*(?:can(?:'|no)?t|cannot|won't|will not|am unable to|'m unable to|am not able to|'m not able to)\s+"
    + _REFUSAL_VERBS + r"\s+(?:with\s+)?(?:that|this|it|you|your request|such)\b"
    r"|\bi\s+(?:must|have to)\s+(?:respectfully\s+)?(?:decline|refuse)\b",
    re.IGNORECASE,
)


def is_refusal(text: str) -> bool:
    """The answer opens with a refusal (searched in its first characters only: a long answer may quote one)."""
    head = text[: int(THRESHOLDS["refusal_head_chars"])].replace("\u2019", "'")
    return bool(_REFUSAL.search(head))


def refusal_result(original: str, candidate: str) -> CheckResult:
    candidate_refuses = is_refusal(candidate)
    if candidate_refuses and not is_refusal(original):
        return CheckResult("refusal", 1.0, None, False, True,
                           f"the candidate refused ({_quote(candidate, 50)}) where the original answered")
    return CheckResult("refusal", 1.0 if candidate_refuses else 0.0, None, True, True, None)
