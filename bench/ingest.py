"""Benchmark: `audit ingest` of a generated 1M-request chat JSONL vs DuckDB's own scan.

Reference, measured in the same run on the same file: DuckDB's
``SELECT count(*) FROM read_json(FILE)``. Prints both times, the ratio
(target <= 2.5) and the peak RSS of the ingest process (target < 4 GB).

    .venv/bin/python bench/ingest.py [--requests 1000000] [--keep]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import duckdb

HERE = Path(__file__).parent
DATA = HERE / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true", help="keep the generated file and database")
    args = parser.parse_args()

    DATA.mkdir(exist_ok=True)
    log = DATA / f"chat_{args.requests}.jsonl"
    if not log.exists():
        from audit.synth import generate_chat_jsonl

        started = time.perf_counter()
        generate_chat_jsonl(log, args.requests, seed=7)
        print(f"generated {args.requests:,} requests ({log.stat().st_size / 1e9:.2f} GB) in "
              f"{time.perf_counter() - started:.0f} s", file=sys.stderr)
    size_gb = log.stat().st_size / 1e9

    # Reference: DuckDB's own JSON scan of the same file. The first scan may
    # read the file from disk; the best of three is the warm-cache figure.
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        rows = duckdb.connect().execute(f"SELECT count(*) FROM read_json('{log}')").fetchall()[0][0]
        timings.append(time.perf_counter() - started)
    reference = min(timings)

    db_path = DATA / "bench.duckdb"
    for stale in (db_path, db_path.with_suffix(".duckdb.wal")):
        stale.unlink(missing_ok=True)
    started = time.perf_counter()
    child = subprocess.run(
        [sys.executable, "-m", "audit", "ingest", str(log), "--db", str(db_path), "--json"],
        capture_output=True, text=True,
    )
    ours = time.perf_counter() - started
    if child.returncode != 0:
        sys.exit(f"ingest failed: {child.stderr}")
    peak_rss_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6  # KiB → GB

    import json

    stored = json.loads(child.stdout)["totals"]["stored"]
    print(f"file: {rows:,} requests, {size_gb:.2f} GB")
    print(f"duckdb read_json count(*): {reference:6.2f} s  (best of {', '.join(f'{t:.2f}' for t in timings)})")
    print(f"audit ingest:              {ours:6.2f} s  ({stored:,} stored, {stored / ours:,.0f} requests/s)")
    print(f"ratio ingest / read_json:  {ours / reference:6.2f}  (target <= 2.5)")
    print(f"peak RSS of ingest:        {peak_rss_gb:6.2f} GB (target < 4)")
    if not args.keep:
        db_path.unlink(missing_ok=True)
        shutil.rmtree(DATA, ignore_errors=True)


if __name__ == "__main__":
    main()
