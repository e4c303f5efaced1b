"""Part 2: the rollup from SQLite staging to committed PostgreSQL rows.

- one hour of 3,000 symbols at 5 s (2.16 M ticks): ``run_rollup`` end to end (read through ADBC
  in parallel slices, ``group_by_dynamic``, ADBC ingest + upsert + ledger in one transaction,
  daily refresh, retention), median of N runs on emptied tables; beside it the baseline (pandas
  ``groupby().resample("1h").ohlc()`` + psycopg ``executemany``) on the same data, same server.
- a 24-hour backlog (about 52 M ticks) rolled up by ``etl rollup`` in a child process: wall time
  and the child's peak RSS.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import adbc_driver_postgresql.dbapi as pg
import polars as pl

from bench.common import median_ms, postgres, row, stage_hours, timed
from etl.config import load_settings
from etl.hours import HOUR_MS, hour_floor
from etl.rollup import hour_ledger, hourly_bars
from etl.rollup_job import run_rollup
from etl.staging import Staging
from etl.warehouse import Warehouse, connect

SYMBOLS = 3000


def _database(admin_uri: str, name: str) -> str:
    with pg.connect(admin_uri, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        cur.execute(f"CREATE DATABASE {name}")
    return admin_uri.replace("/etl?", f"/{name}?")


def _truncate(uri: str) -> None:
    with pg.connect(uri, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("TRUNCATE metrics_hourly, rollup_runs, metrics_daily")


def run(runs: int = 3, backlog: bool = True) -> dict[str, float]:
    results: dict[str, float] = {}
    work = Path(tempfile.mkdtemp(prefix="etl-bench-rollup-", dir="/tmp"))
    try:
        with postgres() as admin_uri:
            uri = _database(admin_uri, "bench_ours")
            hour = hour_floor(int(time.time() * 1000)) - 3 * HOUR_MS
            path = work / "hour.sqlite3"
            results["ticks"] = stage_hours(path, SYMBOLS, hour, 1)
            settings = replace(
                load_settings(env={}),
                data_dir=work,
                sqlite_path=path,
                pg_dsn=uri,
                raw_retention_h=1e6,
            )
            run_rollup(settings)  # warm up: schema, partitions, caches

            def ours() -> None:
                _truncate(uri)
                started = time.perf_counter()
                summary = run_rollup(settings)
                assert summary.bars == SYMBOLS
                ours_times.append(time.perf_counter() - started)

            ours_times: list[float] = []
            timed(ours, runs)
            results["hour_s"] = median_ms(ours_times) / 1000

            with Staging(path) as st:  # where the time goes, one stage at a time
                results["read_s"] = median_ms(timed(lambda: st.read_hours([hour]), runs)) / 1000
                window = st.read_hours([hour])
                staging_id, staging_name = st.id, st.name

            def compute() -> pl.DataFrame:
                return hourly_bars(window.ticks, ordered=True, symbols=window.symbols)

            results["compute_s"] = median_ms(timed(compute, runs)) / 1000
            bars = compute().with_columns(staging_id=pl.lit(staging_id))
            runs_frame = hour_ledger(bars, bars["bucket"][0], max_seq=window.upto).with_columns(
                staging_id=pl.lit(staging_id), staging_name=pl.lit(staging_name)
            )
            wh = Warehouse(connect(uri))

            def write() -> None:
                _truncate(uri)
                wh.write_bars(bars, runs_frame)

            results["write_s"] = median_ms(timed(write, runs)) / 1000
            wh.close()

            base_uri = _database(admin_uri, "bench_baseline").replace(
                "postgresql://postgres:@/", "postgresql://postgres@/"
            )
            copy = work / "baseline.sqlite3"
            shutil.copy(path, copy)
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "bench.baseline_rollup",
                    str(copy),
                    base_uri,
                    str(hour),
                    str(hour + HOUR_MS),
                    str(runs),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            results["hour_s_baseline"] = median_ms(json.loads(out.stdout)) / 1000

            if backlog:
                results.update(_backlog(work, admin_uri))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results


def _backlog(work: Path, admin_uri: str) -> dict[str, float]:
    uri = _database(admin_uri, "bench_backlog")
    path = work / "backlog.sqlite3"
    first = hour_floor(int(time.time() * 1000)) - 26 * HOUR_MS
    started = time.perf_counter()
    ticks = stage_hours(path, SYMBOLS, first, 24)
    staged_s = time.perf_counter() - started
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_")}
    env.update(
        ETL_SQLITE_PATH=str(path),
        ETL_DATA_DIR=str(work),
        ETL_PG_DSN=uri,
        ETL_RAW_RETENTION_H="1000000",
    )
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "etl", "rollup"], env=env, stdout=subprocess.DEVNULL
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    assert os.waitstatus_to_exitcode(status) == 0
    return {
        "backlog_ticks": ticks,
        "backlog_stage_s": staged_s,
        "backlog_s": wall,
        "backlog_rss_mib": usage.ru_maxrss / 1024,  # Linux reports KiB
    }


def report(r: dict[str, float]) -> list[str]:
    lines = [
        f"part 2: rollup, {SYMBOLS:,} symbols x 1 hour at 5 s = {r['ticks'] / 1e6:.2f} M ticks, SQLite -> committed PostgreSQL",
        row("", "ours", "baseline", "ratio"),
        row(
            "median hour, staging -> committed rows",
            f"{r['hour_s']:.3f} s",
            f"{r['hour_s_baseline']:.3f} s",
            f"{r['hour_s_baseline'] / r['hour_s']:.1f}x",
        ),
        f"  stages (medians): read {r['read_s']:.3f} s, compute {r['compute_s']:.3f} s, "
        f"ingest+upsert+ledger {r['write_s']:.3f} s",
        f"  targets: <= 0.8 s: {'met' if r['hour_s'] <= 0.8 else 'MISSED'}; "
        f">= 8x baseline: {'met' if r['hour_s_baseline'] / r['hour_s'] >= 8 else 'MISSED'}",
    ]
    if "backlog_s" in r:
        lines += [
            f"  24-hour backlog: {r['backlog_ticks'] / 1e6:.1f} M ticks (staged in {r['backlog_stage_s']:.0f} s) "
            f"rolled up by `etl rollup` in {r['backlog_s']:.1f} s, peak RSS {r['backlog_rss_mib']:.0f} MiB "
            f"(target <= 1536 MiB: {'met' if r['backlog_rss_mib'] <= 1536 else 'MISSED'})",
        ]
    return lines
