"""The twelve-month projection: growth fitted from the ledger, cost before and after acting.

Reads: ``requests``, ``request_costs``, ``analysis_window``. Writes nothing.

Growth is a log-linear least-squares fit of the daily full-traffic spend
over the analysis window: ``ln(spend_day) = a + b · day``, monthly growth =
``e^(30·b) − 1``. Days the window covers only partly (its first and last)
are scaled to a full day by the share covered and dropped below half a day,
so a window that starts at 23:59 does not read as a collapse. A fit needs
at least ``MIN_FIT_DAYS`` days with spend; otherwise growth is 0 and the
basis says why (``--growth`` sets it by hand).

Each month ``m`` (1..12) of the projection costs ``current × (1 + g)^m``; the
"after" lines apply the savings as a share of today's bill (the same share
keeps applying as traffic grows, because every saving is a share of the
traffic it touches).
"""

from __future__ import annotations

import math
from typing import Any

import duckdb

from audit.findings import IN_WINDOW

MIN_FIT_DAYS = 7
MONTHS = 12
# A day counts in the fit when the window covers at least this share of it.
MIN_DAY_COVERAGE = 0.5
REVENUE_SHARES = (0.25, 0.50)


def daily_spend_in_window(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """Per UTC day of the analysis window: full-traffic spend, calls, and the share of the day the window covers."""
    rows = con.execute(
        f"""SELECT r.started_at::DATE AS day,
                   sum(c.cost_usd / r.sampled_fraction) AS spend_usd,
                   sum(1.0 / r.sampled_fraction) AS calls,
                   -- the part of the day inside [window_start, window_end], in days
                   (epoch(least(any_value(w.window_end), r.started_at::DATE + INTERVAL 1 DAY))
                    - epoch(greatest(any_value(w.window_start), r.started_at::DATE::TIMESTAMP))) / 86400.0 AS coverage
            FROM requests r JOIN request_costs c USING (request_id), analysis_window w
            WHERE {IN_WINDOW}
            GROUP BY day ORDER BY day"""
    ).fetchall()
    return [{"day": day, "spend_usd": spend or 0.0, "calls": calls, "coverage": min(1.0, max(0.0, coverage or 0.0))}
            for day, spend, calls, coverage in rows]


def fit_growth(days: list[dict[str, Any]]) -> dict[str, Any]:
    """Least-squares fit of ln(daily spend) on the day number; monthly growth, R², and what it was fitted on."""
    points = [(d["day"], d["spend_usd"] / d["coverage"]) for d in days
              if d["coverage"] >= MIN_DAY_COVERAGE and d["spend_usd"] > 0]
    if len(points) < MIN_FIT_DAYS:
        return {"fitted": False, "days": len(points), "monthly_growth": None, "daily_growth": None, "r_squared": None,
                "first_day": None, "last_day": None,
                "reason": f"only {len(points)} full days with spend in the window (a fit needs {MIN_FIT_DAYS})"}
    first = points[0][0]
    xs = [float((day - first).days) for day, _ in points]
    ys = [math.log(spend) for _, spend in points]
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys))
    slope = sxy / sxx if sxx else 0.0
    intercept = mean_y - slope * mean_x
    ss_res = sum((y - (intercept + slope * x)) ** 2 for x, y in zip(xs, ys))
    ss_tot = sum((y - mean_y) ** 2 for y in ys)
    return {"fitted": True, "days": n, "daily_growth": math.exp(slope) - 1, "monthly_growth": math.exp(30 * slope) - 1,
            "r_squared": 1 - ss_res / ss_tot if ss_tot else None,
            "first_day": points[0][0].isoformat(), "last_day": points[-1][0].isoformat(), "reason": None}


def project(*, current_monthly_usd: float, monthly_growth: float, savings_low_usd: float, savings_high_usd: float,
            revenue_monthly_usd: float | None, revenue_growth: float = 0.0, months: int = MONTHS) -> dict[str, Any]:
    """Month by month: cost if nothing is done, after the low and high savings, revenue; when cost passes shares of revenue."""
    share_low = savings_low_usd / current_monthly_usd if current_monthly_usd else 0.0
    share_high = savings_high_usd / current_monthly_usd if current_monthly_usd else 0.0
    rows = []
    for month in range(0, months + 1):
        cost = current_monthly_usd * (1 + monthly_growth) ** month
        revenue = revenue_monthly_usd * (1 + revenue_growth) ** month if revenue_monthly_usd is not None else None
        rows.append({"month": month, "cost_usd": cost,
                     "cost_if_low_savings_usd": cost * (1 - share_low),
                     "cost_if_high_savings_usd": cost * (1 - share_high),
                     "revenue_usd": revenue,
                     "cost_share_of_revenue": cost / revenue if revenue else None})
    crossings = []
    for share in REVENUE_SHARES:
        month = next((r["month"] for r in rows if r["revenue_usd"] and r["cost_usd"] >= share * r["revenue_usd"]), None)
        crossings.append({"share": share, "month": month})
    totals = {key: sum(r[key] for r in rows[1:])
              for key in ("cost_usd", "cost_if_low_savings_usd", "cost_if_high_savings_usd")}
    return {"months": rows, "revenue_crossings": crossings, "twelve_month_totals": totals}


__all__ = ["daily_spend_in_window", "fit_growth", "project", "MIN_FIT_DAYS", "MONTHS", "REVENUE_SHARES"]
