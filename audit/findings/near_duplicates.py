"""Near-duplicate queries: what a similarity cache would add to the exact one, and how often it would be wrong.

Reads: ``requests``, ``request_costs``, ``request_templates``,
``analysis_window``. Writes: nothing (returns ``Finding`` rows of kind
``near_duplicate_cache``). Creates and drops TEMP tables ``_near_dup_*``; reads
the texts ``audit.findings.cache.prompt_scan`` parsed (building it if needed).

A similarity ("semantic") cache answers a call with the response of an
earlier call whose user text is merely *similar*. Here similarity is the
Jaccard index of word shingles (``SHINGLE_WORDS``-word windows) of the
normalised user text (lower case, each run of punctuation and spaces one space),
estimated with MinHash (``SIGNATURE_SIZE`` hash functions ``a·x + b mod 2^64``
over DuckDB's 64-bit word hashes; numpy) and candidate pairs from LSH banding
(bands sized so that pairs just below the threshold are still found with 99 %
probability), all within one template × model.

- A *near-duplicate pair*: estimated Jaccard ≥ ``settings.near_duplicate_threshold``
  and the two prompts are not equal after the exact cache's normalisation
  (those pairs are ``exact_cache``'s). Calls that the exact cache already
  serves are taken out: on the whole traffic, calls that are measured exact
  hits; on a sample, each call is weighted by ``1 − h(F)·a`` with its
  normalised prompt's estimated exact hit share (see ``audit.findings.cache``).
- A near hit is *true* when the two logged responses agree: normalised texts
  equal, or Jaccard of their word shingles ≥ ``RESPONSE_AGREEMENT_JACCARD``.
  The *false-hit rate* is the share of near-duplicate pairs whose responses
  do not agree: what a similarity cache at this threshold would serve wrongly.
- Work is bounded: at most ``ROWS_PER_GROUP`` calls per template × model (a
  uniform subset chosen by a hash of the request id, fraction ``q``); all
  counts are scaled back by ``1/q``.

Hit rates from a sample: each sampled call's near-duplicate partners, ``m``,
estimate ``M = m/(p·q)`` partners in the full traffic of the window (unbiased:
each partner is in the subset with probability ``p·q``); with Poisson
arrivals the call finds one within the TTL with probability
``h = 1 − exp(−M·TTL/window)``. Plugging the estimate into the concave ``h``
errs low for calls whose partners the sample missed, so on a sample this is a
conservative estimate. On the whole traffic (``p·q = 1``) the real timeline is
used: a call is a near hit when a partner came less than the TTL before it,
true when the most recent such partner's response agrees.

Savings: low = the monthly cost of the true near hits, high = of all near
hits (a cache that does not check answers cannot tell them apart).
"""

from __future__ import annotations

from typing import Any

import duckdb
import numpy as np

from audit.findings import IN_WINDOW, MONTHLY, Finding, Settings, not_run
from audit.findings.cache import (
    AGREEMENT_PRIOR_PAIRS,
    drop_temp,
    missing_inputs,
    prompt_scan,
    template_spend,
    window_hours,
)

KIND = "near_duplicate_cache"

ROWS_PER_GROUP = 1000              # calls examined per template × model, at most
SHINGLE_WORDS = 3
SIGNATURE_SIZE = 128
RESPONSE_AGREEMENT_JACCARD = 0.8
LSH_RECALL_MARGIN = 0.05           # bands are sized to find pairs down to threshold − margin...
LSH_RECALL = 0.99                  # ...with at least this probability
EXAMPLES = 3
_SEED = np.uint64(0x5EED_CAC4E)


# --------------------------------------------------------------------------- MinHash


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a well-mixed 64-bit hash (uint64 arithmetic wraps)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


# Hash function k of the signature: x -> a_k * x + b_k (mod 2^64), a_k odd. The shingle hashes are
# already uniform 64-bit values, and each such map is a bijection of them, so the minimum over a
# text's shingles is a min-wise sample; two operations per value instead of a full mix.
_MULTIPLIERS = _mix(np.arange(1, SIGNATURE_SIZE + 1, dtype=np.uint64) * _SEED) | np.uint64(1)
_OFFSETS = _mix(np.arange(SIGNATURE_SIZE + 1, 2 * SIGNATURE_SIZE + 1, dtype=np.uint64) * _SEED)


def shingles(word_hashes: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(text index, shingle hash) of every ``SHINGLE_WORDS``-word window of each text.

    ``word_hashes`` holds the texts' word hashes one after the other, ``lengths``
    their word counts. A text shorter than a window is one shingle of all its
    words. Repeated shingles are kept: they do not change a minimum.
    """
    total = len(word_hashes)
    text_of = np.repeat(np.arange(len(lengths)), lengths)
    position = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    length = lengths[text_of]
    combined = _mix(word_hashes)
    for step in range(1, SHINGLE_WORDS):
        following = word_hashes[np.minimum(np.arange(total) + step, total - 1)]
        combined = np.where(position + step < length, _mix(combined ^ following), combined)
    keep = (position + SHINGLE_WORDS <= length) | ((position == 0) & (length < SHINGLE_WORDS))
    return text_of[keep], combined[keep]


def signatures(text_of: np.ndarray, shingle_hashes: np.ndarray, n_texts: int, chunk: int = 16_384) -> np.ndarray:
    """MinHash signatures (n_texts × SIGNATURE_SIZE) from (text index, shingle hash) sorted by text index.

    Every text must have at least one shingle. Works through the shingles in
    cache-sized chunks with one reused buffer (fresh big arrays cost more in
    page faults than the arithmetic).
    """
    out = np.full((n_texts, SIGNATURE_SIZE), np.iinfo(np.uint64).max, dtype=np.uint64)
    buffer = np.empty((chunk, SIGNATURE_SIZE), dtype=np.uint64)
    for lo in range(0, len(shingle_hashes), chunk):
        hi = min(lo + chunk, len(shingle_hashes))
        part = buffer[:hi - lo]
        np.multiply(shingle_hashes[lo:hi, None], _MULTIPLIERS[None, :], out=part)
        np.add(part, _OFFSETS[None, :], out=part)
        texts = text_of[lo:hi]
        starts = np.flatnonzero(np.concatenate([[True], texts[1:] != texts[:-1]]))
        out[texts[starts]] = np.minimum(out[texts[starts]], np.minimum.reduceat(part, starts, axis=0))
    return out


def lsh_shape(threshold: float) -> tuple[int, int]:
    """(bands, rows per band): the most selective split that still finds pairs near the threshold."""
    floor = max(0.05, threshold - LSH_RECALL_MARGIN)
    best = (SIGNATURE_SIZE, 1)
    rows = 1
    while rows <= SIGNATURE_SIZE:
        bands = SIGNATURE_SIZE // rows
        if 1.0 - (1.0 - floor ** rows) ** bands >= LSH_RECALL:
            best = (bands, rows)
        rows *= 2
    return best


def _pairs_within_runs(order: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """All pairs (as rows [x, y]) of items that share a key; ``order`` sorts ``keys``."""
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.concatenate([[True], sorted_keys[1:] != sorted_keys[:-1]]))
    sizes = np.diff(np.concatenate([starts, [len(keys)]]))
    multi = sizes > 1
    starts, sizes = starts[multi], sizes[multi]
    if len(sizes) == 0:
        return np.empty((0, 2), dtype=np.int64)
    # For a run of s items, pair k (0 <= k < s*s) is (k // s, k % s); keep those with x < y.
    total = sizes * sizes
    run = np.repeat(np.arange(len(sizes)), total)
    k = np.arange(int(total.sum())) - np.repeat(np.cumsum(total) - total, total)
    x, y = k // sizes[run], k % sizes[run]
    keep = x < y
    base = starts[run][keep]
    return np.stack([order[base + x[keep]], order[base + y[keep]]], axis=1)


def similar_pairs(sig: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (a < b) of rows of ``sig`` with estimated Jaccard ≥ threshold, and the estimates."""
    n = sig.shape[0]
    empty = np.empty(0, dtype=np.int64)
    if n < 2:
        return empty, empty, np.empty(0)
    bands, rows = lsh_shape(threshold)
    candidates = []
    for band in range(bands):
        block = sig[:, band * rows:(band + 1) * rows]
        key = _mix(block[:, 0])
        for column in range(1, rows):
            key = _mix(key ^ block[:, column])
        candidates.append(_pairs_within_runs(np.argsort(key, kind="stable"), key))
    pairs = np.concatenate(candidates)
    if len(pairs) == 0:
        return empty, empty, np.empty(0)
    pairs.sort(axis=1)
    pairs = np.unique(pairs, axis=0)
    estimate = (sig[pairs[:, 0]] == sig[pairs[:, 1]]).mean(axis=1)
    keep = estimate >= threshold
    return pairs[keep, 0], pairs[keep, 1], estimate[keep]


# --------------------------------------------------------------------------- data


def _subset_table(con: duckdb.DuckDBPyConnection, ttl_hours: float) -> None:
    """At most ~ROWS_PER_GROUP window calls per template × model, with texts and exact-cache statistics.

    A nested uniform subset of ``prompt_scan``'s (whose texts are parsed there):
    a call stays when its id hash is also below the smaller fraction.
    """
    scan = prompt_scan(con, ttl_hours)
    ttl_us = round(ttl_hours * 3600e6)
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _near_dup_calls AS
        WITH picked AS (
            SELECT r.request_id, r.template_id, coalesce(r.model, '(unknown)') AS model, r.started_at,
                   r.sampled_fraction, r.subset_fraction, r.normalised_key, r.user_words, r.response_words,
                   r.response_normalised AS response_key,
                   coalesce(c.cost_usd, 0) * {MONTHLY} AS spend_monthly, {MONTHLY} AS calls_monthly
            FROM {scan} r LEFT JOIN request_costs c USING (request_id), analysis_window w
            WHERE r.subset_fraction IS NOT NULL AND {IN_WINDOW}),
        sizes AS (SELECT template_id, model, least(1.0, {ROWS_PER_GROUP} / count(*)) AS keep FROM picked GROUP BY ALL),
        nested AS (
            SELECT p.* EXCLUDE (subset_fraction), p.subset_fraction * s.keep AS subset_fraction
            FROM picked p JOIN sizes s USING (template_id, model)
            WHERE s.keep >= 1.0 OR hash(p.request_id) % 1000000 < p.subset_fraction * s.keep * 1000000),
        lagged AS (
            SELECT *, lag(started_at) OVER k AS previous_at, lag(response_key) OVER k AS previous_response
            FROM nested
            WINDOW k AS (PARTITION BY template_id, model, normalised_key ORDER BY started_at, request_id)),
        keys AS (
            SELECT template_id, model, normalised_key, count(*) AS key_calls,
                   sum(1.0 / (sampled_fraction * subset_fraction)) AS key_scaled,
                   count(previous_response) AS pairs, count(*) FILTER (WHERE previous_response = response_key) AS agreeing
            FROM lagged GROUP BY ALL),
        pooled AS (
            SELECT template_id, model, sum(agreeing) / nullif(sum(pairs), 0) AS agreement FROM keys GROUP BY ALL)
        SELECT l.* EXCLUDE (previous_at, previous_response), k.key_calls, k.key_scaled,
               (k.agreeing + {AGREEMENT_PRIOR_PAIRS} * coalesce(p.agreement, 0))
                   / (k.pairs + {AGREEMENT_PRIOR_PAIRS}) AS key_agreement,
               coalesce(l.previous_response = l.response_key
                        AND epoch_us(l.started_at) - epoch_us(l.previous_at) < {ttl_us}, false) AS exact_hit,
               epoch_us(l.started_at) AS started_us
        FROM lagged l JOIN keys k USING (template_id, model, normalised_key) JOIN pooled p USING (template_id, model)"""
    )
    con.execute(
        """CREATE OR REPLACE TEMP TABLE _near_dup_texts AS
        WITH distinct_texts AS (
            SELECT DISTINCT user_words AS text FROM _near_dup_calls
            UNION SELECT DISTINCT response_words FROM _near_dup_calls)
        SELECT row_number() OVER (ORDER BY text) - 1 AS text_id, text FROM distinct_texts"""
    )


def _signatures(con: duckdb.DuckDBPyConnection, text_ids: np.ndarray) -> np.ndarray:
    """MinHash signatures of the given texts of ``_near_dup_texts`` (rows in the order of ``text_ids``, sorted).

    DuckDB splits the texts into words and hashes them (deterministic across
    runs); the shingles and signatures are numpy.
    """
    if len(text_ids) == 0:
        return np.empty((0, SIGNATURE_SIZE), dtype=np.uint64)
    data = con.execute(
        """SELECT text_id, list_transform(string_split(text, ' '), lambda w: hash(w)) AS words
           FROM _near_dup_texts WHERE text_id IN (SELECT unnest(?::BIGINT[])) ORDER BY text_id""",
        [text_ids.tolist()],
    ).fetchnumpy()
    words = data["words"]
    lengths = np.fromiter((len(w) for w in words), dtype=np.int64, count=len(words))
    text_of, hashes = shingles(np.concatenate(list(words)).astype(np.uint64), lengths)
    return signatures(text_of, hashes, len(text_ids))


# --------------------------------------------------------------------------- detector


def detect(con: duckdb.DuckDBPyConnection, settings: Settings) -> list[Finding]:
    reason = missing_inputs(con)
    if reason:
        return [not_run(KIND, reason)]
    threshold = float(settings.near_duplicate_threshold)
    ttl = float(settings.cache_ttl_hours)
    hours = window_hours(con)
    try:
        _subset_table(con, ttl)
        calls = con.execute(
            """SELECT c.template_id, c.model, c.request_id, u.text_id AS user_text, a.text_id AS response_text,
                      c.normalised_key, c.response_key, c.started_us, c.spend_monthly, c.calls_monthly,
                      c.sampled_fraction, c.subset_fraction, c.key_calls, c.key_scaled, c.key_agreement, c.exact_hit
               FROM _near_dup_calls c JOIN _near_dup_texts u ON u.text = c.user_words
               JOIN _near_dup_texts a ON a.text = c.response_words
               ORDER BY c.template_id, c.model, c.request_id"""
        ).fetchnumpy()
        if len(calls["request_id"]) == 0:
            return []
        user_ids = np.unique(calls["user_text"].astype(np.int64))
        user_sig = _signatures(con, user_ids)
        groups = np.char.add(calls["template_id"].astype(str), np.char.add("\x1f", calls["model"].astype(str)))
        pairs = {}
        for group in np.unique(groups):
            rows = np.flatnonzero(groups == group)
            g = {k: v[rows] for k, v in calls.items()}
            pairs[group] = (g, *_request_pairs(g, user_sig[np.searchsorted(user_ids, g["user_text"])], threshold))
        # Responses are shingled only where a pair's normalised responses differ.
        needed = []
        for g, i, j, _ in pairs.values():
            differ = g["response_key"][i] != g["response_key"][j]
            needed.append(g["response_text"][np.concatenate([i[differ], j[differ]])])
        response_ids = np.unique(np.concatenate(needed).astype(np.int64))
        response_sig = _signatures(con, response_ids)
        spend_by_template = template_spend(con)
    finally:
        drop_temp(con, "_near_dup_calls", "_near_dup_texts")
    findings = []
    for g, i, j, jaccard in pairs.values():
        if len(i) == 0:
            continue
        agree = g["response_key"][i] == g["response_key"][j]
        differ = np.flatnonzero(~agree)
        if len(differ):
            ra = response_sig[np.searchsorted(response_ids, g["response_text"][i[differ]])]
            rb = response_sig[np.searchsorted(response_ids, g["response_text"][j[differ]])]
            agree[differ] = (ra == rb).mean(axis=1) >= RESPONSE_AGREEMENT_JACCARD
        finding = _group_finding(g, i, j, jaccard, agree, threshold, ttl, hours)
        if finding is not None:
            finding.evidence["template_spend_monthly_usd"] = round(spend_by_template.get(finding.template_id, 0.0), 2)
            findings.append(finding)
    return findings


def _request_pairs(g: dict[str, np.ndarray], sig: np.ndarray, threshold: float):
    """Ordered pairs (i → j, i ≠ j) of calls whose user texts are near-duplicates, minus exact-cache pairs.

    ``sig`` holds the signature of each call's user text (one row per call).
    """
    texts, first, local = np.unique(g["user_text"], return_index=True, return_inverse=True)
    a, b, jaccard = similar_pairs(sig[first], threshold)
    # Same text: Jaccard 1 (pairs differing elsewhere in the prompt, e.g. another customer's context).
    same = np.arange(len(texts))
    a, b = np.concatenate([a, b, same]), np.concatenate([b, a, same])
    jaccard = np.concatenate([jaccard, jaccard, np.ones(len(texts))])
    order = np.argsort(local, kind="stable")
    counts = np.bincount(local, minlength=len(texts))
    starts = np.concatenate([[0], np.cumsum(counts)])
    sizes = counts[a] * counts[b]
    total = int(sizes.sum())
    if total == 0:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, np.empty(0)
    pair_of = np.repeat(np.arange(len(a)), sizes)
    offset = np.arange(total) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    width = counts[b][pair_of]
    i = order[starts[a][pair_of] + offset // width]
    j = order[starts[b][pair_of] + offset % width]
    keep = (i != j) & (g["normalised_key"][i] != g["normalised_key"][j])
    return i[keep], j[keep], jaccard[pair_of][keep]


def _group_finding(g: dict[str, np.ndarray], i: np.ndarray, j: np.ndarray, jaccard: np.ndarray, agree: np.ndarray,
                   threshold: float, ttl: float, hours: float) -> Finding | None:
    """One template × model: near hits and true near hits, measured and estimated (see the module docstring)."""
    template_id, model = str(g["template_id"][0]), str(g["model"][0])
    n = len(g["request_id"])
    partners = np.bincount(i, minlength=n).astype(float)
    agreeing = np.bincount(i, weights=agree.astype(float), minlength=n)

    # The ledger's own timeline: the latest partner less than the TTL before each call.
    ttl_us = ttl * 3600e6
    gap = g["started_us"][i].astype(np.int64) - g["started_us"][j].astype(np.int64)
    earlier = (gap > 0) | ((gap == 0) & (g["request_id"][j] < g["request_id"][i]))
    recent = np.flatnonzero(earlier & (gap < ttl_us))
    measured_hit = np.zeros(n, dtype=bool)
    measured_true = np.zeros(n, dtype=bool)
    if len(recent):
        order = recent[np.lexsort((gap[recent], i[recent]))]
        first = order[np.unique(i[order], return_index=True)[1]]
        measured_hit[i[first]] = True
        measured_true[i[first]] = agree[first]
    measured_hit &= ~g["exact_hit"]
    measured_true &= measured_hit

    fraction = g["sampled_fraction"] * g["subset_fraction"]
    weight_calls = g["calls_monthly"] / g["subset_fraction"]
    weight_spend = g["spend_monthly"] / g["subset_fraction"]
    whole_traffic = bool(fraction.min() >= 1.0)
    if whole_traffic:
        high_share = measured_hit.astype(float)
        low_share = measured_true.astype(float)
    else:
        near = 1.0 - np.exp(-(partners / fraction) * ttl / hours)
        exact = np.where(g["key_calls"] >= 2, (1.0 - np.exp(-g["key_scaled"] * ttl / hours)) * g["key_agreement"], 0.0)
        high_share = (1.0 - exact) * near
        low_share = high_share * np.divide(agreeing, partners, out=np.zeros(n), where=partners > 0)
    high = float((weight_spend * high_share).sum())
    low = float((weight_spend * low_share).sum())
    if high <= 0:
        return None
    calls_monthly = float(weight_calls.sum())
    hits_high = float((weight_calls * high_share).sum())
    hits_low = float((weight_calls * low_share).sum())
    with_partner = partners > 0
    unordered = len(i) // 2 if len(i) else 0
    disagreeing_pairs = int((~agree).sum()) // 2
    examples = []
    for k in np.argsort(-jaccard, kind="stable")[: 4 * EXAMPLES]:
        if g["request_id"][i[k]] < g["request_id"][j[k]] and len(examples) < EXAMPLES:
            examples.append({"request_id": str(g["request_id"][i[k]]), "similar_to": str(g["request_id"][j[k]]),
                             "jaccard_estimate": round(float(jaccard[k]), 3), "responses_agree": bool(agree[k])})
    evidence: dict[str, Any] = {
        "threshold_jaccard": threshold,
        "similarity": (f"MinHash ({SIGNATURE_SIZE} hashes) Jaccard of {SHINGLE_WORDS}-word shingles of the "
                       "normalised user text, LSH {} bands x {} rows".format(*lsh_shape(threshold))),
        "agreement_rule": (f"normalised responses equal, or Jaccard of their {SHINGLE_WORDS}-word shingles >= "
                           f"{RESPONSE_AGREEMENT_JACCARD}"),
        "excluded": "pairs whose prompts are equal after normalisation, and calls the exact cache serves",
        "ttl_hours": ttl,
        "calls_examined": n,
        "subset_fraction": round(float(g["subset_fraction"][0]), 6),
        "max_calls_examined": ROWS_PER_GROUP,
        "calls_with_near_duplicates": int(with_partner.sum()),
        "near_duplicate_pairs": unordered,
        "false_hit_pairs": disagreeing_pairs,
        "false_hit_rate": round(disagreeing_pairs / unordered, 4) if unordered else None,
        "measured_on_sample": {"near_hits_within_ttl": int(measured_hit.sum()),
                               "true_near_hits_within_ttl": int(measured_true.sum())},
        "estimated_full_traffic": {
            "method": ("measured: the ledger is the whole traffic" if whole_traffic else
                       "per call: partners M = m/(p*q), hit share 1 - exp(-M*TTL/window), minus the exact "
                       "cache's share; low counts only partners whose responses agree"),
            "hit_rate": round(hits_high / calls_monthly, 4) if calls_monthly else 0.0,
            "true_hit_rate": round(hits_low / calls_monthly, 4) if calls_monthly else 0.0,
            "false_hit_share_of_hits": round(1.0 - hits_low / hits_high, 4) if hits_high else None,
        },
        "examples": examples,
    }
    return Finding(
        kind=KIND, template_id=template_id, model=model,
        requests_affected=round(float((with_partner / g["subset_fraction"]).sum())),
        requests_affected_monthly=round(float(weight_calls[with_partner].sum()), 1),
        spend_affected_monthly_usd=round(max(float(weight_spend[with_partner].sum()), high), 2),
        savings_low_monthly_usd=round(low, 2), savings_high_monthly_usd=round(high, 2),
        action=(f"a similarity cache on {template_id} ({model}) at Jaccard >= {threshold:g} would answer "
                f"{hits_high / calls_monthly:.1%} of calls; "
                + (f"{1.0 - hits_low / hits_high:.0%} of those answers would be wrong"
                   if hits_high else "")),
        evidence=evidence,
    )

