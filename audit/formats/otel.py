"""OpenTelemetry GenAI spans as OTLP/JSON (OpenLLMetry/Traceloop, OTel GenAI semconv).

Files come from an OTLP file exporter or a collector's ``file`` exporter, or
from a tracing backend's trace download: either one document per file,
``{"resourceSpans": [{"resource": …, "scopeSpans": [{"spans": [...]}]}]}``
(possibly pretty-printed), or one such document per line. Every span that
names a model (``gen_ai.request.model``/``gen_ai.response.model``, or a
legacy alias) is one LLM call; other spans (HTTP, DB, workflow/task spans)
are skipped and are not records.

Field reference: ``reference/log-formats.md`` §8. What we handle:

- Attribute values are typed wrappers: ``stringValue``, ``intValue`` (int64
  as a **decimal string**), ``doubleValue``, ``boolValue``, ``arrayValue``,
  ``kvlistValue``. Times are epoch **nanoseconds** as strings; latency is
  end − start.
- Attribute names changed between convention versions and instrumentation
  releases: ``ALIASES`` maps old names to the current ones (the current name
  wins when a span has both), e.g. ``gen_ai.usage.prompt_tokens`` →
  ``gen_ai.usage.input_tokens``, ``gen_ai.usage.cache_read_input_tokens`` →
  ``gen_ai.usage.cache_read.input_tokens``, ``gen_ai.system`` →
  ``gen_ai.provider.name``, ``llm.usage.total_tokens`` →
  ``gen_ai.usage.total_tokens``; the indexed ``llm.prompts.{i}.*`` became
  ``gen_ai.prompt.{i}.*``.
- Tokens: per the spec ``input_tokens`` **includes** cache reads and writes
  and ``output_tokens`` includes reasoning (``usage_semantics = 'openai'``);
  OpenLLMetry's Anthropic instrumentation sums the additive Anthropic counts
  to follow it. A span whose cache counts exceed its input cannot be in spec
  terms, so it is read as raw additive Anthropic usage (older
  instrumentations) instead of being rejected.
- Prompt and response: ``gen_ai.system_instructions`` (system, first) and
  ``gen_ai.input.messages`` / ``gen_ai.output.messages`` (JSON strings of
  ``[{role, parts: [{type: "text", content}]}]``), or the legacy indexed
  ``gen_ai.prompt.{i}.role|content`` / ``gen_ai.completion.{i}.content``.
  Content is absent when tracing content is off (``TRACELOOP_TRACE_CONTENT=false``)
  and may be cut by attribute length limits: a messages attribute that is not
  valid JSON leaves the prompt empty (``metadata.messages_unreadable``) but
  keeps the call and its usage.
- Wrappers: an agent span (``invoke_agent``) or a framework span (LangChain
  over the OpenAI instrumentation) repeats the usage of the LLM spans under
  it. A GenAI span with a GenAI span below it in the same trace is therefore
  skipped; the innermost spans are the calls that were billed.
- user/session: ``traceloop.association.properties.user_id|session_id``, then
  ``user.id``/``gen_ai.user`` and ``gen_ai.conversation.id``/``session.id``.
  The prompt template is ``gen_ai.prompt.name`` or ``traceloop.prompt.key``
  with ``traceloop.prompt.version``. No cost attribute exists.
- ``native_id`` is the spanId; ``traceId:spanId`` identifies the call.

Records are read with Python (OTLP documents are nested, one document holds
many calls). ``line_no`` is the span's position in the file (1-based, over
all spans in file order, so skipped spans leave gaps): a file holds many
spans per line. In the one-document-per-line form an unreadable line takes one
position, its reject reason names the physical line, and each span's
``metadata.document_line`` says which line it came from.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import duckdb

from audit.errors import InputError
from audit.formats import Format, IngestOptions, Sample, records_stage
from audit.formats.lines import read_bytes

# Old attribute name → current name.
ALIASES: dict[str, str] = {
    "gen_ai.system": "gen_ai.provider.name",
    "llm.vendor": "gen_ai.provider.name",
    "llm.request.model": "gen_ai.request.model",
    "llm.response.model": "gen_ai.response.model",
    "llm.request.type": "gen_ai.operation.name",
    "llm.request.max_tokens": "gen_ai.request.max_tokens",
    "llm.temperature": "gen_ai.request.temperature",
    "gen_ai.usage.prompt_tokens": "gen_ai.usage.input_tokens",
    "llm.usage.prompt_tokens": "gen_ai.usage.input_tokens",
    "llm.usage.input_tokens": "gen_ai.usage.input_tokens",
    "gen_ai.usage.completion_tokens": "gen_ai.usage.output_tokens",
    "llm.usage.completion_tokens": "gen_ai.usage.output_tokens",
    "llm.usage.output_tokens": "gen_ai.usage.output_tokens",
    "gen_ai.usage.cache_read_input_tokens": "gen_ai.usage.cache_read.input_tokens",
    "llm.usage.cache_read_input_tokens": "gen_ai.usage.cache_read.input_tokens",
    "gen_ai.usage.input_tokens_details.cached": "gen_ai.usage.cache_read.input_tokens",
    "gen_ai.usage.cache_creation_input_tokens": "gen_ai.usage.cache_creation.input_tokens",
    "llm.usage.cache_creation_input_tokens": "gen_ai.usage.cache_creation.input_tokens",
    "gen_ai.usage.reasoning_tokens": "gen_ai.usage.reasoning.output_tokens",
    "llm.usage.reasoning_tokens": "gen_ai.usage.reasoning.output_tokens",
    "llm.usage.total_tokens": "gen_ai.usage.total_tokens",
    "llm.user": "gen_ai.user",
    "llm.is_streaming": "gen_ai.is_streaming",
    "gen_ai.openai.request.service_tier": "openai.request.service_tier",
    "gen_ai.openai.response.service_tier": "openai.response.service_tier",
}
# Old prefix of indexed content attributes → current prefix.
PREFIX_ALIASES = {"llm.prompts.": "gen_ai.prompt.", "llm.completions.": "gen_ai.completion."}

# gen_ai.provider.name (or the older gen_ai.system) → the ledger's provider names.
PROVIDERS = {
    "gcp.vertex_ai": "google", "gcp.gemini": "google", "gcp.gen_ai": "google", "vertex_ai": "google",
    "vertexai": "google", "gemini": "google", "aws.bedrock": "aws", "bedrock": "aws",
    "az.ai.openai": "azure", "azure.ai.openai": "azure", "az.ai.inference": "azure", "azure.ai.inference": "azure",
    "mistral_ai": "mistral", "mistralai": "mistral", "xai": "x-ai", "x_ai": "x-ai",
}
MODEL_ATTRIBUTES = ("gen_ai.response.model", "gen_ai.request.model")
# Attributes worth keeping in metadata, under shorter names.
METADATA_ATTRIBUTES = {
    "gen_ai.operation.name": "operation",
    "gen_ai.response.id": "response_id",
    "gen_ai.response.finish_reasons": "finish_reasons",
    "gen_ai.usage.total_tokens": "total_tokens",
    "gen_ai.agent.name": "agent_name",
    "gen_ai.is_streaming": "streaming",
    "traceloop.workflow.name": "workflow",
    "traceloop.entity.name": "entity",
    "traceloop.prompt.version_name": "prompt_version_name",
    "traceloop.prompt.template_variables": "prompt_variables",
}
_ASSOCIATION = "traceloop.association.properties."
_INDEXED = re.compile(r"^gen_ai\.(prompt|completion)\.(\d+)\.(role|content)$")
_ERROR_STATUS = (2, "2", "STATUS_CODE_ERROR")


def any_value(value: object) -> object:
    """An OTLP/JSON AnyValue → Python. intValue stays a (decimal) string: int64 is a string in OTLP/JSON."""
    if not isinstance(value, dict):
        return value
    for key in ("stringValue", "intValue", "doubleValue", "boolValue", "bytesValue"):
        if key in value:
            return value[key]
    if "arrayValue" in value:
        return [any_value(v) for v in (value["arrayValue"] or {}).get("values", [])]
    if "kvlistValue" in value:
        return {kv.get("key"): any_value(kv.get("value")) for kv in (value["kvlistValue"] or {}).get("values", [])}
    return None


def attribute_map(key_values: object) -> dict[str, object]:
    """OTLP ``[{key, value}]`` → {current name: value}; a current name beats its aliases."""
    if not isinstance(key_values, list):
        return {}
    current: dict[str, object] = {}
    aliased: list[tuple[str, object]] = []
    for kv in key_values:
        if not isinstance(kv, dict) or not isinstance(kv.get("key"), str):
            continue
        key, value = kv["key"], any_value(kv.get("value"))
        new = ALIASES.get(key)
        if new is None:
            prefix = next((p for p in PREFIX_ALIASES if key.startswith(p)), None)
            new = PREFIX_ALIASES[prefix] + key[len(prefix):] if prefix else None
        if new is None:
            current[key] = value
        else:
            aliased.append((new, value))
    for key, value in aliased:
        current.setdefault(key, value)
    return current


def _text(value: object) -> str | None:
    return None if value is None else value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _count(value: object) -> str | None:
    """A token count as logged, as text (a wrong type is rejected downstream, not dropped)."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return value if isinstance(value, str) else json.dumps(value)


def _parse_json_attribute(value: object) -> tuple[object, bool]:
    """A JSON-string attribute → (value, readable)."""
    if value is None:
        return None, True
    if not isinstance(value, str):
        return value, True
    try:
        return json.loads(value), True
    except ValueError:
        return None, False


def _parts_content(parts: object) -> object:
    """GenAI message parts → chat content: the joined text, or the parts when not all text."""
    if not isinstance(parts, list):
        return parts
    if all(isinstance(p, dict) and p.get("type") == "text" for p in parts):
        return "".join(str(p.get("content", p.get("text", ""))) for p in parts)
    return parts


def _legacy_content(content: object) -> object:
    """OpenLLMetry writes multimodal content as a JSON string of parts; plain text stays text."""
    if isinstance(content, str) and content.startswith("[{"):
        try:
            parsed = json.loads(content)
        except ValueError:
            return content
        if isinstance(parsed, list) and all(isinstance(p, dict) and "type" in p for p in parsed):
            return parsed
    return content


def _indexed(attrs: dict, kind: str) -> list[dict]:
    """``gen_ai.{kind}.{i}.role|content`` → messages ordered by i."""
    found: dict[int, dict] = {}
    for key, value in attrs.items():
        match = _INDEXED.match(key)
        if match and match.group(1) == kind:
            found.setdefault(int(match.group(2)), {})[match.group(3)] = value
    return [found[i] for i in sorted(found)]


def span_messages(attrs: dict) -> tuple[list[dict] | None, bool]:
    """The prompt as a chat message list (system first), and whether it was readable."""
    readable = True
    messages: list[dict] = []
    system, ok = _parse_json_attribute(attrs.get("gen_ai.system_instructions"))
    if not ok:  # plain text instructions are allowed too
        system = attrs.get("gen_ai.system_instructions")
    if system is not None:
        messages.append({"role": "system", "content": _parts_content(system) if isinstance(system, list) else system})
    inputs, ok = _parse_json_attribute(attrs.get("gen_ai.input.messages"))
    readable &= ok
    if isinstance(inputs, list):
        for message in inputs:
            if isinstance(message, dict):
                content = _parts_content(message["parts"]) if "parts" in message else message.get("content")
                messages.append({"role": message.get("role", "user"), "content": content})
    elif inputs is None and ok:
        for message in _indexed(attrs, "prompt"):
            messages.append({"role": message.get("role") or "user", "content": _legacy_content(message.get("content"))})
    return (messages or None), readable


def span_response_text(attrs: dict) -> str | None:
    """The first output message's text (current attribute), else the legacy gen_ai.completion.0.content."""
    outputs, _ = _parse_json_attribute(attrs.get("gen_ai.output.messages"))
    if isinstance(outputs, list) and outputs and isinstance(outputs[0], dict):
        content = _parts_content(outputs[0].get("parts", outputs[0].get("content")))
        return _text(content)
    completions = _indexed(attrs, "completion")
    if completions:
        return _text(completions[0].get("content"))
    return None


def _is_genai(attrs: dict) -> bool:
    return any(attrs.get(name) not in (None, "") for name in MODEL_ATTRIBUTES)


def _nanos(value: object) -> int | None:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


def _usage(attrs: dict) -> dict[str, str | None]:
    usage = {
        "usage_input": _count(attrs.get("gen_ai.usage.input_tokens")),
        "usage_cache_read": _count(attrs.get("gen_ai.usage.cache_read.input_tokens")),
        "usage_cache_write": _count(attrs.get("gen_ai.usage.cache_creation.input_tokens")),
        "usage_output": _count(attrs.get("gen_ai.usage.output_tokens")),
        "usage_reasoning": _count(attrs.get("gen_ai.usage.reasoning.output_tokens")),
        "usage_semantics": "openai",
    }
    try:
        cached = int(usage["usage_cache_read"] or 0) + int(usage["usage_cache_write"] or 0)
        if usage["usage_input"] is not None and cached > int(usage["usage_input"]):
            usage["usage_semantics"] = "anthropic"  # impossible in spec terms: raw additive counts
    except ValueError:
        pass  # not whole numbers: ingest rejects the span with the reason
    return usage


def span_record(span: dict, attrs: dict, context: dict, position: int) -> dict:
    """One GenAI span → a stage record."""
    trace_id, span_id = span.get("traceId"), span.get("spanId")
    association = {k[len(_ASSOCIATION):]: v for k, v in attrs.items() if k.startswith(_ASSOCIATION)}
    messages, readable = span_messages(attrs)
    raw_start = span.get("startTimeUnixNano")
    start, end = _nanos(raw_start), _nanos(span.get("endTimeUnixNano"))
    status = span.get("status") if isinstance(span.get("status"), dict) else {}
    failed = status.get("code") in _ERROR_STATUS
    provider = attrs.get("gen_ai.provider.name")
    provider = PROVIDERS.get(str(provider).lower(), str(provider).lower()) if provider is not None else None
    metadata = {"trace_id": trace_id, "parent_span_id": span.get("parentSpanId") or None, "span_name": span.get("name"),
                **context}
    metadata.update({short: attrs[name] for name, short in METADATA_ATTRIBUTES.items() if name in attrs})
    extra = {k: v for k, v in association.items() if k not in ("user_id", "session_id")}
    if extra:
        metadata["association_properties"] = extra
    if not readable:
        metadata["messages_unreadable"] = True
    return {
        "line_no": position,
        "native_id": _text(span_id),
        "dedupe_key": f"{trace_id}:{span_id}" if span_id else None,
        # As logged (0 means unset): another encoding is parsed, or rejected, by ingest.
        "started_at_raw": None if raw_start in (None, "", "0", 0) else _text(raw_start),
        "provider": provider,
        "model_logged": _text(attrs.get("gen_ai.response.model") or attrs.get("gen_ai.request.model")),
        "user_id": _text(next((v for v in (association.get("user_id"), attrs.get("user.id"), attrs.get("gen_ai.user"),
                                           attrs.get("enduser.id")) if v not in (None, "")), None)),
        "session_id": _text(next((v for v in (association.get("session_id"), attrs.get("gen_ai.conversation.id"),
                                              attrs.get("session.id")) if v not in (None, "")), None)),
        "prompt_name": _text(attrs.get("gen_ai.prompt.name") or attrs.get("traceloop.prompt.key")),
        "prompt_version": _text(attrs.get("traceloop.prompt.version")),
        "messages": json.dumps(messages, ensure_ascii=False) if messages else None,
        "response_text": span_response_text(attrs),
        **_usage(attrs),
        "latency_ms": str((end - start) / 1e6) if start and end and end >= start else None,
        "status": "error" if failed else "ok",
        "error_message": (status.get("message") or attrs.get("error.type") or "span status error") if failed else None,
        "is_batch": False,
        "service_tier": _text(attrs.get("openai.response.service_tier") or attrs.get("openai.request.service_tier")),
        "temperature": _text(attrs.get("gen_ai.request.temperature")),
        "max_tokens": _count(attrs.get("gen_ai.request.max_tokens")),
        "metadata": json.dumps({k: v for k, v in metadata.items() if v is not None}, ensure_ascii=False),
        "raw": json.dumps(span, ensure_ascii=False),
    }


def _read_text(path: Path, compression: str) -> str:
    """The file as text: unlike ``read_text``, bytes that are not UTF-8 refuse the file."""
    data = read_bytes(path, compression)
    try:
        return data.decode("utf-8").lstrip("\ufeff")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} is not UTF-8 text (byte {exc.start})", "OTLP/JSON files are UTF-8 JSON") from None


def documents(text: str, path: Path) -> list[tuple[object, str | None, int | None]]:
    """The OTLP documents of a file: (document, the raw text if unreadable, its line or None)."""
    try:
        whole = json.loads(text)
    except ValueError as whole_error:
        found: list[tuple[object, str | None, int | None]] = []
        for line_no, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                found.append((json.loads(line), None, line_no))
            except ValueError:
                found.append((None, line, line_no))
        if not any(doc is not None for doc, _, _ in found):
            raise InputError(f"{path} is not valid OTLP/JSON: {whole_error}", "check that the file is complete") from None
        return found
    return [(doc, None, None) for doc in whole] if isinstance(whole, list) else [(whole, None, None)]


def _spans(document: dict):
    """(span, context) for every span of an OTLP document, in order."""
    for resource_spans in document.get("resourceSpans") or []:
        if not isinstance(resource_spans, dict):
            continue
        resource = attribute_map((resource_spans.get("resource") or {}).get("attributes"))
        # instrumentationLibrarySpans: the name before OTLP 0.15.
        for scope_spans in resource_spans.get("scopeSpans") or resource_spans.get("instrumentationLibrarySpans") or []:
            if not isinstance(scope_spans, dict):
                continue
            scope = scope_spans.get("scope") or scope_spans.get("instrumentationLibrary") or {}
            context = {"service_name": resource.get("service.name"), "scope": scope.get("name") if isinstance(scope, dict) else None}
            for span in scope_spans.get("spans") or []:
                if isinstance(span, dict):
                    yield span, context


def otel_records(text: str, path: Path) -> list[dict]:
    """Every GenAI span of the file (minus wrappers), plus one reject per unreadable document."""
    items: list[tuple[int, dict, dict, dict] | dict] = []
    position = 0
    for document, bad_line, line_no in documents(text, path):
        where = f": line {line_no}" if line_no else ""
        if bad_line is not None or not isinstance(document, dict) or "resourceSpans" not in document:
            position += 1
            reason = "not valid JSON" if bad_line is not None else "not an OTLP document (no resourceSpans)"
            items.append({"line_no": position, "reject_reason": reason + where,
                          "raw": bad_line if bad_line is not None else json.dumps(document)})
            continue
        for span, context in _spans(document):
            position += 1
            # In the one-document-per-line form, the line tells where the span is.
            items.append((position, span, attribute_map(span.get("attributes")), {**context, "document_line": line_no}))
    spans = [item for item in items if isinstance(item, tuple)]
    parent_of = {(s.get("traceId"), s.get("spanId")): s.get("parentSpanId") for _, s, _, _ in spans}
    # Wrappers: GenAI spans with a GenAI span below them repeat its usage.
    wrappers: set[tuple] = set()
    for _, span, attrs, _ in spans:
        if not _is_genai(attrs):
            continue
        trace, parent, hops = span.get("traceId"), span.get("parentSpanId"), 0
        while parent and hops < 1000:
            wrappers.add((trace, parent))
            parent, hops = parent_of.get((trace, parent)), hops + 1
    records = []
    for item in items:
        if isinstance(item, dict):
            records.append(item)
            continue
        position, span, attrs, context = item
        if _is_genai(attrs) and (span.get("traceId"), span.get("spanId")) not in wrappers:
            records.append(span_record(span, attrs, context, position))
    return records


_DOCUMENT_START = re.compile(rb'^\s*\{\s*"resourceSpans"\s*:')


class OtelSpans(Format):
    name = "otel-genai"
    description = "OpenTelemetry GenAI spans as OTLP/JSON (OpenLLMetry/Traceloop; one document, or one per line)"

    def sniff(self, sample: Sample) -> bool:
        first = sample.first_json
        if isinstance(first, dict):
            return "resourceSpans" in first
        return bool(_DOCUMENT_START.match(sample.head.lstrip(b"\xef\xbb\xbf")[:4096]))

    def stage_sql(self, con: duckdb.DuckDBPyConnection, path: Path, options: IngestOptions, file_id: int) -> str:
        records = otel_records(_read_text(path, options.compression), path)
        return records_stage(con, f"_records_{file_id}", records)
