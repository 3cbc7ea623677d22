"""The committed sample export ingests completely and carries the scenario's numbers.

The list prices below are OpenAI's published per-1M-token prices for the two
models (input, cached input, output), written here independently of the
generator so the check can fail; Batch API calls are half price.
"""

from __future__ import annotations

import csv
import gzip

import pytest

from audit.ingest import ingest
from audit.synth import SAMPLE_LOGS_FRACTION
from conftest import FIXTURES, REPO, rows

SAMPLE_LOGS = REPO / "sample_logs"
LIST_PRICES = {"gpt-4o": (2.50, 1.25, 10.00), "gpt-4o-mini": (0.15, 0.075, 0.60)}


@pytest.fixture(scope="module")
def sample_con(tmp_path_factory):
    from audit import db as audit_db

    con = audit_db.connect(tmp_path_factory.mktemp("sample") / "audit.duckdb")
    summary = ingest(con, [SAMPLE_LOGS], sampled_fraction=SAMPLE_LOGS_FRACTION)
    yield con, summary
    con.close()


def truth() -> list[dict]:
    with gzip.open(FIXTURES / "sample_logs_truth.csv.gz", "rt", newline="") as handle:
        return list(csv.DictReader(handle))


def test_everything_ingests_with_no_rejects_over_three_formats(sample_con):
    con, summary = sample_con
    totals = summary.as_dict()["totals"]
    assert totals["rejected"] == 0 and totals["duplicate"] == 0
    formats = {r["source_format"] for r in rows(con, "SELECT DISTINCT source_format FROM requests")}
    assert formats == {"openai-chat", "openai-batch-output", "helicone"}
    assert rows(con, "SELECT count(*) AS n FROM requests WHERE messages IS NULL") == [{"n": 0}]


def test_every_ground_truth_request_is_in_the_ledger(sample_con):
    con, _ = sample_con
    expected = truth()
    ledger = {r["native_id"] for r in rows(con, "SELECT native_id FROM requests")}
    assert len(ledger) == len(expected)
    assert {t["native_id"] for t in expected} == ledger


def test_explicit_prompt_names_cover_only_part_of_the_traffic(sample_con):
    con, _ = sample_con
    share = rows(con, "SELECT avg((prompt_name IS NOT NULL)::INT) AS s FROM requests")[0]["s"]
    assert 0.1 < share < 0.7


def test_last_30_days_cost_about_87k_at_list_prices(sample_con):
    con, _ = sample_con
    by_model = rows(con, """
        SELECT model, is_batch,
               sum((input_tokens - cached_input_tokens) / sampled_fraction) AS uncached,
               sum(cached_input_tokens / sampled_fraction) AS cached,
               sum(output_tokens / sampled_fraction) AS output
        FROM requests
        WHERE status = 'ok' AND started_at > (SELECT max(started_at) FROM requests) - INTERVAL 30 DAY
        GROUP BY ALL""")
    cost = 0.0
    for r in by_model:
        uncached_price, cached_price, output_price = LIST_PRICES[r["model"]]
        discount = 0.5 if r["is_batch"] else 1.0
        cost += discount * (r["uncached"] * uncached_price + r["cached"] * cached_price + r["output"] * output_price) / 1e6
    # A 0.015% sample of ~21M calls: a few per cent of sampling noise.
    assert 80_000 < cost < 95_000, cost


def test_growth_from_hundreds_to_tens_of_thousands(sample_con):
    con, _ = sample_con
    weeks = rows(con, """SELECT date_trunc('week', started_at) AS week, count(*) / any_value(sampled_fraction) AS calls
                         FROM requests GROUP BY ALL ORDER BY week""")
    first, last = weeks[1]["calls"], weeks[-2]["calls"]  # whole weeks
    assert last / first > 20
