"""Benchmark: `audit analyze` on a 1M-request ledger vs a bare DuckDB aggregate over it.

Uses the ledger `bench/ingest.py --keep` leaves in bench/data/bench.duckdb
(1M generated chat requests); builds it first when missing. Prints analyze's
wall time per stage, the total (target: under 60 s on 2 cores) and the ratio
to ``SELECT model, count(*), sum(input_tokens), sum(output_tokens) FROM
requests GROUP BY model`` on the same table, measured in the same run.

    .venv/bin/python bench/analyze.py
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
LEDGER = HERE / "data" / "bench.duckdb"


def main() -> None:
    if not LEDGER.exists():
        subprocess.run([sys.executable, str(HERE / "ingest.py"), "--keep"], check=True)
    work = HERE / "data" / "analyze.duckdb"
    shutil.copy(LEDGER, work)

    from audit import analyze as analyze_module
    from audit import db, pricing, tasks, templates
    from audit.findings import Settings, detectors, write_findings

    con = db.connect(work)
    rows = con.execute("SELECT count(*) FROM requests").fetchall()[0][0]
    started = time.perf_counter()
    con.execute("SELECT model, count(*), sum(input_tokens), sum(output_tokens) FROM requests GROUP BY model").fetchall()
    bare = time.perf_counter() - started

    timings: list[tuple[str, float]] = []

    def timed(name, fn, *args):
        t = time.perf_counter()
        result = fn(*args)
        timings.append((name, time.perf_counter() - t))
        return result

    started = time.perf_counter()
    con.execute("INSERT INTO analysis_runs VALUES (1, now()::TIMESTAMP, NULL, '{}')")
    timed("window", analyze_module.compute_window, con)
    timed("pricing", pricing.price_requests, con, pricing.load_price_book(None))
    timed("templates", templates.mine_templates, con)
    timed("roll-up", analyze_module.roll_up_templates, con)
    timed("tasks", tasks.classify_templates, con)
    findings = []
    for name, detect in detectors():
        findings.extend(timed(f"finding: {name}", detect, con, Settings()))
    timed("write findings", write_findings, con, findings)
    total = time.perf_counter() - started
    for name, seconds in timings:
        print(f"  {name:28} {seconds:6.2f} s")
    print(f"analyze of {rows:,} requests: {total:.1f} s (target < 60 s)")
    print(f"bare DuckDB aggregate:       {bare:.3f} s")
    print(f"ratio analyze / aggregate:   {total / bare:,.0f}")
    con.close()
    work.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
