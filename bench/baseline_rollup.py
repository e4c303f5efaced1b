"""The rollup as it is usually written, for comparison: pandas ``resample().ohlc()`` + psycopg
``executemany``. Runs in its own process (stdlib sqlite3 and ADBC must not share a file in one
process), started once so that its runs alternate with ours and DuckDB's.

Usage: ``python -m bench.baseline_rollup SQLITE_PATH PG_URI LO_MS HI_MS``; prints ``ready``, then
answers each ``run`` line on stdin with the seconds of one run on an emptied table."""

from __future__ import annotations

import sqlite3
import sys
import time

import pandas as pd
import psycopg

DDL = """
CREATE TABLE IF NOT EXISTS baseline_hourly (
    symbol text, bucket timestamptz, open double precision, high double precision,
    low double precision, close double precision, mean double precision, samples int,
    PRIMARY KEY (symbol, bucket))
"""
UPSERT = """
INSERT INTO baseline_hourly VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (symbol, bucket) DO UPDATE SET open = excluded.open, high = excluded.high,
    low = excluded.low, close = excluded.close, mean = excluded.mean, samples = excluded.samples
"""


def once(sqlite_path: str, uri: str, lo: int, hi: int) -> float:
    started = time.perf_counter()
    with sqlite3.connect(sqlite_path) as src:
        df = pd.read_sql(
            "SELECT symbol, ts, price FROM ticks WHERE ts >= ? AND ts < ?",
            src,
            params=(lo, hi),
        )
    df["at"] = pd.to_datetime(df["ts"], unit="ms", utc=True)
    df = df.sort_values(["symbol", "ts"], kind="stable").set_index("at")
    grouped = df.groupby("symbol").resample("1h")["price"]
    bars = grouped.ohlc()
    bars["mean"] = grouped.mean()
    bars["samples"] = grouped.count()
    bars = bars.dropna().reset_index()
    rows = [
        (r.symbol, r.at.to_pydatetime(), r.open, r.high, r.low, r.close, r.mean, int(r.samples))
        for r in bars.itertuples(index=False)
    ]
    with psycopg.connect(uri) as conn, conn.cursor() as cur:
        cur.execute(DDL)
        cur.executemany(UPSERT, rows)
    return time.perf_counter() - started


def main() -> None:
    sqlite_path, uri, lo, hi = sys.argv[1:5]
    with psycopg.connect(uri) as conn:
        conn.execute(DDL)
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        with psycopg.connect(uri) as conn:
            conn.execute("TRUNCATE baseline_hourly")
        print(once(sqlite_path, uri, int(lo), int(hi)), flush=True)


if __name__ == "__main__":
    main()
