"""Part 2: the rollup from SQLite staging to committed PostgreSQL rows, against DuckDB.

One hour of 3,000 symbols at 5 s (2.16 M ticks), all in one PostgreSQL server, each database
emptied before every run:

- in-process: ``run_rollup`` (read through ADBC, ``group_by_dynamic``, ADBC ingest + upsert +
  ledger + daily bars in one transaction, retention), alternating with DuckDB's one statement
  (``INSERT INTO pg.duckdb_hourly SELECT ... FROM s.ticks GROUP BY symbol, ts // 3600000``, run
  by a resident worker with both extensions loaded and both databases attached before the timer)
  and with the pandas ``resample().ohlc()`` + psycopg ``executemany`` baseline (resident worker
  too). Goals: ours / DuckDB <= 1.0, pandas / ours >= 10.
- whole process: ``etl rollup`` as a child, spawn to exit, alternating with a child that imports
  DuckDB, loads the extensions, attaches, runs the statement and exits. Goal: ratio <= 1.3.
- a 24-hour backlog (about 52 M ticks) rolled up by an ``etl rollup`` child: wall time and peak
  RSS (``os.wait4``). Goals: <= 15 s, <= 1 GiB.

Where the time goes: our read / compute / write stages timed one by one (internal APIs, so best
effort: skipped with a note if they changed), and DuckDB's aggregate alone (into its own memory).
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import adbc_driver_postgresql.dbapi as pg
import polars as pl

from bench.common import (
    Worker,
    child_env,
    fresh_database,
    postgres,
    ratio_line,
    spawn_wait,
    spread,
    stage_hours,
    timed,
)
from bench.duckdb_rollup import TARGET, TARGET_DDL
from etl.config import load_settings
from etl.hours import HOUR_MS, hour_floor
from etl.jobs.rollup import run_rollup

SYMBOLS = 3000
BACKLOG_HOURS = 24
OURS_TABLES = "metrics_hourly, rollup_runs, metrics_daily"


def _sql(uri: str, sql: str) -> None:
    with pg.connect(uri, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(sql)


def _etl_argv() -> list[str]:
    """``etl rollup`` as a user runs it: the venv's console script when there is one."""
    script = shutil.which("etl", path=str(Path(sys.executable).parent))
    return [script, "rollup"] if script else [sys.executable, "-m", "etl", "rollup"]


def run(runs: int = 5, backlog: bool = True) -> dict[str, Any]:
    r: dict[str, Any] = {"runs": runs}
    work = Path(tempfile.mkdtemp(prefix="etl-bench-rollup-", dir="/tmp"))
    try:
        with postgres() as admin_uri:
            uri = fresh_database(admin_uri, "bench_ours")
            duck_uri = fresh_database(admin_uri, "bench_duckdb")
            _sql(duck_uri, TARGET_DDL)
            base_uri = fresh_database(admin_uri, "bench_baseline").replace(
                "postgresql://postgres:@/", "postgresql://postgres@/"
            )
            hour = hour_floor(int(time.time() * 1000)) - 3 * HOUR_MS
            path = work / "hour.sqlite3"
            r["ticks"] = stage_hours(path, SYMBOLS, hour, 1)
            copy = work / "baseline.sqlite3"  # stdlib sqlite3 reads its own copy
            shutil.copy(path, copy)
            settings = replace(
                load_settings(env={}),
                data_dir=work,
                sqlite_path=path,
                pg_dsn=uri,
                raw_retention_h=8e4,
            )
            r.update(_in_process(work, settings, path, copy, duck_uri, base_uri, hour, runs))
            r.update(_stages(settings, hour, runs))
            r.update(_whole_process(work, path, uri, duck_uri, runs))
            if backlog:
                r.update(_backlog(work, admin_uri, runs))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return r


def _in_process(
    work: Path,
    settings: Any,
    path: Path,
    copy: Path,
    duck_uri: str,
    base_uri: str,
    hour: int,
    runs: int,
) -> dict[str, list[float]]:
    uri = settings.pg_dsn
    ours: list[float] = []
    duck: list[float] = []
    base: list[float] = []

    def one_ours() -> float:
        _sql(uri, f"TRUNCATE {OURS_TABLES}")
        started = time.perf_counter()
        summary = run_rollup(settings)
        took = time.perf_counter() - started
        assert summary.bars == SYMBOLS, summary
        return took

    def one_duck() -> float:
        _sql(duck_uri, f"TRUNCATE {TARGET}")
        return worker.ask("insert")

    run_rollup(settings)  # the schema, before the first TRUNCATE
    with (
        Worker("bench.duckdb_rollup", "--serve", str(path), duck_uri, cwd=work) as worker,
        Worker(
            "bench.baseline_rollup", str(copy), base_uri, str(hour), str(hour + HOUR_MS), cwd=work
        ) as baseline,
    ):
        one_ours(), one_duck(), baseline.ask("run")  # warm up: schema, caches, lazy imports
        for _ in range(runs):
            ours.append(one_ours())
            duck.append(one_duck())
            base.append(baseline.ask("run"))
        aggregate = [worker.ask("aggregate") for _ in range(runs)]
    with pg.connect(duck_uri) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {TARGET}")
        assert cur.fetchone()[0] == SYMBOLS  # type: ignore[index]
    return {"ours": ours, "duck": duck, "pandas": base, "duck_aggregate": aggregate}


def _stages(settings: Any, hour: int, runs: int) -> dict[str, Any]:
    """Our stages one at a time. Internal APIs that others are reworking: a change there costs
    this breakdown only, never the figures above."""
    try:
        from etl.bars import hour_ledger, hourly_bars
        from etl.staging.store import Staging
        from etl.warehouse.connect import connect
        from etl.warehouse.store import Warehouse

        with Staging(settings.sqlite_path) as st:
            read = timed(lambda: st.read_hours([hour]), runs)
            window = st.read_hours([hour])
            staging_id, staging_name = st.id, st.name

        def bars_of() -> Any:
            return hourly_bars(window.ticks, ordered=True, symbols=window.symbols)

        compute = timed(bars_of, runs)
        bars = bars_of().with_columns(staging_id=pl.lit(staging_id))
        ledger = hour_ledger(bars, bars["bucket"][0], max_seq=window.upto).with_columns(
            staging_id=pl.lit(staging_id), staging_name=pl.lit(staging_name)
        )
        wh = Warehouse(connect(settings.pg_dsn))

        def write() -> None:
            _sql(settings.pg_dsn, f"TRUNCATE {OURS_TABLES}")
            wh.write_bars(bars, ledger)

        try:
            write_s = timed(write, runs)
        finally:
            wh.close()
    except Exception as exc:  # a changed internal API: reported, not raised
        return {"stages_error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
    return {"read": read, "compute": compute, "write": write_s}


def _whole_process(
    work: Path, path: Path, uri: str, duck_uri: str, runs: int
) -> dict[str, list[float]]:
    env = child_env(
        ETL_SQLITE_PATH=str(path),
        ETL_DATA_DIR=str(work),
        ETL_PG_DSN=uri,
        ETL_RAW_RETENTION_H="80000",
    )
    duck_argv = [sys.executable, "-m", "bench.duckdb_rollup", str(path), duck_uri]
    ours_argv = _etl_argv()
    keys = ("proc_ours", "proc_duck", "proc_noop", "rss_ours", "rss_duck")
    out: dict[str, list[float]] = {k: [] for k in keys}
    for i in range(runs + 1):  # the first round warms up
        _sql(uri, f"TRUNCATE {OURS_TABLES}")
        ours = spawn_wait(ours_argv, work, env)
        _sql(duck_uri, f"TRUNCATE {TARGET}")
        duck = spawn_wait(duck_argv, work, env)
        # The same command again finds the hour committed: the process's fixed cost.
        noop = spawn_wait(ours_argv, work, env)
        if i:
            out["proc_ours"].append(ours[0])
            out["rss_ours"].append(ours[1])
            out["proc_duck"].append(duck[0])
            out["rss_duck"].append(duck[1])
            out["proc_noop"].append(noop[0])
    return out


def _backlog(work: Path, admin_uri: str, runs: int) -> dict[str, Any]:
    path = work / "backlog.sqlite3"
    first = hour_floor(int(time.time() * 1000)) - (BACKLOG_HOURS + 2) * HOUR_MS
    started = time.perf_counter()
    ticks = stage_hours(path, SYMBOLS, first, BACKLOG_HOURS)
    staged_s = time.perf_counter() - started
    walls: list[float] = []
    rss: list[float] = []
    for _ in range(runs):
        env = child_env(
            ETL_SQLITE_PATH=str(path),
            ETL_DATA_DIR=str(work),
            ETL_PG_DSN=fresh_database(
                admin_uri, "bench_backlog"
            ),  # a new one each run, as first seen
            ETL_RAW_RETENTION_H="80000",  # nothing purged: every run reads the same file
        )
        wall, peak = spawn_wait(_etl_argv(), work, env)
        walls.append(wall)
        rss.append(peak)
    return {
        "backlog_ticks": ticks,
        "backlog_stage_s": staged_s,
        "backlog": walls,
        "backlog_rss": rss,
    }


def report(r: dict[str, Any]) -> list[str]:
    lines = [
        f"part 2: rollup, {SYMBOLS:,} symbols x 1 hour at 5 s = {r['ticks'] / 1e6:.2f} M ticks, "
        f"SQLite -> committed PostgreSQL; {r['runs']} alternating runs (min / median / max)",
        "  ratios (of the medians; pairs: the ratios of the alternating pairs)",
        ratio_line("in-process: ours / DuckDB", r["ours"], r["duck"], "<= 1.0", lambda x: x <= 1.0),
        ratio_line(
            "in-process: pandas+psycopg / ours", r["pandas"], r["ours"], ">= 10", lambda x: x >= 10
        ),
        ratio_line(
            "whole process: etl rollup / DuckDB",
            r["proc_ours"],
            r["proc_duck"],
            "<= 1.3",
            lambda x: x <= 1.3,
        ),
        "  absolute",
        f"  {'in-process ours (run_rollup)':<40} {spread(r['ours'])}",
        f"  {'in-process DuckDB INSERT ... SELECT':<40} {spread(r['duck'])}",
        f"  {'in-process pandas + psycopg':<40} {spread(r['pandas'])}",
        f"  {'process: etl rollup':<40} {spread(r['proc_ours'])}, "
        f"peak RSS {spread(r['rss_ours'], 'MiB', digits=0)}",
        f"  {'process: python -m bench.duckdb_rollup':<40} {spread(r['proc_duck'])}, "
        f"peak RSS {spread(r['rss_duck'], 'MiB', digits=0)}",
        "  where the time goes",
    ]
    if "stages_error" in r:
        lines.append(f"  {'ours, stage by stage':<40} not measured ({r['stages_error']})")
    else:
        lines += [
            f"  {'ours: read (ADBC SQLite -> Polars)':<40} {spread(r['read'])}",
            f"  {'ours: compute (hourly_bars)':<40} {spread(r['compute'])}",
            f"  {'ours: write (ingest+upsert+ledger+daily)':<40} {spread(r['write'])}",
        ]
    lines += [
        f"  {'DuckDB: aggregate alone (no write)':<40} {spread(r['duck_aggregate'])}",
        f"  {'process: etl rollup, nothing to do':<40} {spread(r['proc_noop'])}",
    ]
    if "backlog" in r:
        wall, rss = statistics.median(r["backlog"]), max(r["backlog_rss"])
        lines += [
            f"  24-hour backlog: {r['backlog_ticks'] / 1e6:.1f} M ticks (staged once in "
            f"{r['backlog_stage_s']:.0f} s), `etl rollup` child on fresh tables, "
            f"{len(r['backlog'])} runs",
            f"  {'wall time':<40} {spread(r['backlog'], digits=1)}   goal <= 15 s (median): "
            f"{'met' if wall <= 15 else 'MISSED'}",
            f"  {'peak RSS':<40} {spread(r['backlog_rss'], 'MiB', digits=0)}   goal <= 1024 MiB "
            f"(max): {'met' if rss <= 1024 else 'MISSED'}",
        ]
    return lines
