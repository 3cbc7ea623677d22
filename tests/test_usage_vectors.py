"""Our token normalisation against genai-prices on 1,577 real provider usage bodies.

``realdata/usage_vectors/usages.json`` (pydantic/genai-prices, MIT) holds real
``usage`` bodies recorded from provider responses, each with
``extracted[].usage``: genai-prices' normalised reading of that body per
(provider, API flavour) — ``input_tokens`` (all input, cached included),
``cache_read_tokens``, ``cache_write_tokens``, ``output_tokens``,
``output_reasoning_tokens``. Those are exactly our ledger's meanings.

Each OpenAI/Anthropic body becomes one line of a fixture written at test time
in the format that carries it — openai-chat pairs, openai-responses pairs,
anthropic-messages pairs — all three are ingested into a tmp DuckDB, and the
ledger's input_tokens, cached_input_tokens, cache_write_tokens, output_tokens
and reasoning_tokens must equal genai-prices' values for the matching flavour:
(openai, chat), (openai, responses), (anthropic, default).

Coverage of the 1,577 bodies (asserted below, so these numbers stay true):
- 406 OpenAI Chat Completions usages (``prompt_tokens``…, incl. Groq, DeepSeek,
  Mistral, OpenRouter and Hugging Face bodies of that shape)
- 3 OpenAI embeddings usages (``prompt_tokens`` only): input compared against
  genai-prices' (openai, embeddings) reading; output is not logged, so not compared
- 254 OpenAI Responses usages (``input_tokens`` + ``input_tokens_details``)
- 226 Anthropic Messages usages (``cache_*_input_tokens``; additive)
= 889 compared. Not compared, as we have no format for them: 451 Google
``usageMetadata``, 220 Bedrock Converse (``inputTokens``…), 13 Cohere
``billed_units`` and 4 Cohere ``meta`` bodies (688).

Findings: on every compared body genai-prices agrees with the semantics of
reference/log-formats.md (cached ⊂ input for OpenAI, additive for Anthropic,
reasoning/thinking ⊂ output). Readings of a body under a non-matching flavour
differ, as they should: e.g. the (anthropic, chat) reading of a DeepSeek chat
body drops ``prompt_tokens_details.cached_tokens``. Mistral's
``num_cached_tokens`` (44 bodies, e.g. 69 of 70 prompt tokens) is read by
neither genai-prices' chat extractor nor our openai-chat format.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from audit.ingest import ingest
from conftest import realdata, rows

# (provider_id, api_flavor) of genai-prices' reading that matches each of our formats.
FLAVOUR = {
    "openai-chat": ("openai", "chat"),
    "embeddings": ("openai", "embeddings"),
    "openai-responses": ("openai", "responses"),
    "anthropic-messages": ("anthropic", "default"),
}
FIELDS = {  # ledger column → genai-prices key
    "input_tokens": "input_tokens",
    "cached_input_tokens": "cache_read_tokens",
    "cache_write_tokens": "cache_write_tokens",
    "output_tokens": "output_tokens",
    "reasoning_tokens": "output_reasoning_tokens",
}
TIME = "2025-06-01T00:00:00Z"


def shape_of(body: dict, model: str) -> str:
    """Which of our formats a usage body belongs to, or the family we do not read."""
    if "usageMetadata" in body:
        return "google usageMetadata"
    usage = body.get("usage")
    if not isinstance(usage, dict):
        return "cohere meta" if "meta" in body else "no usage"
    if "prompt_tokens" in usage:
        return "openai-chat" if "completion_tokens" in usage else "embeddings"
    anthropic_keys = "cache_creation_input_tokens" in usage or "cache_read_input_tokens" in usage
    if "input_tokens" in usage and not anthropic_keys and (
            "input_tokens_details" in usage or "output_tokens_details" in usage):
        return "openai-responses"
    if anthropic_keys or ("input_tokens" in usage and model.startswith("claude")):
        return "anthropic-messages"
    if "inputTokens" in usage:
        return "bedrock converse"
    if "billed_units" in usage:
        return "cohere billed_units"
    return "other"


def pair_line(shape: str, log_id: str, model: str, usage: dict) -> dict:
    """A one-call log line carrying ``usage`` in the envelope of ``shape``'s format."""
    if shape in ("openai-chat", "embeddings"):
        response = {"id": f"chatcmpl-{log_id}", "object": "chat.completion", "created": 1748736000, "model": model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                    "usage": usage}
        request = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    elif shape == "openai-responses":
        response = {"id": f"resp_{log_id}", "object": "response", "created_at": 1748736000, "status": "completed",
                    "model": model, "output": [{"type": "message", "role": "assistant",
                                                "content": [{"type": "output_text", "text": "ok"}]}], "usage": usage}
        request = {"model": model, "input": "hi"}
    else:
        response = {"id": f"msg_{log_id}", "type": "message", "role": "assistant", "model": model,
                    "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn", "usage": usage}
        request = {"model": model, "max_tokens": 1024, "messages": [{"role": "user", "content": "hi"}]}
    return {"id": log_id, "timestamp": TIME, "request": request, "response": response}


def genai_prices_reading(entry: dict, flavour: tuple[str, str]) -> dict | None:
    for group in entry.get("extracted", []):
        if any((e["provider_id"], e["api_flavor"]) == flavour for e in group["extractors"]):
            return group["usage"]
    return None


def test_usage_normalisation_matches_genai_prices(con, tmp_path: Path):
    entries = json.loads(realdata("usage_vectors", "usages.json").read_text())
    shapes: Counter[str] = Counter()
    lines: dict[str, list[str]] = {"openai-chat": [], "openai-responses": [], "anthropic-messages": []}
    expected: dict[str, tuple[str, dict]] = {}
    for n, entry in enumerate(entries):
        body = entry["body"]
        model = body.get("model") or entry.get("model") or "unknown-model"
        shape = shape_of(body, model)
        shapes[shape] += 1
        if shape not in FLAVOUR:
            continue
        log_id = f"uv_{n}"
        reading = genai_prices_reading(entry, FLAVOUR[shape])
        assert reading is not None, f"entry {n}: genai-prices has no {FLAVOUR[shape]} reading"
        expected[log_id] = (shape, reading)
        fmt = "openai-chat" if shape == "embeddings" else shape
        lines[fmt].append(json.dumps(pair_line(shape, log_id, model, body["usage"])))

    assert shapes == {"openai-chat": 406, "embeddings": 3, "openai-responses": 254, "anthropic-messages": 226,
                      "google usageMetadata": 451, "bedrock converse": 220, "cohere billed_units": 13, "cohere meta": 4}

    for fmt, fmt_lines in lines.items():
        path = tmp_path / f"{fmt}.jsonl"
        path.write_text("\n".join(fmt_lines) + "\n")
        totals = ingest(con, [path], forced_format=fmt).as_dict()["totals"]
        assert totals["stored"] == len(fmt_lines) and totals["rejected"] == 0, (fmt, totals)

    got = {r["native_id"]: r for r in rows(con, f"SELECT native_id, tokens_source, {', '.join(FIELDS)} FROM requests")}
    assert len(got) == len(expected) == 889
    mismatches = []
    for log_id, (shape, reading) in expected.items():
        row = got[log_id]
        fields = ["input_tokens"] if shape == "embeddings" else list(FIELDS)
        ours = {f: row[f] for f in fields}
        theirs = {f: reading.get(FIELDS[f], 0) for f in fields}
        if ours != theirs:
            mismatches.append((log_id, shape, ours, theirs))
        if shape != "embeddings":
            assert row["tokens_source"] == "logged", log_id
    assert not mismatches, f"{len(mismatches)} bodies differ, e.g. {mismatches[:3]}"


@pytest.mark.parametrize("shape, usage, model", [
    ("openai-chat", {"prompt_tokens": 10, "completion_tokens": 2}, "gpt-4o"),
    ("openai-responses", {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 2}, "gpt-4.1"),
    ("anthropic-messages", {"input_tokens": 10, "cache_read_input_tokens": 0, "output_tokens": 2}, "x"),
    ("anthropic-messages", {"input_tokens": 10, "output_tokens": 2}, "claude-3-haiku"),  # plain, by model
    ("bedrock converse", {"inputTokens": 10, "outputTokens": 2}, "anthropic.claude-3"),
])
def test_shape_classification(shape, usage, model):
    assert shape_of({"usage": usage}, model) == shape
