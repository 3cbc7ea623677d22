"""Local Hugging Face datasets (save_to_disk folders; parquet with --format hf-dataset), field by field.

Datasets are built per test with ``datasets.Dataset.from_list(...)`` and
written with ``save_to_disk`` / ``to_parquet``; nothing touches the network.
"""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from audit.errors import InputError
from audit.formats import IngestOptions
from audit.formats.hf_dataset import HFDataset, offline_datasets
from audit.ingest import detect_format, ingest, read_sample
from audit.tokens import get_encoding
from conftest import by_id, cookbook_count, rows

datasets = offline_datasets()

CHATS = [
    {"id": "c1", "model": "gpt-4o", "created_at": datetime(2025, 4, 2, 9, 30), "source": "support",
     "conversations": [{"from": "system", "value": "You help with orders."},
                       {"from": "human", "value": "Where is my order?"},
                       {"from": "gpt", "value": "It shipped yesterday."},
                       {"from": "human", "value": "When will it arrive?"},
                       {"from": "gpt", "value": "Tomorrow."}]},
    {"id": "c2", "model": "gpt-4o", "created_at": datetime(2025, 4, 2, 10, 0), "source": "support",
     "conversations": [{"from": "human", "value": "Hello?"}]},
]
CALLS = [
    {"request_id": "r1", "created_at": "2025-05-01T10:00:00Z", "llm": "gpt-4o-mini", "user": "u1",
     "system_prompt": "Classify the ticket.", "question": "My card was charged twice.", "answer": "billing",
     "prompt_tokens": "120", "completion_tokens": "2", "cached_tokens": "100", "cost": 0.0001, "latency": 850},
    {"request_id": "r2", "created_at": "2025-05-01T10:01:00+02:00", "llm": "gpt-4o-mini", "user": "u2",
     "system_prompt": "Classify the ticket.", "question": "App crashes on start.", "answer": "bug",
     "prompt_tokens": None, "completion_tokens": None, "cached_tokens": None, "cost": None, "latency": 400},
    {"request_id": "r3", "created_at": "2025-05-01T10:02:00Z", "llm": "gpt-4o-mini", "user": "u3",
     "system_prompt": "Classify the ticket.", "question": "Hi", "answer": "other",
     "prompt_tokens": "lots", "completion_tokens": "1", "cached_tokens": None, "cost": None, "latency": 300},
]


def test_saved_conversation_folder(con, tmp_path):
    folder = tmp_path / "chats"
    datasets.Dataset.from_list(CHATS).save_to_disk(str(folder))
    summary = ingest(con, [folder])   # a saved folder is read whole, through its state.json
    assert [f.path.rsplit("/", 1)[-1] for f in summary.files] == ["state.json"]
    assert {f.format for f in summary.files} == {"hf-dataset"}
    state = summary.files[0]
    assert (state.read, state.stored, state.duplicate, state.rejected, state.counted) == (3, 2, 0, 1, 2)

    got = by_id(con)
    first, second = got["c1#1"], got["c1#2"]
    assert first["source_format"] == "hf-dataset" and first["source_line"] == 1
    assert first["started_at"] == datetime(2025, 4, 2, 9, 30)
    assert (first["provider"], first["model_logged"], first["model"]) == ("openai", "gpt-4o", "gpt-4o")
    assert (first["user_id"], first["session_id"]) == (None, "c1")
    assert first["response_text"] == "It shipped yesterday."
    prompt = json.loads(second["messages"])
    assert prompt == [{"role": "system", "content": "You help with orders."},
                      {"role": "user", "content": "Where is my order?"},
                      {"role": "assistant", "content": "It shipped yesterday."},
                      {"role": "user", "content": "When will it arrive?"}]
    encoding = get_encoding("o200k_base")
    assert second["tokens_source"] == "counted"
    assert (second["input_tokens"], second["output_tokens"]) == (cookbook_count(prompt, encoding), len(encoding.encode("Tomorrow.")))
    assert (second["status"], second["is_batch"], second["logged_cost_usd"]) == ("ok", False, None)
    assert json.loads(second["metadata"]) == {"source": "support", "row": 1, "turn": 2, "turns": 2}
    assert rows(con, "SELECT line_no, reason FROM ingest_rejects") == [{"line_no": 3, "reason": "no assistant turn: row 2"}]


def test_saved_table_split_with_mapping(con, tmp_path):
    folder = tmp_path / "calls"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(CALLS)}).save_to_disk(str(folder))
    state = folder / "train" / "state.json"
    result = ingest(con, [state], mapping={"llm": "model"}).files[0]
    assert result.format == "hf-dataset"
    assert (result.read, result.stored, result.duplicate, result.rejected, result.counted) == (3, 2, 0, 1, 1)
    got = by_id(con)

    logged = got["r1"]
    assert logged["source_line"] == 1 and logged["started_at"] == datetime(2025, 5, 1, 10, 0)
    assert (logged["model_logged"], logged["model"], logged["provider"]) == ("gpt-4o-mini", "gpt-4o-mini", "openai")
    assert logged["user_id"] == "u1" and logged["session_id"] is None
    assert json.loads(logged["messages"]) == [{"role": "system", "content": "Classify the ticket."},
                                              {"role": "user", "content": "My card was charged twice."}]
    assert logged["response_text"] == "billing"
    assert (logged["input_tokens"], logged["cached_input_tokens"], logged["cache_write_tokens"]) == (120, 100, 0)
    assert (logged["output_tokens"], logged["reasoning_tokens"], logged["tokens_source"]) == (2, 0, "logged")
    assert (logged["logged_cost_usd"], logged["latency_ms"], logged["status"]) == (0.0001, 850.0, "ok")
    assert json.loads(logged["metadata"]) == {"split": "train"}

    counted = got["r2"]
    assert counted["started_at"] == datetime(2025, 5, 1, 8, 1)  # +02:00 → UTC
    assert counted["tokens_source"] == "counted" and counted["input_tokens"] > 0

    assert rows(con, "SELECT line_no, reason FROM ingest_rejects") == [
        {"line_no": 3, "reason": "input token count is not a whole number >= 0: lots"}]


def test_parquet_only_when_forced(con, tmp_path):
    parquet = tmp_path / "calls.parquet"
    datasets.Dataset.from_list(CALLS).to_parquet(str(parquet))
    assert detect_format(read_sample(parquet, "none")).name == "generic"
    result = ingest(con, [parquet], forced_format="hf-dataset", mapping={"llm": "model"}).files[0]
    assert (result.format, result.read, result.stored, result.rejected) == ("hf-dataset", 3, 2, 1)
    assert rows(con, "SELECT native_id, input_tokens FROM requests ORDER BY source_line LIMIT 1") == [
        {"native_id": "r1", "input_tokens": 120}]


def test_sniffing(tmp_path):
    folder = tmp_path / "chats"
    datasets.Dataset.from_list(CHATS).save_to_disk(str(folder))
    for name in ("state.json", "dataset_info.json", "data-00000-of-00001.arrow"):
        assert HFDataset().sniff(read_sample(folder / name, "none")), name
    stray = tmp_path / "state.json"
    stray.write_text('{"step": 3}')
    assert not HFDataset().sniff(read_sample(stray, "none"))


def test_model_from_the_default_or_refused(con, tmp_path):
    folder = tmp_path / "nameless"
    datasets.Dataset.from_list([{k: v for k, v in row.items() if k != "llm"} for row in CALLS]).save_to_disk(str(folder))
    with pytest.raises(InputError) as refused:
        ingest(con, [folder / "state.json"])
    assert "no column gives the model name" in refused.value.message
    options = IngestOptions(sample=read_sample(folder / "state.json", "none"))
    options.default_model = "gpt-4o-mini"   # the proposed --model option
    stage = HFDataset().stage_sql(con, folder / "state.json", options, 992)
    assert con.execute(f"SELECT DISTINCT model_logged FROM ({stage})").fetchall() == [("gpt-4o-mini",)]
