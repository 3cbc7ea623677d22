"""Prices and the cost of every request: a dated catalog, user overrides, reconciliation.

Reads: ``requests``, ``analysis_window`` (monthly figures), ``analysis_runs``
(which price file the current run used). Writes: ``request_costs``.

The cost model (DESIGN.md)
--------------------------
One call costs, per million tokens at the price valid on the call's date::

    (input − cached − cache writes) × input price
    + cached × cache-read price + cache writes × cache-write price
    + output × output price

``input_tokens`` holds all input (cached and cache writes included) and
``output_tokens`` includes reasoning, as ingest normalises them. Batch-API
calls (``is_batch``) take the provider's batch discount off the whole cost
(``BATCH_DISCOUNTS``; components are stored after the discount, so they add up
to ``cost_usd``). Where the catalog has no cache-read or cache-write price the
tokens are billed at the input price, as genai-prices itself does.

Where prices come from, first match wins, for each name the request carries
(``model_logged``, then the normalised ``model``):

1. ``[self_hosted."MODEL"]`` in the price file: GPU $/hour ÷ (tokens/s × 3600)
   × 10⁶ per million tokens, the same price for every kind of token, no
   batch discount (the GPU is yours either way);
2. ``[prices."MODEL"]``: negotiated per-million rates (optionally dated and
   tied to a provider);
3. ``[aliases]``: a private name mapped to a catalog model (which 1–2 may
   price in turn);
4. the genai-prices catalog (offline, bundled with the package), looked up
   with the request's provider, at the request's timestamp: it has price
   history for some models (OpenAI o3 fell from $10/$40 to $2/$8 on
   2025-06-10), long-context tiers (all tokens at the tier price once the
   input crosses the threshold) and off-peak hours (DeepSeek); all three are
   honoured. Service-tier variants (OpenAI ``priority``) apply when the
   ledger logged the tier.

A request the catalog cannot price is never $0: ``priced = false``,
``cost_usd`` NULL and ``unpriced_reason`` says why; the summary lists those
models with their calls and share of tokens (their dollars cannot be known).
Failed calls that logged no tokens were not billed: $0, priced.

Vectorised: Python resolves prices only for the distinct (provider, model as
logged, model, service tier, day) combinations of the ledger — a few hundred
for months of traffic — into a small Arrow price table whose rows also carry
the time-of-day and input-token bands a price holds for; one SQL ``INSERT``
joins it to every request and computes all costs.
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from audit.db import fetch_dicts, transaction
from audit.errors import ConfigError

DEFAULT_PRICE_FILE = "audit.toml"

# Share of the list price the provider takes off for Batch-API calls. The
# catalog's own batch prices ("processing: batch" variants) only start on
# 2026-10-14, the day genai-prices began recording them, so a table of ours
# prices older batches; tests check it agrees with those variants.
BATCH_DISCOUNTS: dict[str, float] = {
    # platform.openai.com/docs/guides/batch: "a 50% cost discount compared to synchronous APIs"
    "openai": 0.5,
    # Azure OpenAI Global Batch: "50% less cost than global standard"
    "azure": 0.5,
    # docs.anthropic.com/en/docs/build-with-claude/batch-processing: "50% of standard API prices"
    "anthropic": 0.5,
    # Gemini API Batch Mode (developers.googleblog.com, 2025-07-07): "50% discount";
    # Vertex AI batch prediction is billed at the same 50% off
    "google": 0.5,
    # Amazon Bedrock batch inference: "50% lower price compared to on-demand"
    "aws": 0.5,
    # docs.mistral.ai batch inference: "50% discount"
    "mistral": 0.5,
    # groq.com/pricing: "Batch API: 50% lower cost" (it launched at 25% off in 2025;
    # the catalog's Groq batch variants are 50% too)
    "groq": 0.5,
}

# Model tiers for recommendations. Each candidate is (provider, model, released):
# a model is only offered at dates after its release. "large" has none: a
# large task keeps its model. The cheapest candidate of the current model's
# provider wins (switching provider is a bigger move than switching model);
# only when that provider has none is the cheapest of all offered.
TIER_CANDIDATES: dict[str, list[tuple[str, str, date]]] = {
    # FAQ lookup, slot extraction, classification, structured extraction
    "small": [
        ("openai", "gpt-4o-mini", date(2024, 7, 18)),
        ("openai", "gpt-4.1-nano", date(2025, 4, 14)),
        ("anthropic", "claude-3-haiku", date(2024, 3, 7)),
        ("anthropic", "claude-3-5-haiku", date(2024, 11, 4)),
        ("google", "gemini-2.0-flash", date(2025, 2, 5)),
        ("google", "gemini-2.0-flash-lite", date(2025, 2, 25)),
        ("mistral", "mistral-small-latest", date(2024, 9, 17)),
    ],
    # e-mail drafting, code snippets, (chunked) summarisation
    "mid": [
        ("openai", "gpt-4.1-mini", date(2025, 4, 14)),
        ("anthropic", "claude-3-5-haiku", date(2024, 11, 4)),
        ("anthropic", "claude-haiku-4-5", date(2025, 10, 15)),
        ("google", "gemini-2.5-flash", date(2025, 6, 17)),
        ("google", "gemini-2.0-flash", date(2025, 2, 5)),
        ("mistral", "mistral-medium-latest", date(2025, 5, 7)),
    ],
    "large": [],
}

# "Cheapest" compares a blended price: 3 input tokens for every output token,
# the usual blend of published price comparisons and close to chat traffic.
BLEND_INPUT_WEIGHT = 3.0

# Token counts above any real request: the open end of the last token band.
_NO_LIMIT = 2**62
_DAY_MINUTES = 24 * 60


@dataclass(frozen=True)
class PricePerMillion:
    """USD per million tokens of each kind."""

    input: float
    cached_input: float
    cache_write: float
    output: float

    def blended(self) -> float:
        return (BLEND_INPUT_WEIGHT * self.input + self.output) / (BLEND_INPUT_WEIGHT + 1)


@dataclass(frozen=True)
class OverridePrice:
    """One ``[prices."MODEL"]`` or ``[self_hosted."MODEL"]`` entry of the price file."""

    price: PricePerMillion
    provider: str | None
    valid_from: date | None
    source: str          # 'override <file>' | 'self-hosted <file>'


@dataclass
class PriceBook:
    """The user's price file (or nothing): overrides on top of the catalog."""

    path: Path | None = None
    prices: dict[str, list[OverridePrice]] = field(default_factory=dict)
    self_hosted: dict[str, list[OverridePrice]] = field(default_factory=dict)
    aliases: dict[str, tuple[str, str | None]] = field(default_factory=dict)   # name -> (model, provider)
    batch_discounts: dict[str, float] = field(default_factory=lambda: dict(BATCH_DISCOUNTS))
    # The [candidates] table, as written: read by `audit replay` (audit.backends.candidates_from_table).
    candidates: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- price file


def load_price_book(path: Path | None) -> PriceBook:
    """The price file given (``--prices``), else ``./audit.toml`` when present, else an empty book."""
    if path is None:
        default = Path(DEFAULT_PRICE_FILE)
        if not default.is_file():
            return PriceBook()
        path = default
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"price file {path} does not exist", "check the --prices path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read price file {path}: {exc}", "pass a readable UTF-8 TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"price file {path} is not valid TOML: {exc}",
                          "fix the syntax at that line (see `audit analyze --help` for the sections)") from None
    return _parse_price_book(data, path)


_SECTIONS = ("prices", "aliases", "self_hosted", "batch_discounts", "candidates")
_PRICE_KEYS = {"input", "cached_input", "cache_write", "output", "provider", "valid_from"}
_SELF_HOSTED_KEYS = {"gpu_hourly_usd", "tokens_per_second", "valid_from"}


def _bad(path: Path, key: str, problem: str, hint: str) -> ConfigError:
    return ConfigError(f"price file {path}: {key} {problem}", hint)


def _number(path: Path, key: str, value: Any, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _bad(path, key, f"must be a number, got {value!r}", "write a plain number such as 2.5")
    if value < 0 or (positive and value == 0):
        raise _bad(path, key, f"must be {'positive' if positive else 'zero or more'}, got {value!r}",
                   "prices are USD per million tokens")
    return float(value)


def _date(path: Path, key: str, value: Any) -> date | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise _bad(path, key, f"must be a date, got {value!r}", "write valid_from = 2025-01-31")


def _entries(path: Path, key: str, value: Any) -> list[dict[str, Any]]:
    """One table, or an array of tables (a price history)."""
    entries = value if isinstance(value, list) else [value]
    if not entries or not all(isinstance(e, dict) for e in entries):
        raise _bad(path, key, "must be a table", f'write [{key}] with its keys below it')
    if len(entries) > 1 and sum(e.get("valid_from") is None for e in entries) > 1:
        raise _bad(path, key, "has several prices without valid_from",
                   "give each dated entry a valid_from (one undated entry may be the default)")
    return entries


def _parse_price_book(data: dict[str, Any], path: Path) -> PriceBook:
    book = PriceBook(path=path)
    unknown = sorted(set(data) - set(_SECTIONS))
    if unknown:
        raise _bad(path, unknown[0], "is not a known section",
                   "sections are [prices.\"MODEL\"], [aliases], [self_hosted.\"MODEL\"], [batch_discounts], [candidates]")
    for section in _SECTIONS:
        if section in data and not isinstance(data[section], dict):
            raise _bad(path, section, "must be a table", f"write [{section}] or [{section}.\"MODEL\"]")

    for model, value in data.get("prices", {}).items():
        for i, entry in enumerate(_entries(path, f'prices."{model}"', value)):
            key = f'prices."{model}"' + (f"[{i}]" if isinstance(value, list) else "")
            extra = sorted(set(entry) - _PRICE_KEYS)
            if extra:
                raise _bad(path, f"{key}.{extra[0]}", "is not a known key",
                           "keys are input, cached_input, cache_write, output, provider, valid_from")
            for required in ("input", "output"):
                if required not in entry:
                    raise _bad(path, f"{key}.{required}", "is missing", "give input and output in USD per 1M tokens")
            input_price = _number(path, f"{key}.input", entry["input"])
            price = PricePerMillion(
                input=input_price,
                # No cache discount known: cached and written tokens cost what input costs.
                cached_input=_number(path, f"{key}.cached_input", entry.get("cached_input", input_price)),
                cache_write=_number(path, f"{key}.cache_write", entry.get("cache_write", input_price)),
                output=_number(path, f"{key}.output", entry["output"]),
            )
            provider = entry.get("provider")
            if provider is not None and (not isinstance(provider, str) or not provider.strip()):
                raise _bad(path, f"{key}.provider", f"must be a provider name, got {provider!r}",
                           'write provider = "openai"')
            book.prices.setdefault(model.strip().lower(), []).append(OverridePrice(
                price, provider.strip().lower() if provider else None,
                _date(path, f"{key}.valid_from", entry.get("valid_from")), f"override {path}"))

    for model, value in data.get("self_hosted", {}).items():
        for i, entry in enumerate(_entries(path, f'self_hosted."{model}"', value)):
            key = f'self_hosted."{model}"' + (f"[{i}]" if isinstance(value, list) else "")
            extra = sorted(set(entry) - _SELF_HOSTED_KEYS)
            if extra:
                raise _bad(path, f"{key}.{extra[0]}", "is not a known key",
                           "keys are gpu_hourly_usd, tokens_per_second, valid_from")
            for required in ("gpu_hourly_usd", "tokens_per_second"):
                if required not in entry:
                    raise _bad(path, f"{key}.{required}", "is missing",
                               "give gpu_hourly_usd and tokens_per_second (measured by `audit replay`)")
            per_million = self_hosted_price_per_million(
                _number(path, f"{key}.gpu_hourly_usd", entry["gpu_hourly_usd"]),
                _number(path, f"{key}.tokens_per_second", entry["tokens_per_second"], positive=True))
            price = PricePerMillion(per_million, per_million, per_million, per_million)
            book.self_hosted.setdefault(model.strip().lower(), []).append(OverridePrice(
                price, "self-hosted", _date(path, f"{key}.valid_from", entry.get("valid_from")), f"self-hosted {path}"))

    for name, target in data.get("aliases", {}).items():
        key = f'aliases."{name}"'
        if isinstance(target, str) and target.strip():
            book.aliases[name.strip().lower()] = (target.strip().lower(), None)
        elif isinstance(target, dict) and isinstance(target.get("model"), str) and set(target) <= {"model", "provider"}:
            provider = target.get("provider")
            book.aliases[name.strip().lower()] = (target["model"].strip().lower(),
                                                  provider.strip().lower() if isinstance(provider, str) else None)
        else:
            raise _bad(path, key, f"must name a catalog model, got {target!r}",
                       'write "acme-gpt" = "gpt-4o" or "acme-gpt" = { model = "gpt-4o", provider = "openai" }')

    for provider, value in data.get("batch_discounts", {}).items():
        key = f"batch_discounts.{provider}"
        fraction = _number(path, key, value)
        if fraction >= 1:
            raise _bad(path, key, f"must be a fraction below 1, got {value!r}", "0.5 means half price")
        book.batch_discounts[provider.strip().lower()] = fraction
    book.candidates = dict(data.get("candidates", {}))
    return book


def self_hosted_price_per_million(gpu_hourly_usd: float, tokens_per_second: float) -> float:
    """DESIGN.md: GPU $/hour ÷ (tokens/s × 3600) × 10⁶ ($3/h at 800 tokens/s ≈ $1.04)."""
    return gpu_hourly_usd / (tokens_per_second * 3600.0) * 1e6


def price_book_of_last_run(con: duckdb.DuckDBPyConnection) -> PriceBook:
    """The price book the latest ``audit analyze`` run priced with (its ``--prices``, else ./audit.toml)."""
    rows = con.execute("SELECT parameters FROM analysis_runs ORDER BY run_id DESC LIMIT 1").fetchall()
    prices = json.loads(rows[0][0]).get("prices") if rows and rows[0][0] else None
    return load_price_book(Path(prices) if prices else None)


# --------------------------------------------------------------------------- catalog


def _catalog():
    import genai_prices
    from genai_prices import data_snapshot

    return genai_prices.__version__, data_snapshot.get_snapshot()


def catalog_source() -> str:
    return f"genai-prices {_catalog()[0]}"


# Provider names in logs that genai-prices does not map by itself.
_PROVIDER_IDS = {"fireworks_ai": "fireworks"}


@dataclass(frozen=True)
class _Band:
    """A price that holds from minute ``tod_lo`` to ``tod_hi`` of the day (UTC) and for
    requests whose input tokens are in (``tok_lo``, ``tok_hi``]."""

    tod_lo: int
    tod_hi: int
    tok_lo: int
    tok_hi: int
    input: float | None
    cached_input: float | None
    cache_write: float | None
    output: float | None


@dataclass(frozen=True)
class _Resolved:
    priced: bool
    bands: tuple[_Band, ...] = ()
    provider: str | None = None
    model: str | None = None
    valid_from: date | None = None
    source: str | None = None
    batch_discount: float | None = None   # None: no known discount for this provider
    reason: str | None = None


def _applicable(value: Any, input_tokens_above: int) -> float | None:
    """The per-million price for requests whose input exceeds ``input_tokens_above`` (cliff tiers)."""
    from genai_prices.types import TieredPrices

    if value is None:
        return None
    if isinstance(value, TieredPrices):
        chosen = value.base
        for tier in value.tiers:
            if input_tokens_above >= tier.start:   # genai-prices: total input > tier.start
                chosen = tier.price
        return float(chosen)
    return float(value)


def _token_bands(model_price: Any, tod_lo: int, tod_hi: int) -> list[_Band]:
    """One band per long-context tier (the price of all tokens changes once input crosses a threshold)."""
    from genai_prices.types import TieredPrices

    keys = ("input_mtok", "cache_read_mtok", "cache_write_mtok", "output_mtok")
    values = {k: getattr(model_price, k, None) for k in keys}
    if values["cache_write_mtok"] is None:
        values["cache_write_mtok"] = getattr(model_price, "cache_write_5m_mtok", None)
    starts = sorted({t.start for v in values.values() if isinstance(v, TieredPrices) for t in v.tiers})
    edges = [-1, *starts, _NO_LIMIT]
    bands = []
    for lo, hi in zip(edges, edges[1:]):
        input_price = _applicable(values["input_mtok"], lo)
        cached = _applicable(values["cache_read_mtok"], lo)
        write = _applicable(values["cache_write_mtok"], lo)
        # No cache price in the catalog: those tokens are billed as input (genai-prices does the same).
        bands.append(_Band(tod_lo, tod_hi, lo, hi, input_price,
                           cached if cached is not None else input_price,
                           write if write is not None else input_price,
                           _applicable(values["output_mtok"], lo)))
    return bands


def _time_of_day_edges(model: Any) -> list[int]:
    """Minute-of-day boundaries of off-peak prices (DeepSeek), UTC; [0, 1440] when there are none."""
    from genai_prices.types import TimeOfDateConstraint

    constraints = [c.constraint for c in model.prices] if isinstance(model.prices, list) else []
    constraints += [v.constraint for v in model.price_variants or []]
    edges = {0, _DAY_MINUTES}
    for constraint in constraints:
        if isinstance(constraint, TimeOfDateConstraint):
            for t in (constraint.start_time, constraint.end_time):
                utc = t if t.tzinfo is None else datetime.combine(date(1970, 1, 1), t).astimezone(UTC).timetz()
                edges.add(utc.hour * 60 + utc.minute)
    return sorted(edges)


def _catalog_valid_from(model: Any, day: date) -> date | None:
    """Start of the dated catalog price in force on ``day`` (None: the model's only, undated price)."""
    from genai_prices.types import StartDateConstraint

    if not isinstance(model.prices, list):
        return None
    starts = [c.constraint.start_date for c in model.prices
              if isinstance(c.constraint, StartDateConstraint) and c.constraint.start_date <= day]
    return max(starts) if starts else None


def _from_catalog(provider: str | None, names: list[str], service_tier: str | None, day: date,
                  book: PriceBook) -> _Resolved:
    version, snapshot = _catalog()
    provider_id = _PROVIDER_IDS.get(provider, provider) if provider else None
    provider_known = True
    if provider_id is not None:
        try:
            snapshot.find_provider(None, provider_id, None)
        except LookupError:
            # A gateway or private provider name: look the model up across the catalog instead.
            provider_known, provider_id = False, None
    for name in names:
        try:
            catalog_provider, model = snapshot.find_provider_model(name, None, provider_id, None)
        except LookupError:
            continue
        context = {"service_tier": service_tier} if service_tier else None
        bands: list[_Band] = []
        edges = _time_of_day_edges(model)
        for lo, hi in zip(edges, edges[1:]):
            at = datetime.combine(day, time(lo // 60, lo % 60), tzinfo=UTC)
            bands.extend(_token_bands(model.get_prices(at, context), lo, hi))
        if all(b.input is None and b.output is None for b in bands):
            return _Resolved(False, reason=f"the {catalog_source()} catalog has no per-token price for '{name}'")
        return _Resolved(True, tuple(_merge_time_bands(bands)), catalog_provider.id, model.id,
                         _catalog_valid_from(model, day), f"genai-prices {version}",
                         book.batch_discounts.get(catalog_provider.id))
    shown = " or ".join(f"'{n}'" for n in names) or "(no model name logged)"
    where = f"provider '{provider}'" if provider_known and provider else "any provider"
    return _Resolved(False, reason=f"model {shown} not in the genai-prices {version} catalog for {where}; "
                                   "map it with [aliases] or price it with [prices] in audit.toml")


def _merge_time_bands(bands: list[_Band]) -> list[_Band]:
    """Join neighbouring time-of-day bands that carry the same prices (most models: one band)."""
    merged: list[_Band] = []
    for band in sorted(bands, key=lambda b: (b.tok_lo, b.tod_lo)):
        last = merged[-1] if merged else None
        if (last is not None and last.tok_lo == band.tok_lo and last.tod_hi == band.tod_lo
                and (last.input, last.cached_input, last.cache_write, last.output)
                == (band.input, band.cached_input, band.cache_write, band.output)):
            merged[-1] = _Band(last.tod_lo, band.tod_hi, last.tok_lo, last.tok_hi,
                               last.input, last.cached_input, last.cache_write, last.output)
        else:
            merged.append(band)
    return merged


def _override_for(entries: list[OverridePrice] | None, provider: str | None, day: date) -> OverridePrice | None:
    """The latest entry in force on ``day`` that applies to this provider."""
    if not entries:
        return None
    usable = [e for e in entries
              if (e.valid_from is None or e.valid_from <= day)
              and (e.provider is None or e.provider == "self-hosted" or provider is None or e.provider == provider)]
    return max(usable, key=lambda e: e.valid_from or date.min, default=None)


def _resolve(provider: str | None, model_logged: str | None, model: str | None, service_tier: str | None,
             day: date, book: PriceBook) -> _Resolved:
    provider = provider.strip().lower() if provider else None
    names = list(dict.fromkeys(n.strip().lower() for n in (model_logged, model) if n and n.strip()))
    if not names:
        return _Resolved(False, reason="no model name logged")
    for name in names:
        for table in (book.self_hosted, book.prices):
            entry = _override_for(table.get(name), provider, day)
            if entry is not None:
                p = entry.price
                is_self_hosted = entry.source.startswith("self-hosted")
                price_provider = entry.provider or provider
                return _Resolved(True, (_Band(0, _DAY_MINUTES, -1, _NO_LIMIT, p.input, p.cached_input,
                                              p.cache_write, p.output),),
                                 price_provider, name, entry.valid_from, entry.source,
                                 0.0 if is_self_hosted else book.batch_discounts.get(price_provider or ""))
    for name in names:
        if name in book.aliases:
            target, target_provider = book.aliases[name]
            resolved = _resolve(target_provider or provider, target, None, service_tier, day,
                                PriceBook(book.path, book.prices, book.self_hosted, {}, book.batch_discounts))
            if not resolved.priced:
                return _Resolved(False, reason=f"alias '{name}' → '{target}': {resolved.reason}")
            return resolved
    return _from_catalog(provider, names, service_tier, day, book)


def price_per_million(provider: str | None, model: str, when: date, book: PriceBook) -> PricePerMillion | None:
    """The base (short-context, standard-hours) price of a model on a date, or None when unknown."""
    quoted = price_quote(provider, model, when, book)
    return quoted[0] if quoted else None


def price_quote(provider: str | None, model: str, when: date, book: PriceBook) -> tuple[PricePerMillion, str] | None:
    """``price_per_million`` and where it comes from ('genai-prices 0.2.3: openai/gpt-4o-mini from 2024-07-18')."""
    resolved = _resolve(provider, model, None, None, when, book)
    if not resolved.priced:
        return None
    band = next((b for b in resolved.bands if b.tok_lo < 0 and b.tod_lo <= 12 * 60 < b.tod_hi), resolved.bands[0])
    if band.input is None or band.output is None:
        return None
    price = PricePerMillion(band.input, band.input if band.cached_input is None else band.cached_input,
                            band.input if band.cache_write is None else band.cache_write, band.output)
    since = f" from {resolved.valid_from}" if resolved.valid_from else ""
    return price, f"{resolved.source}: {resolved.provider or '?'}/{resolved.model}{since}"


def cheapest_for_tier(tier: str, provider: str | None, when: date,
                      book: PriceBook) -> tuple[str, str, PricePerMillion] | None:
    """The cheapest ``TIER_CANDIDATES[tier]`` model released by ``when``, same provider first."""
    offered = []
    for candidate_provider, model, released in TIER_CANDIDATES.get(tier, []):
        if released > when:
            continue
        price = price_per_million(candidate_provider, model, when, book)
        if price is not None:
            offered.append((candidate_provider, model, price))
    if not offered:
        return None
    same = [o for o in offered if provider and o[0] == provider.strip().lower()]
    return min(same or offered, key=lambda o: (o[2].blended(), o[1]))


# --------------------------------------------------------------------------- pricing the ledger

_PRICE_TABLE_SCHEMA = pa.schema([
    ("provider", pa.string()), ("model_logged", pa.string()), ("model", pa.string()),
    ("service_tier", pa.string()), ("day", pa.date32()),
    ("tod_lo", pa.int32()), ("tod_hi", pa.int32()), ("tok_lo", pa.int64()), ("tok_hi", pa.int64()),
    ("priced", pa.bool_()), ("p_input", pa.float64()), ("p_cached", pa.float64()),
    ("p_write", pa.float64()), ("p_output", pa.float64()), ("batch_discount", pa.float64()),
    ("price_provider", pa.string()), ("price_model", pa.string()), ("price_valid_from", pa.date32()),
    ("price_source", pa.string()), ("unpriced_reason", pa.string()),
])


def reference_day(con: duckdb.DuckDBPyConnection) -> date:
    """The day undated requests are priced at: the ledger's last day (today when it has no dates)."""
    last = con.execute("SELECT max(started_at)::DATE FROM requests").fetchall()[0][0]
    return last or datetime.now(UTC).date()


def _price_table(con: duckdb.DuckDBPyConnection, book: PriceBook, reference_day: date) -> pa.Table:
    combos = con.execute(
        """SELECT DISTINCT provider, model_logged, model, service_tier, coalesce(started_at::DATE, ?::DATE) AS day
           FROM requests ORDER BY ALL""", [reference_day]).fetchall()
    columns: dict[str, list[Any]] = {name: [] for name in _PRICE_TABLE_SCHEMA.names}
    for provider, model_logged, model, service_tier, day in combos:
        resolved = _resolve(provider, model_logged, model, service_tier, day, book)
        bands = resolved.bands if resolved.priced else (_Band(0, _DAY_MINUTES, -1, _NO_LIMIT, None, None, None, None),)
        for band in bands:
            row = (provider, model_logged, model, service_tier, day, band.tod_lo, band.tod_hi, band.tok_lo,
                   band.tok_hi, resolved.priced, band.input, band.cached_input, band.cache_write, band.output,
                   resolved.batch_discount, resolved.provider, resolved.model, resolved.valid_from,
                   resolved.source, resolved.reason)
            for name, value in zip(_PRICE_TABLE_SCHEMA.names, row):
                columns[name].append(value)
    return pa.table(columns, schema=_PRICE_TABLE_SCHEMA)


def price_requests(con: duckdb.DuckDBPyConnection, book: PriceBook) -> dict[str, Any]:
    """Rewrite ``request_costs`` for every request; return the pricing summary."""
    day = reference_day(con)
    prices = _price_table(con, book, day)
    con.register("audit_price_table", prices)
    try:
        with transaction(con):
            con.execute("DELETE FROM request_costs")
            con.execute(
                """
                INSERT INTO request_costs
                WITH r AS (
                    SELECT request_id, provider, model_logged, model, service_tier, status, is_batch,
                           coalesce(started_at::DATE, ?::DATE) AS day,
                           -- minute of the day (UTC) for off-peak prices; undated calls at noon
                           coalesce(hour(started_at) * 60 + minute(started_at), 720) AS tod,
                           input_tokens IS NULL AND output_tokens IS NULL AS no_tokens,
                           coalesce(input_tokens, 0) AS input_all,
                           greatest(coalesce(input_tokens, 0) - coalesce(cached_input_tokens, 0)
                                    - coalesce(cache_write_tokens, 0), 0) AS uncached,
                           coalesce(cached_input_tokens, 0) AS cached,
                           coalesce(cache_write_tokens, 0) AS written,
                           coalesce(output_tokens, 0) AS output
                    FROM requests
                ), j AS (
                    SELECT r.*, p.*,
                           CASE
                               WHEN r.no_tokens AND r.status = 'error' THEN NULL   -- failed, nothing billed
                               WHEN r.no_tokens THEN 'no token counts logged or counted'
                               WHEN NOT p.priced THEN p.unpriced_reason
                               WHEN p.p_input IS NULL AND r.input_all > 0
                                   THEN 'the catalog has no input price for ''' || p.price_model || ''''
                               WHEN p.p_output IS NULL AND r.output > 0
                                   THEN 'the catalog has no output price for ''' || p.price_model || ''''
                           END AS reason,
                           CASE WHEN r.is_batch THEN coalesce(p.batch_discount, 0) ELSE 0 END AS discount,
                           r.no_tokens AND r.status = 'error' AS failed_unbilled
                    FROM r JOIN audit_price_table p
                      ON p.provider IS NOT DISTINCT FROM r.provider
                     AND p.model_logged IS NOT DISTINCT FROM r.model_logged
                     AND p.model IS NOT DISTINCT FROM r.model
                     AND p.service_tier IS NOT DISTINCT FROM r.service_tier
                     AND p.day = r.day
                     AND r.tod >= p.tod_lo AND r.tod < p.tod_hi
                     AND r.input_all > p.tok_lo AND r.input_all <= p.tok_hi
                ), c AS (
                    SELECT j.*, reason IS NULL AS ok,
                           CASE WHEN failed_unbilled THEN 0 ELSE uncached * p_input / 1e6 * (1 - discount) END AS c_input,
                           CASE WHEN failed_unbilled THEN 0 ELSE cached * p_cached / 1e6 * (1 - discount) END AS c_cached,
                           CASE WHEN failed_unbilled THEN 0 ELSE written * p_write / 1e6 * (1 - discount) END AS c_write,
                           CASE WHEN failed_unbilled THEN 0
                                ELSE output * coalesce(p_output, 0) / 1e6 * (1 - discount) END AS c_output
                    FROM j
                )
                SELECT request_id, ok,
                       CASE WHEN ok THEN c_input + c_cached + c_write + c_output END,
                       CASE WHEN ok THEN c_input END, CASE WHEN ok THEN c_cached END,
                       CASE WHEN ok THEN c_write END, CASE WHEN ok THEN c_output END,
                       discount,
                       CASE WHEN priced THEN price_provider END, CASE WHEN priced THEN price_model END,
                       CASE WHEN priced THEN price_valid_from END, CASE WHEN priced THEN price_source END,
                       reason
                FROM c
                """,
                [day],
            )
    finally:
        con.unregister("audit_price_table")
    return pricing_summary(con)


def _has_window(con: duckdb.DuckDBPyConnection) -> bool:
    return con.execute("SELECT count(*) FROM analysis_window").fetchall()[0][0] > 0


def pricing_summary(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """What ``request_costs`` holds: priced/unpriced, totals (scaled, monthly), the unpriced models.

    One pass over the ledger grouped by a few small dimensions; Python adds the groups up.
    """
    from audit.findings import IN_WINDOW, MONTHLY

    groups = fetch_dicts(con, f"""
        SELECT r.provider, r.model, c.priced, c.unpriced_reason AS reason, c.price_source AS source,
               r.status = 'error' AND r.input_tokens IS NULL AND r.output_tokens IS NULL AS failed_unbilled,
               r.is_batch AND c.batch_discount = 0 AND coalesce(c.price_source, '') NOT LIKE 'self-hosted%'
                   AS batch_without_known_discount,
               count(*) AS requests, sum(1.0 / r.sampled_fraction) AS requests_scaled,
               coalesce(sum(c.cost_usd), 0) AS cost_usd,
               coalesce(sum(c.cost_usd / r.sampled_fraction), 0) AS cost_scaled_usd,
               coalesce(sum(c.cost_usd * {MONTHLY}) FILTER (WHERE {IN_WINDOW}), 0) AS cost_monthly_usd,
               coalesce(sum(r.input_tokens), 0) AS input_tokens, coalesce(sum(r.output_tokens), 0) AS output_tokens
        FROM requests r JOIN request_costs c USING (request_id) LEFT JOIN analysis_window w ON true
        GROUP BY ALL""")
    tokens = sum(g["input_tokens"] + g["output_tokens"] for g in groups)
    priced = [g for g in groups if g["priced"]]
    unpriced_models: dict[tuple, dict[str, Any]] = {}
    for g in groups:
        if g["priced"]:
            continue
        entry = unpriced_models.setdefault((g["provider"], g["model"], g["reason"]), {
            "provider": g["provider"], "model": g["model"], "reason": g["reason"], "requests": 0,
            "requests_scaled": 0.0, "input_tokens": 0, "output_tokens": 0})
        for key in ("requests", "requests_scaled", "input_tokens", "output_tokens"):
            entry[key] += g[key]
    for entry in unpriced_models.values():
        entry["share_of_tokens"] = (entry["input_tokens"] + entry["output_tokens"]) / tokens if tokens else 0.0
    sources: dict[str, int] = {}
    for g in priced:
        sources[g["source"]] = sources.get(g["source"], 0) + g["requests"]
    unpriced_tokens = sum(e["input_tokens"] + e["output_tokens"] for e in unpriced_models.values())
    return {
        "requests": sum(g["requests"] for g in groups),
        "priced": sum(g["requests"] for g in priced),
        "unpriced": sum(g["requests"] for g in groups if not g["priced"]),
        "failed_unbilled": sum(g["requests"] for g in priced if g["failed_unbilled"]),
        "batch_without_known_discount": sum(g["requests"] for g in priced if g["batch_without_known_discount"]),
        "cost_usd": sum(g["cost_usd"] for g in priced),
        "cost_scaled_usd": sum(g["cost_scaled_usd"] for g in priced),
        "cost_monthly_usd": sum(g["cost_monthly_usd"] for g in priced) if _has_window(con) else None,
        "tokens": tokens,
        "unpriced_tokens": unpriced_tokens,
        "unpriced_token_share": unpriced_tokens / tokens if tokens else 0.0,
        "unpriced_models": sorted(unpriced_models.values(),
                                  key=lambda e: (-e["requests"], e["model"] or "", e["reason"] or "")),
        "price_sources": [{"source": k, "requests": v}
                          for k, v in sorted(sources.items(), key=lambda kv: (-kv[1], kv[0] or ""))],
        "catalog": catalog_source(),
    }


# --------------------------------------------------------------------------- reconciliation


def reconcile(con: duckdb.DuckDBPyConnection, invoice_total_monthly: float | None) -> dict[str, Any]:
    """Logged cost vs our recomputed cost per model, and how much of a monthly invoice the ledger explains.

    Where the source logged a cost (Helicone, LiteLLM, Langfuse), both sums run over the same rows,
    in ledger dollars (unscaled: the comparison is row for row). ``residual_usd`` = recomputed −
    logged; ``residual_pct`` is that share of the logged cost. Rows with a logged cost that we
    could not price are counted apart, never compared with $0. The invoice share compares the
    ledger's monthly full-traffic spend (``analysis_window``) with the invoice total per month.
    """
    from audit.findings import IN_WINDOW, MONTHLY

    groups = fetch_dicts(con, f"""
        SELECT r.source_format, r.provider, r.model, c.priced,
               count(r.logged_cost_usd) AS requests,
               sum(r.logged_cost_usd) AS logged_cost_usd,
               sum(c.cost_usd) FILTER (WHERE r.logged_cost_usd IS NOT NULL) AS recomputed_cost_usd,
               coalesce(sum(c.cost_usd * {MONTHLY}) FILTER (WHERE {IN_WINDOW}), 0) AS cost_monthly_usd
        FROM requests r JOIN request_costs c USING (request_id) LEFT JOIN analysis_window w ON true
        GROUP BY ALL ORDER BY logged_cost_usd DESC NULLS LAST, r.source_format, r.provider, r.model""")

    def residual(logged: float | None, recomputed: float | None) -> dict[str, float | None]:
        if logged is None or recomputed is None:
            return {"residual_usd": None, "residual_pct": None}
        return {"residual_usd": recomputed - logged,
                "residual_pct": 100.0 * (recomputed - logged) / logged if logged else None}

    compared = [g for g in groups if g["priced"] and g["requests"]]
    by_model = [{**{k: g[k] for k in ("source_format", "provider", "model", "requests", "logged_cost_usd",
                                       "recomputed_cost_usd")},
                 **residual(g["logged_cost_usd"], g["recomputed_cost_usd"])} for g in compared]
    logged = sum(g["logged_cost_usd"] for g in compared) if compared else None
    recomputed = sum(g["recomputed_cost_usd"] for g in compared) if compared else None
    not_priced = [g for g in groups if not g["priced"] and g["requests"]]
    logged_cost = {
        "requests": sum(g["requests"] for g in compared),
        "logged_cost_usd": logged,
        "recomputed_cost_usd": recomputed,
        **residual(logged, recomputed),
        "requests_unpriced": sum(g["requests"] for g in not_priced),
        "logged_cost_unpriced_usd": sum(g["logged_cost_usd"] for g in not_priced) if not_priced else None,
        "by_model": by_model,
    }
    invoice = None
    if invoice_total_monthly is not None:
        ledger_monthly = sum(g["cost_monthly_usd"] for g in groups if g["priced"]) if _has_window(con) else None
        invoice = {
            "invoice_total_monthly_usd": invoice_total_monthly,
            "ledger_monthly_usd": ledger_monthly,
            "explained_share": (ledger_monthly / invoice_total_monthly
                                if ledger_monthly is not None and invoice_total_monthly else None),
            "unexplained_monthly_usd": (invoice_total_monthly - ledger_monthly
                                        if ledger_monthly is not None else None),
        }
    return {"logged_cost": logged_cost, "invoice": invoice}


__all__ = [
    "BATCH_DISCOUNTS", "TIER_CANDIDATES", "PricePerMillion", "PriceBook", "OverridePrice", "load_price_book",
    "price_requests", "pricing_summary", "reconcile", "price_per_million", "cheapest_for_tier",
    "self_hosted_price_per_million", "price_book_of_last_run", "catalog_source",
]
