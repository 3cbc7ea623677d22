"""Benchmark: `audit analyze` + `audit report` on a 1M-request ledger vs a bare DuckDB scan of it.

Uses the ledger `bench/ingest.py --keep` leaves in bench/data/bench.duckdb
(1M generated chat requests, ``audit.synth.generate_chat_jsonl``); builds it
first when missing, as bench/analyze.py does. On a copy:

1. ``audit analyze`` (timed);
2. the trial's inputs, *not* timed (the report reuses replay results, it does
   not make them): ``audit sample`` (n=500, seed 7) and fake-engine replays of
   that sample for two candidates, one priced per token and one self-hosted;
3. ``build_report`` + ``render_report`` + writing the HTML (timed).

Prints each stage's time, the headline figures, the file size (target < 5 MB),
analyze + report (target < 60 s on 2 cores), and the ratios of the report alone
and of analyze + report to ``SELECT count(*), sum(input_tokens),
sum(output_tokens), sum(cost_usd) FROM requests JOIN request_costs`` on the
same tables, measured in the same run.

    .venv/bin/python bench/report.py [--keep]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
LEDGER = HERE / "data" / "bench.duckdb"
CANDIDATES = ("mini=fake:echo?input_price=0.15&output_price=0.6", "local=fake:echo?pricing=gpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep bench/data/report.duckdb and the HTML")
    args = parser.parse_args()
    if not LEDGER.exists():
        subprocess.run([sys.executable, str(HERE / "ingest.py"), "--keep"], check=True)
    work = HERE / "data" / "report.duckdb"
    out = HERE / "data" / "report.html"
    shutil.copy(LEDGER, work)

    from audit import db
    from audit.analyze import analyze
    from audit.backends import parse_candidate
    from audit.pricing import PriceBook
    from audit.replay import plan_replay, replay
    from audit.report import build_report
    from audit.report.render import render_report
    from audit.sample import draw_sample

    con = db.connect(work)
    rows = con.execute("SELECT count(*) FROM requests").fetchall()[0][0]

    started = time.perf_counter()
    analyze(con)
    analyze_seconds = time.perf_counter() - started

    started = time.perf_counter()
    draw_sample(con, n=500, seed=7)
    plan = plan_replay(con, [parse_candidate(c) for c in CANDIDATES], book=PriceBook())
    replay(con, plan, max_cost_usd=100.0)
    setup_seconds = time.perf_counter() - started

    # The reference: one scan of the ledger and its costs, the least any report must read.
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        con.execute("""SELECT count(*), sum(r.input_tokens), sum(r.output_tokens), sum(c.cost_usd)
                       FROM requests r JOIN request_costs c USING (request_id)""").fetchall()
        timings.append(time.perf_counter() - started)
    bare = min(timings)

    stages = []
    started = time.perf_counter()
    data = build_report(con)
    stages.append(("build figures", time.perf_counter() - started))
    t = time.perf_counter()
    html = render_report(data)
    stages.append(("render HTML", time.perf_counter() - t))
    t = time.perf_counter()
    out.write_text(html, encoding="utf-8")
    stages.append(("write file", time.perf_counter() - t))
    report_seconds = time.perf_counter() - started
    size_mb = out.stat().st_size / 1e6

    h = data["headline"]
    print(f"ledger: {rows:,} requests")
    print(f"  analyze                     {analyze_seconds:6.2f} s")
    print(f"  (not timed: sample + fake replays {setup_seconds:.1f} s)")
    for name, seconds in stages:
        print(f"  report: {name:19} {seconds:6.2f} s")
    print(f"monthly spend ${h['spend_monthly_usd']:,.0f}; no-risk savings ${h['no_risk']['low_usd']:,.0f}–"
          f"${h['no_risk']['high_usd']:,.0f}; quality-gated ${h['quality_gated']['low_usd']:,.0f}–"
          f"${h['quality_gated']['high_usd']:,.0f}; bill after ${h['bill_after_low_usd']:,.0f}–${h['bill_after_high_usd']:,.0f}")
    print(f"growth {data['projection']['growth_monthly']:.1%} per month ({data['projection']['growth_basis']}); "
          f"{len(data['findings']['found'])} findings shown; {len(data['trials']['rows'])} trial rows")
    print(f"report file:                 {size_mb:6.2f} MB (target < 5)")
    print(f"analyze + report:            {analyze_seconds + report_seconds:6.1f} s (target < 60 s)")
    print(f"bare DuckDB scan:            {bare:6.3f} s (best of {', '.join(f'{x:.3f}' for x in timings)})")
    print(f"ratio report / scan:         {report_seconds / bare:6.0f}")
    print(f"ratio analyze+report / scan: {(analyze_seconds + report_seconds) / bare:6.0f}")
    con.close()
    if not args.keep:
        work.unlink(missing_ok=True)
        out.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
