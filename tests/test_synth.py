"""Tests for audit.synth, the deterministic generator of sample request logs.

The exports are read back the way an ingester would (three formats), and the
numbers the generator promises are recomputed independently: list-price cost
from the emitted tokens, token counts from a fresh tiktoken encoding.
"""

from __future__ import annotations

import collections
import csv
import gzip
import hashlib
import json
import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from audit import synth

# Independent copy of the list prices (USD per 1M tokens: input, cached input, output).
PRICES = {"gpt-4o": (2.50, 1.25, 10.00), "gpt-4o-mini": (0.15, 0.075, 0.60)}
TEMPLATE_IDS = set(synth.TEMPLATES)
TIERS = {
    "faq_answer": "small", "ticket_classify": "small", "order_extract": "small",
    "email_draft": "mid", "code_snippet": "mid", "product_summary": "mid",
    "refund_reasoning": "large", "support_chat": "large",
}
LAST30_FRACTION = 0.0004


@dataclass
class Record:
    native_id: str
    source_file: str
    fmt: str  # "A" OpenAI chat log, "B" batch, "C" Helicone
    timestamp: datetime | None
    model: str | None
    messages: list[dict[str, str]] | None
    reply: str | None
    usage: dict[str, Any] | None
    failed: bool
    raw: dict[str, Any]


def _jsonl(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def read_export(out_dir: Path) -> list[Record]:
    records: list[Record] = []
    for path in sorted(out_dir.glob("openai_chat_*.jsonl.gz")):
        for line in _jsonl(path):
            response = line["response"]
            failed = "error" in response
            records.append(Record(
                line["id"], path.name, "A",
                datetime.strptime(line["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc),
                line["request"]["model"], line["request"]["messages"],
                None if failed else response["choices"][0]["message"]["content"],
                response.get("usage"), failed, line,
            ))
    for output_path in sorted(out_dir.glob("batches/batch_*_output.jsonl")):
        inputs = {row["custom_id"]: row for row in _jsonl(Path(str(output_path).replace("_output", "_input")))}
        for line in _jsonl(output_path):
            body = line["response"]["body"] if line["response"] else None
            request = inputs[line["custom_id"]]["body"]
            records.append(Record(
                line["custom_id"], f"batches/{output_path.name}", "B",
                datetime.fromtimestamp(body["created"], tz=timezone.utc) if body else None,
                request["model"], request["messages"],
                body["choices"][0]["message"]["content"] if body else None,
                body["usage"] if body else None, body is None, line,
            ))
    helicone = out_dir / "helicone_export.jsonl.gz"
    if helicone.exists():
        for row in _jsonl(helicone):
            failed = row["response_status"] != 200
            records.append(Record(
                row["request_id"], helicone.name, "C",
                datetime.strptime(row["request_created_at"], "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=timezone.utc),
                row["request_model"], row["request_body"]["messages"],
                None if failed else row["response_body"]["choices"][0]["message"]["content"],
                None if failed else row["response_body"]["usage"], failed, row,
            ))
    return records


def read_truth(path: Path) -> list[dict[str, str]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def encoding():
    return synth._offline_encoding("o200k_base")


def fresh_prompt_tokens(encoding: Any, messages: list[dict[str, str]]) -> int:
    """OpenAI cookbook rule: 3 per message, every value encoded, 1 per name, 3 to prime the reply."""
    total = 3
    for message in messages:
        total += 3
        for key, value in message.items():
            total += len(encoding.encode(value))
            total += 1 if key == "name" else 0
    return total


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, synth.SynthSummary, list[Record]]:
    """The committed sample's parameters: 90 days at SAMPLE_LOGS_FRACTION."""
    root = tmp_path_factory.mktemp("sample")
    summary = synth.generate(
        root / "logs", seed=7, sampled_fraction=synth.SAMPLE_LOGS_FRACTION, truth_path=root / "truth.csv.gz"
    )
    return root / "logs", root / "truth.csv.gz", summary, read_export(root / "logs")


@pytest.fixture(scope="module")
def last30(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, synth.SynthSummary, list[Record]]:
    """The last 30 days at a larger fraction, for statistics."""
    root = tmp_path_factory.mktemp("last30")
    summary = synth.generate(root / "logs", seed=7, sampled_fraction=LAST30_FRACTION, days=30, truth_path=root / "truth.csv")
    return root / "logs", root / "truth.csv", summary, read_export(root / "logs")


def _digest(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*")) if p.is_file()
    }


def test_same_seed_gives_identical_bytes_and_another_seed_does_not(tmp_path: Path) -> None:
    runs = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        synth.generate(
            tmp_path / name, seed=seed, sampled_fraction=0.0002, days=3, truth_path=tmp_path / f"{name}.csv.gz"
        )
        runs[name] = (_digest(tmp_path / name), hashlib.sha256((tmp_path / f"{name}.csv.gz").read_bytes()).hexdigest())
    assert runs["a"] == runs["b"]
    assert runs["a"][0].keys() & runs["c"][0].keys()
    assert all(runs["a"][0][k] != runs["c"][0][k] for k in runs["a"][0].keys() & runs["c"][0].keys())
    assert runs["a"][1] != runs["c"][1]


def _cost(record: Record, encoding: Any) -> float:
    """List-price cost of one emitted record, from its own tokens (what an auditor computes)."""
    if record.failed:
        return 0.0  # failed calls are not billed
    base = "gpt-4o-mini" if record.model.startswith("gpt-4o-mini") else "gpt-4o"
    price_in, price_cached, price_out = PRICES[base]
    if record.usage is None:  # streamed without usage: count the text (cache hits unknown)
        prompt, cached = fresh_prompt_tokens(encoding, record.messages), 0
        completion = len(encoding.encode(record.reply))
    else:
        prompt, completion = record.usage["prompt_tokens"], record.usage["completion_tokens"]
        cached = record.usage["prompt_tokens_details"]["cached_tokens"]
    cost = ((prompt - cached) * price_in + cached * price_cached + completion * price_out) / 1e6
    return cost * 0.5 if record.fmt == "B" else cost


def test_last_30_days_cost_about_87k_and_matches_the_sample(last30, encoding) -> None:
    _, _, summary, records = last30
    assert summary.last30_full_cost_usd == pytest.approx(87_000, rel=0.05)
    costs = [_cost(r, encoding) for r in records]
    estimate = sum(costs) / LAST30_FRACTION
    # Each full-traffic call is kept independently, so the estimate's variance
    # is sum(cost^2) / f^2. Allow 4 standard errors plus 2% for the pilot's
    # own error and the streamed calls counted without cache discounts.
    standard_error = math.sqrt(sum(c * c for c in costs)) / LAST30_FRACTION
    assert abs(estimate - summary.last30_full_cost_usd) <= 4 * standard_error + 0.02 * summary.last30_full_cost_usd
    assert standard_error / estimate < 0.03  # the fraction is large enough for a stable estimate
    # Where the money goes: chat dominates spend, FAQ dominates calls.
    spend: collections.Counter[str] = collections.Counter()
    truth = {row["native_id"]: row["template_id"] for row in read_truth(last30[1])}
    calls = collections.Counter(truth.values())
    for record, cost in zip(records, costs):
        spend[truth[record.native_id]] += cost
    assert spend.most_common(1)[0][0] == "support_chat"
    assert spend["support_chat"] > 0.5 * sum(spend.values())
    assert calls.most_common(1)[0][0] == "faq_answer"


def test_helicone_cost_is_list_price_of_its_tokens(last30) -> None:
    rows = [r.raw for r in last30[3] if r.fmt == "C" and not r.failed]
    assert rows
    for row in rows:
        prompt, cached, completion = row["prompt_tokens"], row["prompt_cache_read_tokens"], row["completion_tokens"]
        price_in, price_cached, price_out = PRICES[row["request_model"]]
        expected = ((prompt - cached) * price_in + cached * price_cached + completion * price_out) / 1e6
        assert row["cost"] == pytest.approx(expected, rel=1e-6, abs=1e-9)
        assert row["total_tokens"] == prompt + completion + row["reasoning_tokens"]


def test_usage_equals_a_fresh_tiktoken_count(last30, encoding) -> None:
    records = [r for r in last30[3] if r.usage is not None]
    by_format = collections.defaultdict(list)
    for record in records:
        by_format[record.fmt].append(record)
    chosen = [r for fmt in "ABC" for r in by_format[fmt][:: max(1, len(by_format[fmt]) // 12)]]
    chosen += sorted(records, key=lambda r: -r.usage["prompt_tokens"])[:3]  # the longest chat histories
    assert len(chosen) >= 30
    for record in chosen:
        assert record.usage["prompt_tokens"] == fresh_prompt_tokens(encoding, record.messages), record.native_id
        assert record.usage["completion_tokens"] == len(encoding.encode(record.reply)), record.native_id
        assert record.usage["total_tokens"] == record.usage["prompt_tokens"] + record.usage["completion_tokens"]


def test_prompt_caching_follows_openai_rules(last30) -> None:
    usages = [r.usage for r in last30[3] if r.usage is not None]
    cached = [(u["prompt_tokens"], u["prompt_tokens_details"]["cached_tokens"]) for u in usages]
    assert all(c == 0 or (c >= 1024 and c % 128 == 0 and c <= p) for p, c in cached)
    assert all(c == 0 for p, c in cached if p < 1024)
    assert sum(1 for _, c in cached if c) > 0.2 * len(cached)


def test_chat_histories_grow_long_for_short_replies(last30) -> None:
    truth = {row["native_id"]: row for row in read_truth(last30[1])}
    chats = [r for r in last30[3] if truth[r.native_id]["template_id"] == "support_chat" and r.usage]
    prompts = [r.usage["prompt_tokens"] for r in chats]
    replies = [r.usage["completion_tokens"] for r in chats]
    assert max(prompts) > 7_500
    assert 3_000 < sum(prompts) / len(prompts) < 7_000
    assert 45 < sum(replies) / len(replies) < 75


def test_daily_volume_grows_about_a_hundredfold(sample) -> None:
    _, _, summary, records = sample
    end = date(2025, 6, 30)
    days = collections.Counter(r.timestamp.date() for r in records if r.timestamp is not None)
    first_week = sum(days[end - timedelta(days=89 - i)] for i in range(7))
    last_week = sum(days[end - timedelta(days=i)] for i in range(7))
    assert first_week > 0
    assert 40 < last_week / first_week < 200  # DAU grows 100x; weekly means differ ~75x
    assert synth.daily_active_users(end, end) == 50_000
    assert synth.daily_active_users(end - timedelta(days=89), end) == pytest.approx(500)
    assert summary.full_traffic_requests > 20_000_000


def test_faq_questions_repeat_with_surface_variants(sample) -> None:
    _, truth_path, _, records = sample
    truth = {row["native_id"]: row for row in read_truth(truth_path)}
    faq = [r for r in records if truth[r.native_id]["template_id"] == "faq_answer"]
    keys = collections.Counter(truth[r.native_id]["entity_key"] for r in faq)
    top_key, top_count = keys.most_common(1)[0]
    assert top_key == synth.normalise_question(synth.faq_questions()[0])
    assert top_count > 0.15 * len(faq)
    assert len(keys) >= 25
    top = [r for r in faq if truth[r.native_id]["entity_key"] == top_key]
    asked = collections.Counter(r.messages[-1]["content"] for r in top)
    assert len(asked) >= 3  # case, spacing and punctuation variants of one question
    assert all(synth.normalise_question(q) == top_key for q in asked)
    answers = collections.Counter(r.reply for r in top if r.reply is not None)
    assert answers.most_common(1)[0][1] >= 0.8 * sum(answers.values())
    assert len(answers) > 1  # and a few light rewordings


def test_product_catalog_is_a_fixed_set_of_200(last30, encoding) -> None:
    catalog = synth.product_catalog()
    assert len({p.product_id for p in catalog}) == 200
    assert synth.product_catalog() is catalog
    lengths = [len(encoding.encode(p.description)) for p in catalog]
    assert 250 < min(lengths) and max(lengths) < 650
    truth = read_truth(last30[1])
    used = collections.Counter(row["entity_key"] for row in truth if row["template_id"] == "product_summary")
    assert set(used) <= {p.product_id for p in catalog}
    assert len(used) > 150  # thousands of calls a day over the same 200 products


def test_ground_truth_has_one_row_per_record(sample) -> None:
    out_dir, truth_path, summary, records = sample
    truth = read_truth(truth_path)
    assert list(truth[0]) == [
        "native_id", "source_file", "template_id", "task_type", "tier", "entity_key", "is_faq_static", "session_id",
    ]
    assert len(truth) == len(records) == summary.records
    assert {row["native_id"] for row in truth} == {r.native_id for r in records}
    assert len({row["native_id"] for row in truth}) == len(truth)
    by_id = {r.native_id: r for r in records}
    for row in truth:
        record = by_id[row["native_id"]]
        assert row["source_file"] == record.source_file and (out_dir / row["source_file"]).exists()
        assert row["template_id"] in TEMPLATE_IDS
        assert row["tier"] == TIERS[row["template_id"]]
        assert row["task_type"] == synth.TEMPLATES[row["template_id"]].task_type
        assert (row["is_faq_static"] == "true") == (row["template_id"] == "faq_answer")
        assert bool(row["entity_key"]) == (row["template_id"] in ("faq_answer", "product_summary"))
        if record.fmt == "A":
            assert row["session_id"] == record.raw["metadata"]["session_id"]
        elif record.fmt == "C":
            assert row["session_id"] == record.raw["properties"]["Helicone-Session-Id"]
        else:
            assert row["session_id"] == ""  # batch lines carry no session
    assert {r.fmt for r in records} == {"A", "B", "C"}
    assert not str(truth_path).startswith(str(out_dir))


def test_formats_look_like_the_real_exports(last30) -> None:
    records = last30[3]
    a = [r for r in records if r.fmt == "A"]
    streamed = [r for r in a if r.raw["request"].get("stream")]
    failed = [r for r in a if r.failed]
    assert 0.015 < len(streamed) / len(a) < 0.05
    assert all("usage" not in r.raw["response"] and r.raw["response"]["choices"] for r in streamed)
    assert 0 < len(failed) / len(a) < 0.015
    assert all(r.raw["status_code"] == 500 and r.raw["response"]["error"]["type"] == "server_error" for r in failed)
    named = [r for r in a if "prompt_name" in r.raw["metadata"]]
    assert 0.2 < len(named) / len(a) < 0.6
    assert all(set(r.raw["metadata"]) >= {"user_id", "session_id"} for r in a)
    assert all(r.raw["response"]["id"].startswith("chatcmpl-") for r in a if not r.failed)
    assert {r.model for r in a} == {"gpt-4o", "gpt-4o-mini"}
    # Batch: output lines reference input lines, in another order; a few failed.
    out_dir = last30[0]
    for output_path in sorted(out_dir.glob("batches/*_output.jsonl")):
        inputs = [row["custom_id"] for row in _jsonl(Path(str(output_path).replace("_output", "_input")))]
        outputs = [row["custom_id"] for row in _jsonl(output_path)]
        assert sorted(inputs) == sorted(outputs) and len(set(inputs)) == len(inputs)
        if len(inputs) > 5:
            assert inputs != outputs
    batch = [r for r in records if r.fmt == "B"]
    assert any(r.failed and r.raw["error"]["code"] for r in batch)
    assert all(r.raw["response"]["body"]["object"] == "chat.completion" for r in batch if not r.failed)
    # Helicone rows: zone-less timestamps, sessions in properties, bodies included.
    helicone = [r.raw for r in records if r.fmt == "C"]
    assert all(row["provider"] == "OPENAI" and "Helicone-Session-Id" in row["properties"] for row in helicone)
    assert any(row["prompt_id"] for row in helicone) and any(row["prompt_id"] is None for row in helicone)


def test_template_ids_never_leak_into_the_logs(sample) -> None:
    out_dir = sample[0]
    for path in out_dir.rglob("*"):
        if path.is_file():
            data = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
            for template_id in TEMPLATE_IDS:
                assert template_id.encode() not in data, (template_id, path.name)


def test_benchmark_file_has_exactly_n_lines_and_is_deterministic(tmp_path: Path, encoding) -> None:
    path = tmp_path / "bench.jsonl"
    assert synth.generate_chat_jsonl(path, 700, seed=3) == 700
    lines = path.read_bytes().splitlines()
    assert len(lines) == 700
    parsed = [json.loads(line) for line in lines]
    assert all(set(p) >= {"id", "timestamp", "latency_ms", "request", "response", "metadata"} for p in parsed)
    assert len({p["id"] for p in parsed}) == 700
    with_usage = [p for p in parsed if "usage" in p["response"]]
    for p in with_usage[:5]:
        assert p["response"]["usage"]["prompt_tokens"] == fresh_prompt_tokens(encoding, p["request"]["messages"])
    # Full traffic keeps every turn: a session's turns re-send a growing history.
    by_session = collections.defaultdict(list)
    for p in parsed:
        by_session[p["metadata"]["session_id"]].append(p)
    chats = [turns for turns in by_session.values() if len(turns) > 2 and len(turns[0]["request"]["messages"]) == 3]
    assert len(chats) > 10
    for turns in chats:
        for earlier, later in zip(turns, turns[1:]):
            assert later["timestamp"] > earlier["timestamp"]
            assert later["request"]["messages"][: len(earlier["request"]["messages"])] == earlier["request"]["messages"]
            assert later["request"]["messages"][len(earlier["request"]["messages"])] == {
                "role": "assistant", "content": earlier["response"]["choices"][0]["message"]["content"],
            } or "error" in earlier["response"]
    again = tmp_path / "again.jsonl"
    synth.generate_chat_jsonl(again, 700, seed=3)
    assert again.read_bytes() == path.read_bytes()


def test_benchmark_workers_write_the_same_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sequential = tmp_path / "sequential.jsonl"
    synth.generate_chat_jsonl(sequential, 900, seed=3)
    monkeypatch.setattr(synth, "_BENCH_PARALLEL_MIN", 100)
    parallel = tmp_path / "parallel.jsonl"
    assert synth.generate_chat_jsonl(parallel, 900, seed=3) == 900
    assert parallel.read_bytes() == sequential.read_bytes()
    assert synth.generate_chat_jsonl(tmp_path / "empty.jsonl", 0) == 0
    assert (tmp_path / "empty.jsonl").read_bytes() == b""
