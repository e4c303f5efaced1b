"""Trust under real operation: what broke when the pipeline was run for real and attacked, each
kept as a test. Real PostgreSQL, real SQLite files, real processes and signals; outside tools are
played by a child process using Python's own sqlite3 module.

Sections follow the promises in the README's "Guarantees": staging identity and many files per
warehouse, one collector per file, no hangs, bad staged rows quarantined, a corrupt file refused,
one-line errors, values refused, deterministic daily bars, a ban that survives a crash.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import adbc_driver_postgresql.dbapi as pg
import pytest

from etl.config import Settings
from etl.hours import HOUR_MS, hour_floor
from etl.rollup_job import run_rollup
from etl.staging import Staging
from etl.warehouse import LEGACY_STAGING
from tests.conftest import etl_env, run_etl
from tests.pgutil import query, seed_ticks

LEGACY = Path(__file__).resolve().parent / "fixtures" / "legacy"
SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]


@pytest.fixture
def pgs(settings: Settings, pg_dsn: str) -> Settings:
    return replace(settings, pg_dsn=pg_dsn)


def outside_tool(
    path: Path, *statements: str, params: list | None = None
) -> subprocess.CompletedProcess:
    """Another program writing the staging file with Python's own sqlite3 module (in its own
    process: stdlib sqlite3 and ADBC must not share a file in one process)."""
    script = (
        "import json, sqlite3, sys\n"
        "conn = sqlite3.connect(sys.argv[1])\n"
        "for sql in json.loads(sys.argv[2]):\n"
        "    conn.execute(sql)\n"
        "conn.commit()\n"
    )
    return subprocess.run(
        [sys.executable, "-c", script, str(path), json.dumps(list(statements))],
        capture_output=True,
        text=True,
    )


def one_line(done: subprocess.CompletedProcess) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    return lines[0]


# -- 1. staging identity: many staging files, one warehouse ------------------------------------


def test_two_staging_files_on_one_warehouse_each_roll_up_and_purge_only_their_own(
    pgs: Settings, tmp_path: Path
) -> None:
    """Was: B's hours counted as committed by A's ledger rows, B's ticks purged with no bar."""
    now_hour = hour_floor(int(time.time() * 1000))
    a = replace(pgs, data_dir=tmp_path / "a", sqlite_path=None, raw_retention_h=1.0)
    b = replace(pgs, data_dir=tmp_path / "b", sqlite_path=None, raw_retention_h=1.0)
    seed_ticks(a.staging_path, ["BTCUSDT", "ETHUSDT"], now_hour - 3 * HOUR_MS, polls=2 * 720)
    seed_ticks(b.staging_path, ["SOLUSDT", "XRPUSDT"], now_hour - 3 * HOUR_MS, polls=2 * 720)
    first = run_rollup(a)
    with Staging(b.staging_path) as st:
        assert st.count() == 2 * 720 * 2  # A's ledger and purge never touch B's file
    second = run_rollup(b)
    assert (first.hours, second.hours) == (2, 2)
    assert second.ticks == 2 * 720 * 2 and second.bars == 4
    bars = query(
        pgs.pg_dsn, "SELECT symbol, count(*) AS n FROM metrics_hourly GROUP BY 1 ORDER BY 1"
    )  # type: ignore[arg-type]
    assert bars.rows() == [("BTCUSDT", 2), ("ETHUSDT", 2), ("SOLUSDT", 2), ("XRPUSDT", 2)]
    ledger = query(
        pgs.pg_dsn, "SELECT staging_name, count(*) AS n FROM rollup_runs GROUP BY 1 ORDER BY 1"
    )  # type: ignore[arg-type]
    assert ledger["n"].to_list() == [2, 2]  # one row per (staging file, hour)
    assert second.purged == 2 * 720 * 2 - 1  # B's own ledger: purged (the newest row stays)


def test_staging_files_carry_a_stable_id_and_a_settable_name(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite3"
    with Staging(path) as st:
        first = (st.id, st.name)
    with Staging(path, name="collector-eu-1") as st:
        assert st.id == first[0] and st.name == "collector-eu-1"
    with Staging(path) as st:
        assert (st.id, st.name) == (first[0], "collector-eu-1")  # the name is kept
    assert re.fullmatch(r"[0-9a-f-]{36}", first[0]) and str(path.resolve()) in first[1]


def test_a_bar_from_two_files_is_never_mixed_the_better_wins_and_the_loser_is_counted(
    pgs: Settings, make_db: Callable[[], str], tmp_path: Path
) -> None:
    now_hour = hour_floor(int(time.time() * 1000))
    hour = now_hour - 2 * HOUR_MS
    full = replace(pgs, data_dir=tmp_path / "full", sqlite_path=None, interval_s=5.0)
    thin = replace(pgs, data_dir=tmp_path / "thin", sqlite_path=None, interval_s=5.0)
    seed_ticks(full.staging_path, ["BTCUSDT"], hour, polls=720, seed=1)
    seed_ticks(thin.staging_path, ["BTCUSDT"], hour, polls=100, seed=2)
    results = {}
    for order in ("thin first", "full first"):
        dsn = make_db()
        runs = [thin, full] if order == "thin first" else [full, thin]
        results[order] = [run_rollup(replace(s, pg_dsn=dsn)) for s in runs]
        bars = query(dsn, "SELECT samples FROM metrics_hourly")
        assert bars["samples"].to_list() == [720], order  # whole, never a mix
        lost = dict(query(dsn, "SELECT staging_name, bars_lost FROM rollup_runs").rows())
        assert {name.rsplit("/", 2)[-2]: n for name, n in lost.items()} == {"full": 0, "thin": 1}
    thin_then_full = results["thin first"][1]
    assert thin_then_full.displaced == 1 and thin_then_full.lost_to_other_files == 0
    full_then_thin = results["full first"][1]
    assert full_then_thin.lost_to_other_files == 1 and full_then_thin.bars == 0
    status = json.loads(run_etl(["status", "--json"], etl_env(replace(thin, pg_dsn=dsn))).stdout)
    assert status["warehouse"]["bars_lost_7d"] == 1
    assert any("lost to better bars" in p for p in status["problems"])


def test_the_losers_ticks_are_purged_only_against_its_own_ledger_row(
    pgs: Settings, tmp_path: Path
) -> None:
    now_hour = hour_floor(int(time.time() * 1000))
    hour = now_hour - 3 * HOUR_MS
    full = replace(pgs, data_dir=tmp_path / "full", sqlite_path=None, interval_s=5.0)
    thin = replace(pgs, data_dir=tmp_path / "thin", sqlite_path=None, interval_s=5.0)
    seed_ticks(full.staging_path, ["BTCUSDT"], hour, polls=720)
    seed_ticks(thin.staging_path, ["BTCUSDT"], hour, polls=100)
    run_rollup(replace(full, raw_retention_h=1.0))  # full's hour is committed and purged
    with Staging(thin.staging_path) as st:
        assert st.count() == 100  # nothing of thin's went with full's purge
    result = run_rollup(replace(thin, raw_retention_h=1.0))
    assert result.hours == 1 and result.lost_to_other_files == 1
    assert result.purged == 99  # now thin has its own ledger row (the newest row always stays)


def test_demo_and_seed_demo_never_write_into_the_configured_warehouse(
    pg_dsn: str, open_dir: Path
) -> None:
    tmp_path = open_dir
    env = etl_env(None, ETL_DATA_DIR=str(tmp_path / "data"), ETL_PG_DSN=pg_dsn)
    done = run_etl(["demo", "--polls", "2"], env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "etl --data-dir" in done.stdout and "status" in done.stdout  # says where to look
    seeded = run_etl(["seed-demo", "--days", "1", "--interval-s", "60"], env, cwd=tmp_path)
    assert seeded.returncode == 0, seeded.stderr
    tables = query(pg_dsn, "SELECT count(*) AS n FROM pg_tables WHERE tablename = 'metrics_hourly'")
    assert tables["n"][0] == 0  # the configured warehouse was never touched
    assert (tmp_path / "data" / "demo" / "pg" / "PG_VERSION").exists()
    assert (tmp_path / "data" / "demo" / "ticks.sqlite3").exists()
    assert not (tmp_path / "data" / "ticks.sqlite3").exists()


def _restore(dsn: str, dump: Path) -> None:
    """Load a plain pg_dump (psql meta-commands aside) into an empty database."""
    script = "\n".join(line for line in dump.read_text().splitlines() if not line.startswith("\\"))
    with pg.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
        cur.executescript(script)


def _rows(dsn: str) -> dict[str, list[tuple]]:
    return {
        table: query(dsn, f"SELECT * FROM {table} ORDER BY 1, 2").rows()
        for table in ("metrics_hourly", "metrics_daily", "rollup_runs")
    }


def test_a_warehouse_of_the_previous_release_is_migrated_once_and_no_row_changes(
    pg_dsn: str, settings: Settings
) -> None:
    _restore(pg_dsn, LEGACY / "warehouse_v0_1.sql")
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
        .drop([c for c in ("staging_id", "interval_s") if t == "metrics_hourly"])
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


def test_a_staging_file_and_warehouse_of_the_previous_release_keep_every_tick_and_bar(
    pg_dsn: str, settings: Settings, tmp_path: Path
) -> None:
    _restore(pg_dsn, LEGACY / "warehouse_v0_1.sql")
    path = tmp_path / "ticks.sqlite3"
    shutil.copy(LEGACY / "staging_v0_1.sqlite3", path)
    dump = outside_tool(path)  # (a no-op: just proves the old file opens with stdlib sqlite3)
    assert dump.returncode == 0
    old_rows = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, sqlite3, sys; c = sqlite3.connect(sys.argv[1]); print(json.dumps("
            "[[r, s if isinstance(s, str) else repr(s), t, p if isinstance(p, float) and p == p "
            "and abs(p) != float('inf') else repr(p)] for r, s, t, p in "
            "c.execute('SELECT rowid, symbol, ts, price FROM ticks ORDER BY rowid')]))",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    legacy_ticks = json.loads(old_rows.stdout)
    bars_before = query(pg_dsn, "SELECT * FROM metrics_hourly ORDER BY symbol, bucket")
    upgraded = replace(
        settings,
        symbols=tuple(SYMBOLS),
        interval_s=60.0,
        pg_dsn=pg_dsn,
        sqlite_path=path,
        raw_retention_h=1e5,
    )
    result = run_rollup(upgraded)
    assert result.lost_to_other_files == 0 and result.displaced == 0  # the same bars again
    with Staging(path) as st:
        assert st.upgraded_from == 1 or st.meta().get("upgraded_from") == "1"
        kept = st.read_window(0, 2**62).sort("seq")
        rejected = st.rejected()
    good = [
        t
        for t in legacy_ticks
        if isinstance(t[3], float) and t[3] > 0 and not t[1].startswith("b'")
    ]
    assert [(r[0], r[1], r[2], r[3]) for r in good] == [
        (s, sym, ts, p) for s, sym, ts, p in kept.rows()
    ]  # every tick, with its id
    assert rejected["rows"].sum() == len(legacy_ticks) - len(good) == 5
    bars_after = query(
        pg_dsn, "SELECT * FROM metrics_hourly WHERE staging_id IS NULL ORDER BY symbol, bucket"
    )
    assert (
        bars_after.drop("staging_id", "interval_s", "updated_at").rows()
        == bars_before.drop("updated_at").rows()
    )  # every old bar, untouched
    new = query(pg_dsn, "SELECT count(*) AS n FROM metrics_hourly WHERE staging_id IS NOT NULL")
    assert new["n"][0] == 3 * 2  # the hour staged after the last rollup, and the later one
    legacy_runs = query(
        pg_dsn,
        "SELECT count(*) AS n FROM rollup_runs WHERE staging_id = $1::uuid",
        [LEGACY_STAGING],
    )
    assert legacy_runs["n"][0] == 5  # the old ledger stays, and no file purges against it
    purged = run_rollup(replace(upgraded, raw_retention_h=1.0))
    with Staging(path) as st:
        assert st.rejected_count() == 5  # the purge never deletes quarantined rows
    assert purged.purged > 0
