"""Pricing: the cost of every request at the price of its day, overrides, reconciliation.

Costs are checked field by field against hand arithmetic at published list
prices, and again against genai-prices' own ``calc_price`` (an independent
implementation of the same catalog) and the synthetic generator's price table.
"""

from __future__ import annotations

import statistics
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from conftest import FIXTURES, REPO, rows

from audit import pricing
from audit.analyze import compute_window
from audit.errors import ConfigError
from audit.ingest import ingest

# ----------------------------------------------------------------------------- helpers

_DEFAULTS = {
    "native_id": None, "file_id": 1, "source_line": 1, "source_format": "generic",
    "started_at": datetime(2025, 6, 1, 12, 0), "provider": "openai", "model_logged": "gpt-4o", "model": "gpt-4o",
    "input_tokens": None, "cached_input_tokens": None, "cache_write_tokens": None, "output_tokens": None,
    "tokens_source": "logged", "status": "ok", "is_batch": False, "service_tier": None,
    "sampled_fraction": 1.0, "logged_cost_usd": None,
}


def add(con, request_id: str, **values) -> None:
    row = {**_DEFAULTS, "request_id": request_id, **values}
    if "model" not in values and values.get("model_logged"):
        row["model"] = con.execute("SELECT audit_normalize_model(?)", [row["model_logged"]]).fetchall()[0][0]
    con.execute(f"INSERT INTO requests ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", list(row.values()))


def price(con, book=None) -> dict:
    compute_window(con)
    return pricing.price_requests(con, book or pricing.PriceBook())


def costs(con) -> dict[str, dict]:
    return {r["request_id"]: r for r in rows(con, "SELECT * FROM request_costs ORDER BY request_id")}


def catalog_cost(provider, model_ref, when, *, input=0, cached=0, written=0, output=0) -> float:
    """genai-prices' own computation for one call (an independent check of our SQL)."""
    from genai_prices import Usage, calc_price

    usage = Usage(input_tokens=input, cache_read_tokens=cached, cache_write_tokens=written, output_tokens=output)
    return float(calc_price(usage, model_ref, provider_id=provider,
                            genai_request_timestamp=when.replace(tzinfo=UTC)).total_price)


def write_toml(tmp_path: Path, text: str, name: str = "prices.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- cost of a call


def test_cost_splits_uncached_cached_cache_writes_and_output(con):
    add(con, "oa", input_tokens=10_000, cached_input_tokens=4_000, output_tokens=500)
    add(con, "an", provider="anthropic", model_logged="claude-3-5-sonnet-20241022", input_tokens=2_350,
        cached_input_tokens=2_000, cache_write_tokens=300, output_tokens=120)
    price(con)
    oa, an = costs(con)["oa"], costs(con)["an"]
    # gpt-4o list: $2.50 input, $1.25 cached, $10 output per 1M
    assert oa["input_cost_usd"] == pytest.approx(6_000 * 2.50 / 1e6)
    assert oa["cached_input_cost_usd"] == pytest.approx(4_000 * 1.25 / 1e6)
    assert oa["cache_write_cost_usd"] == 0
    assert oa["output_cost_usd"] == pytest.approx(500 * 10.0 / 1e6)
    assert oa["cost_usd"] == pytest.approx(0.025)
    # claude-3.5-sonnet: $3 input, $0.30 cache read, $3.75 cache write, $15 output
    assert an["input_cost_usd"] == pytest.approx(50 * 3.0 / 1e6)
    assert an["cached_input_cost_usd"] == pytest.approx(2_000 * 0.30 / 1e6)
    assert an["cache_write_cost_usd"] == pytest.approx(300 * 3.75 / 1e6)
    assert an["output_cost_usd"] == pytest.approx(120 * 15.0 / 1e6)
    assert an["cost_usd"] == pytest.approx(0.003675)
    # the same figures from genai-prices' own calculator
    when = _DEFAULTS["started_at"]
    assert oa["cost_usd"] == pytest.approx(
        catalog_cost("openai", "gpt-4o", when, input=10_000, cached=4_000, output=500))
    assert an["cost_usd"] == pytest.approx(catalog_cost("anthropic", "claude-3-5-sonnet-20241022", when, input=2_350,
                                                        cached=2_000, written=300, output=120))
    # the price used is recorded
    assert (oa["priced"], oa["price_provider"], oa["price_model"]) == (True, "openai", "gpt-4o")
    assert oa["batch_discount"] == 0
    assert oa["price_source"] == pricing.catalog_source() and oa["price_source"].startswith("genai-prices 0.")
    assert (an["price_provider"], an["price_model"]) == ("anthropic", "claude-3-5-sonnet")
    assert oa["price_valid_from"] is None  # gpt-4o has one undated catalog price


def test_dated_snapshot_is_priced_as_logged_before_the_normalised_name(con):
    # gpt-4o-2024-05-13 kept its launch price ($5 / $15); normalised it would be gpt-4o ($2.50 / $10)
    add(con, "may", model_logged="gpt-4o-2024-05-13", model="gpt-4o", input_tokens=1_000_000, output_tokens=1_000_000)
    price(con)
    row = costs(con)["may"]
    assert row["cost_usd"] == pytest.approx(5.0 + 15.0)
    assert row["price_model"] == "gpt-4o-2024-05-13"


def test_batch_calls_take_the_provider_discount(con):
    tokens = {"input_tokens": 10_000, "cached_input_tokens": 4_000, "output_tokens": 500}
    add(con, "sync", **tokens)
    add(con, "batch", is_batch=True, service_tier="batch", **tokens)
    add(con, "claude-batch", provider="anthropic", model_logged="claude-3-5-haiku-20241022", is_batch=True,
        input_tokens=1_000_000, output_tokens=1_000_000)
    add(con, "deepseek-batch", provider="deepseek", model_logged="deepseek-chat", is_batch=True,
        started_at=datetime(2025, 6, 1, 10, 0), input_tokens=1_000_000, output_tokens=0)
    summary = price(con)
    got = costs(con)
    assert got["batch"]["batch_discount"] == 0.5
    assert got["batch"]["cost_usd"] == pytest.approx(got["sync"]["cost_usd"] * 0.5)
    assert got["batch"]["output_cost_usd"] == pytest.approx(500 * 10.0 / 1e6 * 0.5)
    assert got["claude-batch"]["cost_usd"] == pytest.approx((0.80 + 4.00) * 0.5)
    # no documented batch discount for DeepSeek: full price, and the summary says so
    assert got["deepseek-batch"]["batch_discount"] == 0
    assert got["deepseek-batch"]["cost_usd"] == pytest.approx(0.27)
    assert summary["batch_without_known_discount"] == 1


def test_batch_discounts_agree_with_the_catalogs_batch_prices():
    """Where the catalog has "processing: batch" prices (from 2026-10-14), our table says the same."""
    from genai_prices.data import providers
    from genai_prices.types import TieredPrices

    def base(value):
        return value.base if isinstance(value, TieredPrices) else value

    at = datetime(2026, 11, 1, 12, tzinfo=UTC)
    checked = 0
    for provider in providers:
        if provider.id not in pricing.BATCH_DISCOUNTS:
            continue
        ratios = []
        for model in provider.models:
            if not any(v.when.get("processing") == "batch" for v in model.price_variants or []):
                continue
            standard, batch = model.get_prices(at), model.get_prices(at, {"processing": "batch"})
            for key in ("input_mtok", "output_mtok"):
                if base(getattr(standard, key)) and base(getattr(batch, key)) is not None:
                    ratios.append(float(base(getattr(batch, key)) / base(getattr(standard, key))))
        if ratios:
            assert statistics.median(ratios) == pytest.approx(1 - pricing.BATCH_DISCOUNTS[provider.id]), provider.id
            checked += 1
    assert checked >= 4  # openai, anthropic, google, mistral, groq have batch variants


def test_price_valid_on_the_request_day(con):
    # o3 fell from $10 / $40 to $2 / $8 per 1M on 2025-06-10 (genai-prices keeps the history)
    for request_id, day in (("before", datetime(2025, 6, 9, 23, 59)), ("after", datetime(2025, 6, 10, 0, 1))):
        add(con, request_id, model_logged="o3", started_at=day, input_tokens=1_000_000, output_tokens=1_000_000)
    price(con)
    before, after = costs(con)["before"], costs(con)["after"]
    assert before["cost_usd"] == pytest.approx(10.0 + 40.0)
    assert after["cost_usd"] == pytest.approx(2.0 + 8.0)
    assert (before["price_valid_from"], after["price_valid_from"]) == (None, date(2025, 6, 10))
    assert after["cost_usd"] == pytest.approx(catalog_cost("openai", "o3", datetime(2025, 6, 10, 0, 1),
                                                           input=1_000_000, output=1_000_000))


def test_long_context_tier_and_off_peak_hours(con):
    # claude-sonnet-4-5: $3 / $15 up to 200k input tokens, $6 / $22.50 for all tokens above
    add(con, "short", provider="anthropic", model_logged="claude-sonnet-4-5", input_tokens=200_000, output_tokens=1_000)
    add(con, "long", provider="anthropic", model_logged="claude-sonnet-4-5", input_tokens=200_001, output_tokens=1_000)
    # deepseek-chat: standard price 00:30-16:30 UTC, half price off-peak
    add(con, "peak", provider="deepseek", model_logged="deepseek-chat", started_at=datetime(2025, 3, 1, 12, 0),
        input_tokens=1_000_000, output_tokens=1_000_000)
    add(con, "off-peak", provider="deepseek", model_logged="deepseek-chat", started_at=datetime(2025, 3, 1, 17, 0),
        input_tokens=1_000_000, output_tokens=1_000_000)
    price(con)
    got = costs(con)
    assert got["short"]["cost_usd"] == pytest.approx((200_000 * 3.0 + 1_000 * 15.0) / 1e6)
    assert got["long"]["cost_usd"] == pytest.approx((200_001 * 6.0 + 1_000 * 22.5) / 1e6)
    assert got["peak"]["cost_usd"] == pytest.approx(0.27 + 1.10)
    assert got["off-peak"]["cost_usd"] == pytest.approx(0.135 + 0.55)
    for request_id, provider, model, when, tokens in (
        ("long", "anthropic", "claude-sonnet-4-5", _DEFAULTS["started_at"], (200_001, 1_000)),
        ("off-peak", "deepseek", "deepseek-chat", datetime(2025, 3, 1, 17, 0), (1_000_000, 1_000_000)),
    ):
        assert got[request_id]["cost_usd"] == pytest.approx(
            catalog_cost(provider, model, when, input=tokens[0], output=tokens[1]))


def test_unknown_model_is_never_priced_at_zero(con):
    add(con, "known", input_tokens=1_000, output_tokens=100)
    add(con, "private", provider="acme", model_logged="acme-llm-7b", input_tokens=3_000, output_tokens=900)
    add(con, "private-2", provider="acme", model_logged="acme-llm-7b", input_tokens=1_000, output_tokens=0)
    add(con, "failed", status="error", tokens_source="none")                 # failed, no tokens: not billed
    add(con, "failed-unknown", provider="acme", model_logged="acme-llm-7b", status="error", tokens_source="none")
    add(con, "no-usage", tokens_source="none")                                # ok but no tokens at all
    summary = price(con)
    got = costs(con)
    private = got["private"]
    assert (private["priced"], private["cost_usd"], private["input_cost_usd"]) == (False, None, None)
    assert "acme-llm-7b" in private["unpriced_reason"] and "aliases" in private["unpriced_reason"]
    assert (got["failed"]["priced"], got["failed"]["cost_usd"]) == (True, 0.0)
    assert (got["failed-unknown"]["priced"], got["failed-unknown"]["cost_usd"]) == (True, 0.0)
    assert (got["no-usage"]["priced"], got["no-usage"]["cost_usd"]) == (False, None)
    assert got["no-usage"]["unpriced_reason"] == "no token counts logged or counted"
    assert (summary["requests"], summary["priced"], summary["unpriced"]) == (6, 3, 3)
    assert summary["failed_unbilled"] == 2
    assert summary["cost_usd"] == pytest.approx(got["known"]["cost_usd"])
    unpriced = {m["model"]: m for m in summary["unpriced_models"]}
    assert unpriced["acme-llm-7b"]["requests"] == 2
    assert unpriced["acme-llm-7b"]["share_of_tokens"] == pytest.approx((3_000 + 900 + 1_000) / (1_100 + 4_900))
    assert summary["unpriced_tokens"] == 4_900
    assert summary["unpriced_token_share"] == pytest.approx(4_900 / 6_000)


def test_pricing_is_rerunnable(con):
    add(con, "a", input_tokens=1_000, output_tokens=100)
    add(con, "b", model_logged="gpt-4o-mini", input_tokens=1_000, output_tokens=100)
    price(con)
    first = rows(con, "SELECT * FROM request_costs ORDER BY request_id")
    price(con)
    assert rows(con, "SELECT * FROM request_costs ORDER BY request_id") == first
    assert len(first) == 2


def test_scaled_and_monthly_totals(con):
    # a 10% sample over 15 days: each call stands for 10, and 15 days are half a month
    add(con, "d1", started_at=datetime(2025, 6, 1), sampled_fraction=0.1, input_tokens=1_000_000, output_tokens=0)
    add(con, "d15", started_at=datetime(2025, 6, 16), sampled_fraction=0.1, input_tokens=1_000_000, output_tokens=0)
    summary = price(con)
    assert summary["cost_usd"] == pytest.approx(5.0)
    assert summary["cost_scaled_usd"] == pytest.approx(50.0)
    assert summary["cost_monthly_usd"] == pytest.approx(50.0 * 30 / 15)


# ----------------------------------------------------------------------------- the price file


def test_overrides_negotiated_rate_alias_self_hosted_and_batch_discount(con, tmp_path):
    path = write_toml(tmp_path, """
        [prices."gpt-4o"]
        input = 2.0
        cached_input = 1.0
        output = 8.0
        provider = "openai"
        valid_from = 2025-06-01

        [aliases]
        "acme-gpt" = "gpt-4o-mini"

        [self_hosted."llama-3.3-70b-acme"]
        gpu_hourly_usd = 3.0
        tokens_per_second = 800

        [batch_discounts]
        openai = 0.4
    """)
    book = pricing.load_price_book(path)
    add(con, "negotiated", started_at=datetime(2025, 6, 15), input_tokens=1_000_000, cached_input_tokens=500_000,
        output_tokens=1_000_000)
    add(con, "list-before", started_at=datetime(2025, 5, 15), input_tokens=1_000_000, output_tokens=0)
    add(con, "other-provider", provider="azure", started_at=datetime(2025, 6, 15), input_tokens=1_000_000,
        output_tokens=0)
    add(con, "alias", provider="acme", model_logged="acme-gpt", input_tokens=1_000_000, output_tokens=1_000_000)
    add(con, "gpu", provider="self-hosted", model_logged="llama-3.3-70b-acme", input_tokens=600_000,
        output_tokens=400_000, is_batch=True)
    add(con, "batch", started_at=datetime(2025, 5, 15), is_batch=True, input_tokens=1_000_000, output_tokens=0)
    summary = price(con, book)
    got = costs(con)
    assert got["negotiated"]["cost_usd"] == pytest.approx(0.5 * 2.0 + 0.5 * 1.0 + 8.0)
    assert got["negotiated"]["price_source"] == f"override {path}"
    assert got["negotiated"]["price_valid_from"] == date(2025, 6, 1)
    assert got["list-before"]["cost_usd"] == pytest.approx(2.5)           # before valid_from: catalog
    assert got["other-provider"]["cost_usd"] == pytest.approx(2.5)        # override is for openai only
    assert got["alias"]["cost_usd"] == pytest.approx(0.15 + 0.60)         # gpt-4o-mini list
    assert got["alias"]["price_model"] == "gpt-4o-mini"
    # DESIGN.md: $3/h at 800 tokens/s = 3 / (800 * 3600) * 1e6 = $1.0417 per 1M, input and output alike
    assert pricing.self_hosted_price_per_million(3.0, 800) == pytest.approx(1.0417, abs=1e-4)
    assert got["gpu"]["cost_usd"] == pytest.approx(1.0 * 3.0 / (800 * 3600) * 1e6)
    assert got["gpu"]["price_source"] == f"self-hosted {path}" and got["gpu"]["batch_discount"] == 0
    assert got["batch"]["batch_discount"] == 0.4 and got["batch"]["cost_usd"] == pytest.approx(2.5 * 0.6)
    sources = {s["source"]: s["requests"] for s in summary["price_sources"]}
    assert sources == {f"override {path}": 1, f"self-hosted {path}": 1, pricing.catalog_source(): 4}


def test_price_history_in_the_price_file(con, tmp_path):
    path = write_toml(tmp_path, """
        [[prices."acme-llm"]]
        input = 1.0
        output = 2.0
        [[prices."acme-llm"]]
        input = 0.5
        output = 1.0
        valid_from = "2025-06-01"
    """)
    add(con, "old", model_logged="acme-llm", provider="acme", started_at=datetime(2025, 5, 31),
        input_tokens=1_000_000, output_tokens=1_000_000)
    add(con, "new", model_logged="acme-llm", provider="acme", started_at=datetime(2025, 6, 1),
        input_tokens=1_000_000, output_tokens=1_000_000)
    price(con, pricing.load_price_book(path))
    assert costs(con)["old"]["cost_usd"] == pytest.approx(3.0)
    assert costs(con)["new"]["cost_usd"] == pytest.approx(1.5)


def test_audit_toml_in_the_working_directory_is_used(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert pricing.load_price_book(None).prices == {}
    write_toml(tmp_path, '[aliases]\n"x" = "gpt-4o"\n', name="audit.toml")
    book = pricing.load_price_book(None)
    assert book.aliases == {"x": ("gpt-4o", None)} and book.path == Path("audit.toml")


@pytest.mark.parametrize(("text", "named"), [
    ("[prices.\"gpt-4o\"\ninput = 1", "not valid TOML"),
    ("[prices.\"gpt-4o\"]\ninput = \"abc\"\noutput = 1", 'prices."gpt-4o".input'),
    ("[prices.\"gpt-4o\"]\ninput = -1\noutput = 1", 'prices."gpt-4o".input'),
    ("[prices.\"gpt-4o\"]\ninput = 1", 'prices."gpt-4o".output'),
    ("[prices.\"gpt-4o\"]\ninput = 1\noutput = 2\noutptu = 3", 'prices."gpt-4o".outptu'),
    ("[prices.\"gpt-4o\"]\ninput = 1\noutput = 2\nvalid_from = \"June\"", 'prices."gpt-4o".valid_from'),
    ("[price.\"gpt-4o\"]\ninput = 1\noutput = 2", "price "),
    ("[self_hosted.\"llama\"]\ngpu_hourly_usd = 3\ntokens_per_second = 0", 'self_hosted."llama".tokens_per_second'),
    ("[self_hosted.\"llama\"]\ngpu_hourly_usd = 3", 'self_hosted."llama".tokens_per_second'),
    ("[aliases]\n\"x\" = 3", 'aliases."x"'),
    ("[batch_discounts]\nopenai = 1.5", "batch_discounts.openai"),
    ("batch_discounts = 3", "batch_discounts"),
])
def test_bad_price_file_is_a_config_error_naming_file_and_key(tmp_path, text, named):
    path = write_toml(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        pricing.load_price_book(path)
    error = caught.value
    assert str(path) in error.message and named in error.message
    assert error.hint and "\n" not in error.one_line()


def test_missing_price_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        pricing.load_price_book(tmp_path / "nope.toml")


# ----------------------------------------------------------------------------- lookups for findings


def test_price_per_million_and_cheapest_for_tier(tmp_path):
    book = pricing.PriceBook()
    assert pricing.price_per_million("openai", "gpt-4o", date(2025, 6, 30), book) == pricing.PricePerMillion(
        2.5, 1.25, 2.5, 10.0)
    assert pricing.price_per_million("openai", "no-such-model", date(2025, 6, 30), book) is None
    # gpt-4.1-nano (2025-04-14) is the cheapest small OpenAI model once released, gpt-4o-mini before
    provider, model, price = pricing.cheapest_for_tier("small", "openai", date(2025, 6, 30), book)
    assert (provider, model, price.input, price.output) == ("openai", "gpt-4.1-nano", 0.10, 0.40)
    assert pricing.cheapest_for_tier("small", "openai", date(2025, 1, 1), book)[1] == "gpt-4o-mini"
    assert pricing.cheapest_for_tier("mid", "openai", date(2025, 6, 30), book)[1] == "gpt-4.1-mini"
    anthropic = pricing.cheapest_for_tier("small", "anthropic", date(2025, 6, 30), book)
    assert anthropic[:2] == ("anthropic", "claude-3-haiku")
    # a provider with no candidate: the cheapest of all
    other = pricing.cheapest_for_tier("small", "acme", date(2025, 6, 30), book)
    every = [pricing.price_per_million(p, m, date(2025, 6, 30), book)
             for p, m, released in pricing.TIER_CANDIDATES["small"] if released <= date(2025, 6, 30)]
    assert other[2].blended() == min(p.blended() for p in every if p)
    assert pricing.cheapest_for_tier("large", "openai", date(2025, 6, 30), book) is None
    # a negotiated rate in the price book wins over the catalog for candidates too
    path = write_toml(tmp_path, '[prices."gpt-4o-mini"]\ninput = 0.01\noutput = 0.02\n')
    negotiated = pricing.load_price_book(path)
    assert pricing.cheapest_for_tier("small", "openai", date(2025, 6, 30), negotiated)[1] == "gpt-4o-mini"


# ----------------------------------------------------------------------------- reconciliation


def test_reconcile_helicone_fixture_logged_vs_recomputed(con):
    ingest(con, [FIXTURES / "helicone_export.jsonl"])
    price(con)
    result = pricing.reconcile(con, invoice_total_monthly=1.0)
    by_model = {(m["provider"], m["model"]): m for m in result["logged_cost"]["by_model"]}
    # hand arithmetic at list price on 2025-02-03
    expected = {
        ("openai", "gpt-4o"): ((1_200 - 1_024) * 2.5 + 1_024 * 1.25 + 80 * 10) / 1e6,
        ("openai", "o4-mini"): (45 * 1.1 + 300 * 4.4) / 1e6,
        ("anthropic", "claude-3-5-sonnet"): (50 * 3 + 2_000 * 0.3 + 300 * 3.75 + 120 * 15) / 1e6,
        ("azure", "gpt-4o-mini"): (30 * 0.15 + 12 * 0.6) / 1e6,
        ("openai", "gpt-4o-mini"): 0.0,  # failed call, 0 tokens
    }
    logged = {("openai", "gpt-4o"): 0.00412, ("openai", "o4-mini"): 0.0013695,
              ("anthropic", "claude-3-5-sonnet"): 0.0036375, ("azure", "gpt-4o-mini"): 0.0000165,
              ("openai", "gpt-4o-mini"): 0.0}
    assert set(by_model) == set(expected)
    for key, recomputed in expected.items():
        row = by_model[key]
        assert row["recomputed_cost_usd"] == pytest.approx(recomputed, abs=1e-12), key
        assert row["logged_cost_usd"] == pytest.approx(logged[key]), key
        assert row["residual_usd"] == pytest.approx(recomputed - logged[key], abs=1e-12), key
    assert by_model[("openai", "o4-mini")]["residual_pct"] == pytest.approx(0, abs=1e-9)
    assert by_model[("openai", "gpt-4o")]["residual_pct"] == pytest.approx(100 * (0.00252 - 0.00412) / 0.00412)
    assert by_model[("openai", "gpt-4o-mini")]["residual_pct"] is None  # logged $0: no percentage
    totals = result["logged_cost"]
    assert totals["residual_usd"] == pytest.approx(sum(expected.values()) - sum(logged.values()))
    # all five calls are on one day (window of 1 day): monthly = 30 x the day
    invoice = result["invoice"]
    assert invoice["ledger_monthly_usd"] == pytest.approx(30 * sum(expected.values()))
    assert invoice["explained_share"] == pytest.approx(30 * sum(expected.values()))
    assert invoice["unexplained_monthly_usd"] == pytest.approx(1.0 - 30 * sum(expected.values()))
    assert pricing.reconcile(con, None)["invoice"] is None


@pytest.fixture(scope="module")
def sample_ledger(tmp_path_factory):
    from audit import db
    from audit.synth import SAMPLE_LOGS_FRACTION

    connection = db.connect(tmp_path_factory.mktemp("sample") / "audit.duckdb")
    ingest(connection, [REPO / "sample_logs"], sampled_fraction=SAMPLE_LOGS_FRACTION)
    compute_window(connection)
    summary = pricing.price_requests(connection, pricing.PriceBook())
    yield connection, summary
    connection.close()


def test_sample_logs_every_cost_matches_the_generators_list_prices(sample_ledger):
    from audit.synth import list_price_cost

    con, summary = sample_ledger
    assert summary["unpriced"] == 0 and summary["priced"] == summary["requests"] > 3_000
    ledger = rows(con, """SELECT r.model, r.is_batch, coalesce(r.input_tokens, 0) AS input,
                                 coalesce(r.cached_input_tokens, 0) AS cached, coalesce(r.output_tokens, 0) AS output,
                                 c.cost_usd FROM requests r JOIN request_costs c USING (request_id)""")
    for row in ledger:
        assert row["cost_usd"] == pytest.approx(
            list_price_cost(row["model"], row["input"], row["cached"], row["output"], batch=row["is_batch"]),
            rel=1e-9, abs=1e-15)
    assert any(r["is_batch"] for r in ledger) and any(r["cached"] for r in ledger)


def test_sample_logs_helicone_logged_costs_reconcile_to_zero(sample_ledger):
    con, _ = sample_ledger
    result = pricing.reconcile(con, invoice_total_monthly=100_000.0)
    helicone = [m for m in result["logged_cost"]["by_model"] if m["source_format"] == "helicone"]
    assert helicone and sum(m["requests"] for m in helicone) > 200
    for model in helicone:
        assert model["residual_pct"] == pytest.approx(0, abs=1e-6)
    invoice = result["invoice"]
    assert invoice["explained_share"] == pytest.approx(invoice["ledger_monthly_usd"] / 100_000.0)


def test_sample_logs_monthly_gpt4o_spend_is_the_scenarios_87k(sample_ledger):
    """synth.py: the last 30 days of full traffic cost about $87,000 at list price, nearly all GPT-4o."""
    from audit.findings import IN_WINDOW, MONTHLY

    con, summary = sample_ledger
    by_model = dict(con.execute(f"""
        SELECT r.model, sum(c.cost_usd * {MONTHLY}) FROM requests r JOIN request_costs c USING (request_id),
               analysis_window w WHERE {IN_WINDOW} GROUP BY ALL""").fetchall())
    assert 80_000 <= by_model["gpt-4o"] <= 95_000
    assert summary["cost_monthly_usd"] == pytest.approx(sum(by_model.values()))
    assert by_model["gpt-4o-mini"] < 0.01 * by_model["gpt-4o"]
