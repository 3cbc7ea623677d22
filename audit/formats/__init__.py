"""Log export formats, each turned into one *stage* relation of a fixed shape.

A format knows how to recognise its files (``sniff``) and how to expose one
row per record with the columns of ``STAGE_COLUMNS`` (``stage_sql``), in the
source's own terms: token counts as logged plus the ``usage_semantics`` that
say what they mean. Everything shared — timestamp parsing, type checks,
token normalisation, counting missing tokens, ids, de-duplication, rejects —
happens once, in ``audit.ingest``.

Columns a format leaves out are NULL. Values are VARCHAR so that a wrong type
in the source becomes a reject with a reason instead of a silent NULL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    import duckdb

# (name, type) of the stage relation every format produces, in order.
STAGE_COLUMNS: list[tuple[str, str]] = [
    ("line_no", "BIGINT"),            # 1-based line, row or record position; unique per stage row
    ("reject_reason", "VARCHAR"),     # set by the format for records it cannot read
    ("native_id", "VARCHAR"),         # the source's own id for the call
    ("dedupe_key", "VARCHAR"),        # what makes two records the same call (default native_id)
    ("started_at_raw", "VARCHAR"),    # any timestamp encoding; parsed centrally as UTC
    ("provider", "VARCHAR"),
    ("model_logged", "VARCHAR"),
    ("user_id", "VARCHAR"),
    ("session_id", "VARCHAR"),
    ("prompt_name", "VARCHAR"),
    ("prompt_version", "VARCHAR"),
    ("messages", "JSON"),             # array [{role, content, ...}], system first (JSON: no re-parse)
    ("response_text", "VARCHAR"),
    # Token counts exactly as logged, and which provider's meaning they carry:
    #   'openai'    input includes cache reads/writes; output includes reasoning
    #   'anthropic' input excludes cache reads and writes (additive); output includes thinking
    #   'split'     input excludes cache reads and writes; output excludes reasoning (Langfuse)
    ("usage_semantics", "VARCHAR"),
    ("usage_input", "VARCHAR"),
    ("usage_cache_read", "VARCHAR"),
    ("usage_cache_write", "VARCHAR"),
    ("usage_output", "VARCHAR"),
    ("usage_reasoning", "VARCHAR"),
    ("logged_cost_usd", "VARCHAR"),
    ("latency_ms", "VARCHAR"),
    ("status", "VARCHAR"),            # 'ok' | 'error' (NULL: ok unless an error is present)
    ("status_code", "VARCHAR"),
    ("error_message", "VARCHAR"),
    ("is_batch", "BOOLEAN"),
    ("service_tier", "VARCHAR"),
    ("temperature", "VARCHAR"),
    ("max_tokens", "VARCHAR"),
    ("metadata", "JSON"),             # object of whatever else the source had
    ("tools", "JSON"),                # tool/function definitions the request offered, if any
]
STAGE_NAMES = [name for name, _ in STAGE_COLUMNS]


def select_stage(exprs: dict[str, str], source: str) -> str:
    """``SELECT`` the stage columns from ``source``; missing ones are NULL."""
    unknown = set(exprs) - set(STAGE_NAMES) - {"raw"}
    if unknown:
        raise ValueError(f"not stage columns: {sorted(unknown)}")
    cols = [f"CAST({exprs.get(name, 'NULL')} AS {typ}) AS {name}" for name, typ in STAGE_COLUMNS]
    cols.append(f"{exprs.get('raw', 'raw')} AS raw")
    return "SELECT " + ",\n       ".join(cols) + f"\nFROM {source}"


@dataclass
class Sample:
    """What sniffing sees of a file: its path, first bytes and first lines."""

    path: Path
    head: bytes
    lines: list[str] = field(default_factory=list)
    first_json: object = None   # the first line parsed as JSON, or None


@dataclass
class IngestOptions:
    mapping: dict[str, str] = field(default_factory=dict)   # --map source=ledger
    default_model: str | None = None                        # --model: for sources that name none
    compression: str = "none"                               # none | gzip | zstd
    sample: Sample | None = None                            # what sniffing saw of this file


class Format:
    """Base class: one subclass per export format."""

    name: ClassVar[str]
    description: ClassVar[str]
    # 'requests' formats fill the ledger; 'batch_input' ones fill batch_requests.
    target: ClassVar[str] = "requests"

    def sniff(self, sample: Sample) -> bool:
        raise NotImplementedError

    def stage_sql(self, con: duckdb.DuckDBPyConnection, path: Path, options: IngestOptions, file_id: int) -> str:
        """Return a SELECT with the stage columns plus ``raw`` (the record's text)."""
        raise NotImplementedError


def records_stage(con: duckdb.DuckDBPyConnection, name: str, records: list[dict]) -> str:
    """Register Python-built records as ``name`` and return their stage SELECT.

    For formats read with Python (SQLite, whole-document JSON): each record is
    a dict of stage column → value (str/None; ``line_no`` int, ``is_batch``
    bool) plus ``raw``, the record's text. Missing keys are NULL; JSON columns
    are cast (and so checked) by ``select_stage``.
    """
    import pyarrow as pa

    con.complete()  # DuckDB 2 refuses register() while an execute() result is still open
    columns = {}
    for column, sql_type in STAGE_COLUMNS + [("raw", "VARCHAR")]:
        arrow_type = pa.int64() if sql_type == "BIGINT" else pa.bool_() if sql_type == "BOOLEAN" else pa.string()
        values = [r.get(column) for r in records]
        if arrow_type == pa.string():
            values = [v if v is None or isinstance(v, str) else str(v) for v in values]
        columns[column] = pa.array(values, arrow_type)
    con.register(name, pa.table(columns))
    return select_stage({column: column for column in [*STAGE_NAMES, "raw"]}, name)


# (module, class) of every format, most specific first: sniffing takes the
# first that matches, so the catch-all ``generic`` comes last.
_FORMATS = [
    ("openai_batch", "BatchOutput"),
    ("anthropic", "AnthropicBatchResults"),
    ("openai_batch", "BatchInput"),
    # Helicone rows also carry request_body/response_body: before the pair formats.
    ("helicone", "Helicone"),
    ("openai_chat", "ChatPairs"),
    ("openai_responses", "ResponsesPairs"),
    ("anthropic", "AnthropicPairs"),
    ("langfuse", "Langfuse"),
    ("litellm", "LiteLLMSpendLogs"),
    ("otel", "OtelSpans"),
    ("llm_logsdb", "LlmLogsDb"),
    ("sharegpt", "ShareGPT"),
    ("hf_dataset", "HFDataset"),
    ("generic", "Generic"),
]


def registry() -> list[Format]:
    """All formats, most specific first (sniffing takes the first that matches)."""
    import importlib

    formats = []
    for module_name, class_name in _FORMATS:
        try:
            module = importlib.import_module(f"audit.formats.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"audit.formats.{module_name}":
                continue  # not written yet
            raise
        if hasattr(module, class_name):
            formats.append(getattr(module, class_name)())
    return formats


def by_name(name: str) -> Format | None:
    return next((f for f in registry() if f.name == name), None)
