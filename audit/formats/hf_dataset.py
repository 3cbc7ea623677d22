"""A local Hugging Face dataset, read with the ``datasets`` package (never the network).

Where it comes from: a folder written by ``Dataset.save_to_disk`` (Arrow
shards ``data-0000i-of-0000n.arrow`` + ``dataset_info.json`` + ``state.json``)
or ``DatasetDict.save_to_disk`` (``dataset_dict.json`` + one such folder per
split); and, only when forced with ``--format hf-dataset``, a parquet, JSON
(array or lines), CSV or Arrow file loaded with ``datasets.load_dataset``
(otherwise those are the generic format's).

The unit of a saved dataset is its ``state.json``: ingesting it reads the
whole split through ``datasets.load_from_disk``. ``audit.ingest.expand_paths``
hands a folder over file by file, so the other members of a saved folder
(the shards, ``dataset_info.json``, ``dataset_dict.json``) are recognised too
but read as empty: the split's rows are counted once, under its
``state.json``. (Proposed: ``expand_paths`` collapses a saved-dataset folder
to its ``state.json`` files.)

Two shapes of rows:

- a table of calls: columns matched to ledger fields exactly as the generic
  format does (``resolve_columns``: names, aliases, ``--map COLUMN=FIELD``),
  run as SQL by DuckDB over the Arrow table (no Python loop per row);
  nested columns (a ``messages`` list) become JSON. Token counts follow
  OpenAI's meaning (input includes cached), as in the generic format.
- conversations (a ``conversations``/``conversation`` column, or
  ``messages`` with no response column): one ledger row per assistant turn,
  read by the ShareGPT format's code (see ``audit.formats.sharegpt``), with
  the same ``line_no`` rule (calls numbered in order; ``metadata.row`` is
  the dataset row, 1-based).

The model comes from a model column or the ``default_model`` ingest option
(``--model NAME``, proposed); a dataset with neither is refused with that
hint. Tokens missing from the rows are counted by ``ingest``. ``line_no``
of a table row is its row number in the split (1-based). The split name
(``train``…) goes into ``metadata.split``.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import duckdb
import pyarrow as pa

from audit.db import sql_identifier, sql_string
from audit.errors import InputError
from audit.formats import Format, IngestOptions, Sample, records_stage, select_stage
from audit.formats.generic import LEDGER_FIELDS, resolve_columns, table_messages_sql
from audit.formats.sharegpt import (
    CONVERSATION_KEYS,
    NO_MODEL_HINT,
    expand_conversation,
    number_rows,
    plan_conversations,
)

_SHARD = re.compile(r"^data-\d+-of-\d+\.arrow$")
# --format hf-dataset on a single file: the `datasets` builder for its extension.
_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".ndjson": "json",
             ".csv": "csv", ".tsv": "csv", ".arrow": "arrow"}
_COMPRESSED = (".gz", ".zst", ".zstd", ".bz2", ".xz")


def offline_datasets():
    """Import ``datasets`` offline, quiet (progress bars would garble our stderr)."""
    # Before the import: both libraries read these once, when imported.
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    import datasets
    import huggingface_hub.constants

    # ... and again after it, in case something imported them earlier.
    datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = True
    huggingface_hub.constants.HF_HUB_OFFLINE = True
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    return datasets


def _saved_dataset_member(path: Path, first_json: object) -> str | None:
    """'state' for a saved split's state.json, 'member' for its other files, else None."""
    folder = path.parent
    if path.name == "state.json":
        if isinstance(first_json, dict) and isinstance(first_json.get("_data_files"), list) \
                and (folder / "dataset_info.json").is_file():
            return "state"
    elif path.name == "dataset_info.json" or _SHARD.match(path.name):
        if (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file():
            return "member"
    elif path.name == "dataset_dict.json":
        if isinstance(first_json, dict) and isinstance(first_json.get("splits"), list):
            return "member"
    return None


def _split_name(state_file: Path) -> str | None:
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        state = {}
    if isinstance(state, dict) and isinstance(state.get("_split"), str):
        return state["_split"]
    # DatasetDict.save_to_disk: <folder>/dataset_dict.json + <folder>/<split>/state.json
    if (state_file.parent.parent / "dataset_dict.json").is_file():
        return state_file.parent.name
    return None


def _load(path: Path, role: str | None):
    datasets = offline_datasets()
    try:
        if role == "state":
            return datasets.load_from_disk(str(path.parent))
        name = path.name.lower()
        for suffix in _COMPRESSED:
            name = name.removesuffix(suffix)
        builder = _BUILDERS.get(Path(name).suffix)
        if builder is None:
            raise InputError(
                f"{path}: hf-dataset reads saved dataset folders and parquet/json/jsonl/csv/arrow files",
                "pass the folder written by save_to_disk (or its state.json)",
            )
        # The builder writes an Arrow cache: keep it out of ~/.cache and load into memory.
        with tempfile.TemporaryDirectory(prefix="audit-hf-") as cache:
            return datasets.load_dataset(builder, data_files=str(path), split="train", cache_dir=cache,
                                         keep_in_memory=True)
    except InputError:
        raise
    except Exception as exc:  # datasets raises many types (FileNotFoundError, DatasetGenerationError…)
        raise InputError(f"cannot load {path} with datasets: {str(exc).splitlines()[0] if str(exc) else exc!r}",
                         "check the dataset folder is complete") from None


def _is_conversation_column(field: pa.Field) -> bool:
    """A list of structs with from/value or role/content: a ShareGPT-style conversation."""
    kind = field.type
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)) or not pa.types.is_struct(kind.value_type):
        return False
    names = {kind.value_type.field(i).name for i in range(kind.value_type.num_fields)}
    return {"from", "value"} <= names or {"role", "content"} <= names


class HFDataset(Format):
    name = "hf-dataset"
    description = "a local Hugging Face dataset (save_to_disk folder; parquet/json/csv with --format hf-dataset)"

    def sniff(self, sample: Sample) -> bool:
        return _saved_dataset_member(sample.path, sample.first_json) is not None

    def stage_sql(self, con: duckdb.DuckDBPyConnection, path: Path, options: IngestOptions, file_id: int) -> str:
        first_json = options.sample.first_json if options.sample else None
        role = _saved_dataset_member(path, first_json)
        if role == "member":
            # Read through the split's state.json; this file adds no rows of its own.
            return records_stage(con, f"_records_{file_id}", [])
        dataset = _load(path, role)
        table = dataset.with_format("arrow")[:]   # respects an indices mapping, zero-copy otherwise
        split = _split_name(path) if role == "state" else None
        extra = {"split": split} if split else {}
        default_model = getattr(options, "default_model", None)
        fields = resolve_columns(table.column_names, options.mapping)
        conversation = self._conversation_column(table.schema, fields, options.mapping)
        if conversation is not None:
            return self._conversation_stage(con, path, table, conversation, options, default_model, extra, file_id)
        return self._table_stage(con, path, table, fields, default_model, extra, file_id)

    @staticmethod
    def _conversation_column(schema: pa.Schema, fields: dict[str, str], mapping: dict[str, str]) -> str | None:
        if "response" in fields:
            return None   # messages + response: a table of calls, messages being the prompt
        candidates = [fields["messages"]] if "messages" in mapping.values() else list(CONVERSATION_KEYS)
        return next((c for c in candidates if c in schema.names and _is_conversation_column(schema.field(c))), None)

    def _conversation_stage(self, con, path, table, column, options, default_model, extra, file_id) -> str:
        plan = plan_conversations(table.column_names, options.mapping, default_model, "row", where=str(path),
                                  extra_metadata=extra)
        plan.conversation_key = column
        rows = []
        position = 0
        for batch in table.to_batches(max_chunksize=4096):
            for record in batch.to_pylist():
                position += 1
                # Absent struct fields come back as None: drop them so messages stay {role, content}.
                turns = record.get(column)
                if isinstance(turns, list):
                    record[column] = [{k: v for k, v in t.items() if v is not None} if isinstance(t, dict) else t
                                      for t in turns]
                raw = json.dumps(record, ensure_ascii=False, default=str)
                rows.extend(expand_conversation(position, record, raw, plan))
        return records_stage(con, f"_records_{file_id}", number_rows(rows))

    def _table_stage(self, con, path, table, fields, default_model, extra, file_id) -> str:
        columns = table.column_names
        if "model" not in fields and not default_model:
            raise InputError(f"{path}: no column gives the model name (columns: {', '.join(columns[:20])})",
                             NO_MODEL_HINT)
        if not {"messages", "prompt", "input_tokens"} & set(fields):
            raise InputError(f"{path}: no column gives the prompt or the input tokens",
                             "map one with --map COLUMN=prompt (or messages, input_tokens)")
        name = f"_hf_{file_id}"
        con.complete()   # DuckDB 2 refuses to register while an execute() result is open
        con.register(name, table.append_column("_audit_row", pa.array(range(1, table.num_rows + 1), pa.int64())))
        nested = {f.name for f in table.schema
                  if pa.types.is_nested(f.type) or pa.types.is_dictionary(f.type)}

        def value(column: str) -> str:
            # Nested values as JSON (a messages list); scalars as text, checked by the finisher.
            return f"to_json({sql_identifier(column)})::VARCHAR" if column in nested else f"CAST({sql_identifier(column)} AS VARCHAR)"

        exprs = {"line_no": "_audit_row", "raw": "to_json(src)"}
        for ledger_field, column in fields.items():
            if ledger_field not in ("prompt", "system", "messages"):
                exprs[LEDGER_FIELDS[ledger_field]] = value(column)
        if default_model:
            exprs["model_logged"] = f"coalesce({exprs.get('model_logged', 'NULL')}, {sql_string(default_model)})"
        exprs["messages"] = table_messages_sql(fields, value)
        exprs["usage_semantics"] = "'openai'"
        exprs["dedupe_key"] = exprs.get("native_id", "NULL")
        exprs["is_batch"] = "false"
        if extra:
            exprs["metadata"] = f"json_object('split', {sql_string(extra['split'])})"
        if "messages" in fields:
            m = value(fields["messages"])
            exprs["reject_reason"] = (
                f"CASE WHEN {m} IS NOT NULL AND (NOT json_valid({m}) OR json_type({m}) <> 'ARRAY') "
                "THEN 'messages is not a JSON list' END"
            )
        return select_stage(exprs, f"(SELECT * FROM {name}) AS src")
