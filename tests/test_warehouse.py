"""The embedded PostgreSQL: no server left behind after a clean exit, a SIGTERM, or a pid that
died without saying goodbye."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import adbc_driver_postgresql.dbapi as pg
import polars as pl
import psutil
import pytest

from etl.bars import UTC_US
from etl.config import Settings
from etl.errors import ConfigError
from etl.hours import HOUR_MS, hour_floor
from etl.warehouse.embedded import embedded_server, prune_stale_pids
from etl.warehouse.store import LEGACY_STAGING, RUN_LOCK, open_warehouse
from tests.conftest import etl_env, run_etl
from tests.pgutil import ADDED_HOURLY_COLUMNS, LEGACY, query, restore_dump, seed_ticks

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
NEW = ["015_symbols.sql", "016_coverage_daily.sql"]  # made after the newest dump's release


@pytest.fixture
def data_root() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="etl-test-embedded-", dir="/tmp"))
    base.chmod(0o755)
    yield base / "data"
    for proc in servers(base / "data" / "pg"):
        proc.kill()
    shutil.rmtree(base, ignore_errors=True)


def servers(pgdata: Path) -> list[psutil.Process]:
    out = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["name"] == "postgres" and str(pgdata) in " ".join(cmdline):
            out.append(proc)
    return out


def gone(pgdata: Path, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while servers(pgdata):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_a_clean_exit_leaves_no_server_behind(data_root: Path) -> None:
    done = run_etl(["db", "init"], etl_env(None, ETL_DATA_DIR=str(data_root)))
    assert done.returncode == 0, done.stderr
    assert "embedded" in done.stdout
    assert (data_root / "pg" / "PG_VERSION").exists()
    assert gone(data_root / "pg")


@pytest.mark.slow
def test_a_dead_pid_in_the_handle_list_is_pruned(data_root: Path) -> None:
    env = etl_env(None, ETL_DATA_DIR=str(data_root))
    assert run_etl(["db", "init"], env).returncode == 0
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    handles = data_root / "pg" / ".handle_pids.json"
    handles.write_text(json.dumps([int(dead.stdout)]))  # as a SIGKILLed process leaves it
    assert run_etl(["db", "init"], env).returncode == 0
    assert gone(data_root / "pg")  # the stale pid did not keep the server alive
    assert json.loads(handles.read_text()) == []


def test_prune_keeps_live_pids(tmp_path: Path) -> None:
    (tmp_path / ".handle_pids.json").write_text(json.dumps([os.getpid(), 2**22 + 12345]))
    assert prune_stale_pids(tmp_path) == [2**22 + 12345]
    assert json.loads((tmp_path / ".handle_pids.json").read_text()) == [os.getpid()]


@pytest.mark.slow
def test_sigterm_releases_the_handle_and_the_last_user_stops_the_server(data_root: Path) -> None:
    pgdata = data_root / "pg"
    env = etl_env(None, ETL_DATA_DIR=str(data_root), PYTHONUNBUFFERED="1")
    assert run_etl(["db", "init"], env).returncode == 0
    now_hour = int(time.time() * 1000) // 3_600_000 * 3_600_000
    seed_ticks(data_root / "ticks.sqlite3", ["BTCUSDT"], now_hour - 3_600_000, polls=10)
    with (
        embedded_server(pgdata) as uri,
        pg.connect(uri, autocommit=True) as conn,
        conn.cursor() as cur,
    ):
        cur.execute("SELECT pg_advisory_lock($1)", parameters=[RUN_LOCK])  # a rollup "running"
        cur.fetchall()
        child = subprocess.Popen(
            [sys.executable, "-m", "etl", "rollup"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        line = child.stdout.readline()  # type: ignore[union-attr]
        assert "another rollup is running" in line, line
        handles = json.loads((pgdata / ".handle_pids.json").read_text())
        assert child.pid in handles
        child.send_signal(signal.SIGTERM)
        out, _ = child.communicate(timeout=30)
        assert child.returncode != 0 and "Traceback" not in out
        assert child.pid not in json.loads((pgdata / ".handle_pids.json").read_text())
        assert servers(pgdata)  # we still use it: it must still run
    assert gone(pgdata)  # and once we leave, nobody does


def test_a_data_dir_others_cannot_enter_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root runs the server as another user")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)
    with pytest.raises(ConfigError, match="cannot enter"), embedded_server(locked / "pg"):
        pass
    assert oct(locked.stat().st_mode & 0o777) == "0o700"  # and its permissions are untouched


def test_a_warehouse_of_the_previous_release_is_migrated_once_and_no_row_changes(
    pg_dsn: str, settings: Settings
) -> None:
    restore_dump(pg_dsn, LEGACY / "warehouse_v0_1.sql.gz")
    before = {
        t: query(pg_dsn, f"SELECT * FROM {t} ORDER BY 1, 2").rows()
        for t in ("metrics_hourly", "metrics_daily", "backfill_log", "reconciliation")
    }
    runs_before = query(pg_dsn, "SELECT * FROM rollup_runs ORDER BY hour").rows()
    env = etl_env(replace(settings, pg_dsn=pg_dsn))
    first = run_etl(["db", "init"], env)
    assert first.returncode == 0, first.stderr
    assert "010_staging_identity.sql" in first.stdout
    again = run_etl(["db", "init"], env)
    assert "applied nothing new" in again.stdout  # each file once
    applied = query(pg_dsn, "SELECT name, checksum FROM etl_migrations ORDER BY name")
    names = applied["name"].to_list()
    assert names == sorted(p.name for p in (Path(__file__).parent.parent / "sql").glob("*.sql"))
    assert all(len(c) == 64 for c in applied["checksum"])
    after = {
        t: query(pg_dsn, f"SELECT * FROM {t} ORDER BY 1, 2")
        .drop([c for c in (*ADDED_HOURLY_COLUMNS,) if t == "metrics_hourly"])
        .rows()
        for t in before
    }
    assert after == before  # no row changed
    runs = query(
        pg_dsn, "SELECT *, staging_id::text AS staging FROM rollup_runs ORDER BY hour"
    ).drop("staging_id")
    assert set(runs["staging"]) == {LEGACY_STAGING}
    assert runs.drop("staging", "staging_name", "bars_lost").rows() == runs_before
    for function in ("etl_bar_replaces", "etl_hourly_partitions", "etl_bar_coverage"):
        assert (
            query(pg_dsn, f"SELECT count(*) AS n FROM pg_proc WHERE proname = '{function}'")["n"][0]
            == 1
        )


@pytest.mark.parametrize(
    ("dump", "pending"),
    [
        ("warehouse_v0_2.sql.gz", ["013_trade_bars.sql", "014_bar_rule_again.sql", *NEW]),
        ("warehouse_v0_3.sql.gz", ["014_bar_rule_again.sql", *NEW]),
    ],
)
@pytest.mark.slow
def test_a_warehouse_with_the_ledger_upgrades_and_rolls_up_on(
    pg_dsn: str, settings: Settings, dump: str, pending: list[str]
) -> None:
    """Warehouses made by the releases with the migrations ledger (before trade bars, and with
    them; how: tests/fixtures/legacy/make_warehouse.py). Was: on a warehouse from before trade
    bars, 011's new form was never applied, so every rollup and `etl status` failed with
    "function etl_bar_replaces(...) does not exist"."""
    restore_dump(pg_dsn, LEGACY / dump)
    tables = ("metrics_hourly", "metrics_daily", "rollup_runs", "etl_migrations")
    before = {t: query(pg_dsn, f"SELECT * FROM {t} ORDER BY 1, 2") for t in tables}
    env = etl_env(replace(settings, pg_dsn=pg_dsn, symbols=tuple(SYMBOLS), interval_s=60.0))
    first = run_etl(["db", "init"], env)
    assert first.returncode == 0, first.stderr
    assert all(name in first.stdout for name in pending), first.stdout
    assert "changed since it was applied" not in first.stdout  # 014 supersedes any old 011
    applied = query(pg_dsn, "SELECT name FROM etl_migrations ORDER BY name")["name"].to_list()
    assert applied == before["etl_migrations"]["name"].to_list() + pending
    for t in tables[:3]:  # no row changed (columns added since are left out)
        after = query(pg_dsn, f"SELECT * FROM {t} ORDER BY 1, 2")
        assert after.select(before[t].columns).rows() == before[t].rows(), t
    for function in ("etl_bar_coverage", "etl_bar_tier", "etl_bar_rank", "etl_bar_replaces"):
        n = query(pg_dsn, f"SELECT count(*) AS n FROM pg_proc WHERE proname = '{function}'")
        assert n["n"][0] == 1, function  # one definition: no ambiguous call
    looked = run_etl(["status", "--json"], env)
    assert looked.returncode in (0, 1) and not looked.stderr, looked.stderr  # 1: no staging file
    report = json.loads(looked.stdout)
    assert report["warehouse"]["coverage_24h"] and report["warehouse"]["changed_sql_files"] == []
    now_hour = hour_floor(int(time.time() * 1000))
    seed_ticks(settings.staging_path, SYMBOLS, now_hour - HOUR_MS, polls=60, interval_ms=60_000)
    rolled = run_etl(["rollup"], env)
    assert rolled.returncode == 0, rolled.stderr
    bars = query(pg_dsn, "SELECT count(*) AS n FROM metrics_hourly")["n"][0]
    assert bars == before["metrics_hourly"].height + len(SYMBOLS)


def test_a_statement_past_its_timeout_is_a_dependency_failure(pg_dsn: str) -> None:
    from etl.errors import DependencyError
    from etl.warehouse.connect import connect
    from etl.warehouse.store import Warehouse

    wh = Warehouse(connect(pg_dsn, statement_timeout_s=0.5), "test")
    try:
        started = time.monotonic()
        with pytest.raises(DependencyError, match="did not finish in time"):
            wh.execute("SELECT pg_sleep(5)")
        with pytest.raises(DependencyError, match="did not finish in time"):
            wh.query("SELECT pg_sleep(5)")
        assert time.monotonic() - started < 4
        assert wh.execute("SELECT 1") == [(1,)]  # the connection goes on
    finally:
        wh.close()


def test_the_rollups_pick_within_one_file_is_the_warehouse_rule(
    settings: Settings, pg_dsn: str
) -> None:
    """A file that held poll ticks and trades in one hour gives one bar: the one
    ``etl_bar_replaces`` would keep, over random pairs of thin, full, holed and complete bars."""
    with open_warehouse(replace(settings, pg_dsn=pg_dsn)) as wh:
        wh.migrate()
    rng = random.Random(5)
    cases = []
    for case in range(300):
        pair = []
        for source in rng.sample(["poll", "trade"], 2):
            samples = rng.choice([0, 1, 300, 647, 648, 700, 720, 3600])
            interval = rng.choice([None, 1.0, 5.0, 60.0]) if source == "poll" else None
            missing = rng.choice([None, 0, 0, 1, 7]) if source == "trade" else None
            pair.append((case, source, samples, interval, missing))
        cases.append(pair)

    def lit(v: object) -> str:
        return "NULL" if v is None else repr(v) if not isinstance(v, str) else f"'{v}'"

    rows = ", ".join(f"({a[0]}, {', '.join(lit(v) for v in (*a[1:], *b[1:]))})" for a, b in cases)
    decided = query(
        pg_dsn,
        "SELECT c AS case_no, "
        "etl_bar_replaces(bs, NULL, bn, bi, as_, NULL, an, ai, 5.0, 0.9, bm, am) AS b_over_a, "
        "etl_bar_replaces(as_, NULL, an, ai, bs, NULL, bn, bi, 5.0, 0.9, am, bm) AS a_over_b "
        f"FROM (VALUES {rows}) AS v(c, as_, an, ai, am, bs, bn, bi, bm) ORDER BY c",
    )
    base = datetime(2026, 1, 1, tzinfo=UTC)
    frame = pl.DataFrame(
        [
            {
                "symbol": "BTCUSDT",
                "bucket": base + timedelta(hours=case),
                "open": 1.0,
                "high": 1.0,
                "low": 1.0,
                "close": 1.0,
                "mean": 1.0,
                "samples": samples,
                "first_at": base + timedelta(hours=case),
                "last_at": base + timedelta(hours=case),
                "max_gap_s": 0.0,
                "source": source,
                "interval_s": interval,
                "ids_missing": missing,
            }
            for pair in cases
            for case, source, samples, interval, missing in pair
        ],
        schema_overrides={
            "bucket": UTC_US,
            "first_at": UTC_US,
            "last_at": UTC_US,
            "samples": pl.Int32,
            "interval_s": pl.Float64,
            "ids_missing": pl.Int32,
        },
    )
    with open_warehouse(replace(settings, pg_dsn=pg_dsn, interval_s=5.0)) as wh:
        wh.write_bars(frame)  # both bars of each hour in one write, as the rollup's
    kept = query(pg_dsn, "SELECT source FROM metrics_hourly ORDER BY bucket")
    assert kept.height == len(cases)  # one bar per hour
    compared = 0
    for (a, b), sql, ours in zip(
        cases, decided.iter_rows(named=True), kept.iter_rows(named=True), strict=True
    ):
        if sql["b_over_a"] == sql["a_over_b"]:
            continue  # a tie: the warehouse keeps whichever came first
        compared += 1
        want = b if sql["b_over_a"] else a
        assert ours["source"] == want[1], (a, b, sql)
    assert compared > 200
