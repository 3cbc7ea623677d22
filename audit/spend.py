"""``audit spend``: what the ledger holds.

Reads: ``requests``, ``ingest_files``, ``ingest_rejects``. Writes nothing.

Figures are as logged (calls, tokens, logged cost where the source had one);
``scaled`` figures divide each call by its file's sampled fraction, so a 1%
export reports the full traffic. Pricing comes with ``audit analyze``.
"""

from __future__ import annotations

from typing import Any

import duckdb

from audit.db import fetch_dicts

_AGGREGATES = """
    count(*) AS calls,
    round(sum(1.0 / sampled_fraction)) AS calls_scaled,
    count(*) FILTER (WHERE status = 'error') AS failed,
    coalesce(sum(input_tokens), 0) AS input_tokens,
    coalesce(sum(cached_input_tokens), 0) AS cached_input_tokens,
    coalesce(sum(output_tokens), 0) AS output_tokens,
    coalesce(sum(reasoning_tokens), 0) AS reasoning_tokens,
    count(*) FILTER (WHERE tokens_source <> 'logged') AS tokens_not_logged,
    sum(logged_cost_usd) AS logged_cost_usd,
    count(logged_cost_usd) AS calls_with_logged_cost
"""


def spend_summary(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    # Batch API input files hold prompts, not calls: counted apart.
    files = fetch_dicts(
        con,
        """SELECT count(*) AS files, coalesce(sum(rows_read), 0) AS read, coalesce(sum(rows_stored), 0) AS stored,
                  coalesce(sum(rows_duplicate), 0) AS duplicate, coalesce(sum(rows_rejected), 0) AS rejected,
                  coalesce(sum(rows_stored) FILTER (WHERE format = 'openai-batch-input'), 0) AS batch_prompts,
                  list(DISTINCT sampled_fraction ORDER BY sampled_fraction) AS sampled_fractions
           FROM ingest_files WHERE NOT replaced""",
    )[0]
    totals = fetch_dicts(con, f"SELECT {_AGGREGATES}, min(started_at) AS first_call, max(started_at) AS last_call, "
                        "count(*) FILTER (WHERE started_at IS NULL) AS undated FROM requests")[0]
    by_model = fetch_dicts(con, f"SELECT model, provider, {_AGGREGATES} FROM requests GROUP BY ALL ORDER BY calls DESC, model")
    by_day = fetch_dicts(con, f"SELECT started_at::DATE AS day, {_AGGREGATES} FROM requests GROUP BY ALL ORDER BY day NULLS LAST")
    by_format = fetch_dicts(con, f"SELECT source_format AS format, {_AGGREGATES} FROM requests GROUP BY ALL ORDER BY calls DESC")
    reject_reasons = fetch_dicts(
        con,
        "SELECT split_part(reason, ':', 1) AS reason, count(*) AS records FROM ingest_rejects "
        "WHERE file_id IN (SELECT file_id FROM ingest_files WHERE NOT replaced) GROUP BY ALL ORDER BY records DESC, reason",
    )
    return {"ingest": files, "totals": totals, "by_model": by_model, "by_day": by_day,
            "by_format": by_format, "reject_reasons": reject_reasons}
