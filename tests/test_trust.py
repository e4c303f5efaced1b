"""Trust under real operation: what broke when the pipeline was run for real and attacked, each
kept as a test. Real PostgreSQL, real SQLite files, real processes and signals; outside tools are
played by a child process using Python's own sqlite3 module.

Sections follow the promises in the README's "Guarantees": staging identity and many files per
warehouse, one collector per file, no hangs, bad staged rows quarantined, a corrupt file refused,
one-line errors, values refused, deterministic daily bars, a ban that survives a crash.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import adbc_driver_postgresql.dbapi as pg
import polars as pl
import pytest

from etl.config import Settings
from etl.hours import HOUR_MS, hour_floor
from etl.jobs.rollup import run_rollup
from etl.staging.store import Staging
from etl.warehouse.embedded import embedded_server
from etl.warehouse.store import LEGACY_STAGING, open_warehouse
from tests.conftest import etl_env, one_line, run_etl, start_etl, wait_for
from tests.pgutil import ADDED_HOURLY_COLUMNS, LEGACY, query, restore_dump, seed_ticks, snapshot
from tests.stagingutil import BAD_ROWS, outside_tool

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]


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
        assert st.ticks.count() == 2 * 720 * 2  # A's ledger and purge never touch B's file
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
        assert st.ticks.count() == 100  # nothing of thin's went with full's purge
    result = run_rollup(replace(thin, raw_retention_h=1.0))
    assert result.hours == 1 and result.lost_to_other_files == 1
    assert result.purged == 99  # now thin has its own ledger row (the newest row always stays)


@pytest.mark.slow
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


def test_a_staging_file_and_warehouse_of_the_previous_release_keep_every_tick_and_bar(
    pg_dsn: str, settings: Settings, tmp_path: Path
) -> None:
    restore_dump(pg_dsn, LEGACY / "warehouse_v0_1.sql.gz")
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
        kept = st.ticks.read_window(0, 2**62).sort("seq")
        rejected = st.quarantine.reasons()
    good = [
        t
        for t in legacy_ticks
        if isinstance(t[3], float) and t[3] > 0 and not t[1].startswith("b'")
    ]
    assert [(r[0], r[1], r[2], r[3]) for r in good] == [
        (s, sym, ts, p) for s, sym, ts, p in kept.rows()
    ]  # every tick, with its id
    assert sum(r["rows"] for r in rejected) == len(legacy_ticks) - len(good) == 5
    bars_after = query(
        pg_dsn, "SELECT * FROM metrics_hourly WHERE staging_id IS NULL ORDER BY symbol, bucket"
    )
    assert (
        bars_after.drop(*ADDED_HOURLY_COLUMNS, "updated_at").rows()
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
        assert st.quarantine.count() == 5  # the purge never deletes quarantined rows
    assert purged.purged > 0


# -- 2. one collector per staging file ----------------------------------------------------------


def test_a_second_collector_on_one_staging_file_exits_2_naming_the_holder(
    settings: Settings,
) -> None:
    """Was: both ran and both wrote, two ticks per slot and wrong means."""
    env = etl_env(settings)
    first = start_etl(["collect", "--no-rollup"], env)
    try:
        wait_for(first, "poll ok")
        second = run_etl(["collect", "--no-rollup", "--polls", "1"], env)
        assert second.returncode == 2
        line = one_line(second)
        assert str(settings.staging_path) in line and f"pid {first.pid}" in line
        # The same file under another name (a symlink) is the same file.
        link = settings.staging_path.parent.parent / "link.sqlite3"
        link.symlink_to(settings.staging_path.absolute())
        third = run_etl(
            ["collect", "--no-rollup", "--polls", "1"], {**env, "ETL_SQLITE_PATH": str(link)}
        )
        assert third.returncode == 2 and f"pid {first.pid}" in one_line(third)
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=20)
    with Staging(settings.staging_path) as st:
        per_slot = st.ticks.read_window(0, 2**62).group_by("symbol", "ts").len()
    assert per_slot["len"].max() == 1  # one writer: one tick per symbol and slot


@pytest.mark.slow
def test_a_hard_link_is_the_same_file_one_writer_and_two_names_are_refused(
    pgs: Settings,
) -> None:
    """Was: two collectors on one file reached through a hard link both ran, both reported 40
    ticks stored, and the file kept 42 of 80 (each name had its own write-ahead log)."""
    env = etl_env(pgs)
    first = start_etl(["collect", "--no-rollup"], env)
    other = pgs.staging_path.parent.parent / "other-name.sqlite3"
    try:
        wait_for(first, "poll ok")
        os.link(pgs.staging_path, other)
        second = run_etl(
            ["collect", "--no-rollup", "--polls", "1"], {**env, "ETL_SQLITE_PATH": str(other)}
        )
        assert second.returncode == 2
        line = one_line(second)
        assert f"pid {first.pid}" in line and str(other) in line, line
        wait_for(first, "poll ok", count=2)
    finally:
        first.send_signal(signal.SIGTERM)
        out, _ = first.communicate(timeout=20)
    stored = int(re.search(r"(\d+) ticks stored", out).group(1))  # type: ignore[union-attr]
    # With two names the file is refused, for a collector and a rollup alike, naming both.
    for args in (["collect", "--polls", "1"], ["rollup"]):
        done = run_etl(args, env)
        assert done.returncode == 2 and "2 names (hard links)" in one_line(done), done.stderr
    other.unlink()
    with Staging(pgs.staging_path) as st:
        assert st.ticks.count() == stored  # every tick the collector reported is in the file


def test_a_staging_file_renamed_under_a_running_collector_loses_nothing(
    settings: Settings,
) -> None:
    """Its write-ahead log keeps the old name: the collector folds it into the file and stops,
    so the file under its new name holds every tick the collector stored."""
    env = etl_env(settings)
    first = start_etl(["collect", "--no-rollup"], env)
    try:
        wait_for(first, "poll ok", count=2)
        moved = settings.staging_path.with_name("moved.sqlite3")
        os.rename(settings.staging_path, moved)
        out, _ = first.communicate(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 2, out
    assert "renamed or replaced while collecting" in out and "Traceback" not in out
    stored = int(re.search(r"(\d+) ticks stored", out).group(1))  # type: ignore[union-attr]
    assert stored >= 2 * len(settings.symbols)
    with Staging(moved, create=False) as st:
        assert st.ticks.count() == stored


def test_the_lock_dies_with_a_killed_collector_and_rollup_runs_beside_one(
    pgs: Settings,
) -> None:
    env = etl_env(pgs)
    now_hour = hour_floor(int(time.time() * 1000))
    seed_ticks(pgs.staging_path, SYMBOLS, now_hour - 2 * HOUR_MS, polls=720, interval_ms=5000)
    first = start_etl(["collect", "--no-rollup"], env)
    wait_for(first, "poll ok")
    rolled = run_etl(["rollup"], env)  # beside a running collector, as before
    assert rolled.returncode == 0, rolled.stderr
    os.kill(first.pid, signal.SIGKILL)
    first.wait(10)
    again = run_etl(["collect", "--no-rollup", "--polls", "2"], env)
    assert again.returncode == 0, again.stderr  # the kernel released the lock


def test_two_demos_on_one_data_dir(open_dir: Path) -> None:
    env = etl_env(None, ETL_DATA_DIR=str(open_dir / "data"))
    first = start_etl(["demo"], env)
    try:
        wait_for(first, "poll ok")
        second = run_etl(["demo", "--polls", "1"], env)
        assert second.returncode == 2 and "another collector" in one_line(second)
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=20)


# -- 3. no hangs -------------------------------------------------------------------------------


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A listener that accepts connections and never says a word."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                held.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    server.close()


def silent_dsn(port: int) -> str:
    return f"postgresql://etl:S3cretPw@127.0.0.1:{port}/etl"


@pytest.mark.slow
@pytest.mark.parametrize("args", [["rollup"], ["status", "--json"]])
def test_a_server_that_never_answers_is_exit_3_after_the_connect_timeout(
    settings: Settings, silent_port: int, args: list[str]
) -> None:
    """Was: still running after 850 s, deaf to SIGTERM and SIGINT."""
    now_hour = hour_floor(int(time.time() * 1000))
    seed_ticks(settings.staging_path, SYMBOLS, now_hour - 2 * HOUR_MS, polls=10)
    env = etl_env(replace(settings, pg_dsn=silent_dsn(silent_port)), ETL_PG_CONNECT_TIMEOUT_S="2")
    started = time.monotonic()
    done = run_etl(args, env, timeout=30)
    assert time.monotonic() - started < 10
    assert done.returncode == 3
    text = done.stderr if args == ["rollup"] else done.stdout
    assert "did not answer within 2 s" in text and "S3cretPw" not in done.stdout + done.stderr
    if args == ["rollup"]:
        one_line(done)


def test_a_table_lock_held_elsewhere_ends_the_rollup_at_its_lock_timeout_with_nothing_lost(
    pgs: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A notebook's long query or a DBA's ALTER holding metrics_hourly: the bar write waits
    LOCK_TIMEOUT_S (shortened here), then the rollup ends as a dependency failure (exit 3);
    nothing is committed, nothing purged, and the next rollup does the hour."""
    from etl.errors import EtlError
    from etl.warehouse import store as warehouse

    monkeypatch.setattr(warehouse, "LOCK_TIMEOUT_S", 1.0)
    now_hour = hour_floor(int(time.time() * 1000))
    seed_ticks(pgs.staging_path, SYMBOLS, now_hour - HOUR_MS, polls=720)
    with open_warehouse(pgs) as wh:
        wh.migrate()
    blocker = pg.connect(pgs.pg_dsn)  # type: ignore[arg-type]
    try:
        with blocker.cursor() as cur:
            cur.execute("LOCK TABLE metrics_hourly IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        with pytest.raises(EtlError) as failed:
            run_rollup(replace(pgs, raw_retention_h=0.0))
        took = time.monotonic() - started
    finally:
        blocker.rollback()
        blocker.close()
    assert failed.value.exit_code == 3 and "lock" in str(failed.value).lower(), failed.value
    assert took < 10
    assert query(pgs.pg_dsn, "SELECT count(*) AS n FROM metrics_hourly")["n"][0] == 0  # type: ignore[arg-type]
    with Staging(pgs.staging_path) as st:
        assert st.ticks.count() == 720 * len(SYMBOLS)  # nothing purged
    again = run_rollup(replace(pgs, raw_retention_h=0.0))
    assert again.hours == 1


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_every_command_answers_a_signal_within_5_s_even_inside_libpq(
    settings: Settings, silent_port: int, signum: int
) -> None:
    now_hour = hour_floor(int(time.time() * 1000))
    seed_ticks(settings.staging_path, SYMBOLS, now_hour - 2 * HOUR_MS, polls=10)
    env = etl_env(replace(settings, pg_dsn=silent_dsn(silent_port)), ETL_PG_CONNECT_TIMEOUT_S="120")
    # Both at once: each waits in libpq's connect to a server that never answers.
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "etl", name],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("rollup", "status")
    }
    time.sleep(2.0)  # inside libpq's connect by now
    assert all(proc.poll() is None for proc in procs.values())
    sent = time.monotonic()
    for proc in procs.values():
        proc.send_signal(signum)
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=10)
        assert time.monotonic() - sent < 5, name
        assert proc.returncode == 128 + signum, (name, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_a_signal_while_the_loop_holds_its_stop_events_lock_still_stops_it() -> None:
    """Was: Ctrl-C under `just collect` about once in ten ended in "did not return within 4 s",
    exit 130: the handler set the stop event while the main thread, inside ``Event.wait``, held
    that event's lock. Here the lock is held on purpose when the signal arrives."""
    script = """
import os, signal, threading, time
from etl import shutdown
from etl.collect.loop import _stop_on_signals
shutdown.install()
stop = threading.Event()
with _stop_on_signals(stop, lambda: False):
    with stop._cond:  # where Event.wait holds it; the handler runs during the sleep
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)
    stopped = stop.wait(2)
print("stopped" if stopped else "not stopped", flush=True)
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30
    )
    assert (proc.returncode, proc.stdout.strip()) == (0, "stopped"), proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_collector_waiting_on_an_exchange_that_never_answers_stops_within_5_s(
    settings: Settings, exchange, signum: int
) -> None:
    slow = replace(settings, interval_s=8.0)  # a poll may take up to its slot: 8 s
    first = start_etl(["collect", "--no-rollup"], etl_env(slow))
    wait_for(first, "symbols checked")
    exchange.inject("slow", delay=60.0, times=10)  # every poll from now on hangs
    time.sleep(9)  # into the next slot's request, or its retry
    sent = time.monotonic()
    first.send_signal(signum)
    out, _ = first.communicate(timeout=10)
    assert time.monotonic() - sent < 5
    assert first.returncode == 0 and "stopped after" in out, out


@pytest.mark.slow
def test_a_signal_ends_a_rollup_blocked_on_a_lock_within_5_s(pgs: Settings) -> None:
    now_hour = hour_floor(int(time.time() * 1000))
    seed_ticks(pgs.staging_path, SYMBOLS, now_hour - 2 * HOUR_MS, polls=10)
    with open_warehouse(pgs) as wh:
        wh.migrate()
    with pg.connect(pgs.pg_dsn) as conn, conn.cursor() as cur:  # type: ignore[arg-type]
        cur.execute("LOCK TABLE rollup_runs IN ACCESS EXCLUSIVE MODE")  # held until we leave
        proc = subprocess.Popen(
            [sys.executable, "-m", "etl", "rollup"],
            env=etl_env(pgs),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 30
        while True:  # until the rollup waits for our lock
            cur.execute(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'rollup_runs'::regclass"
            )
            if cur.fetchone()[0]:
                break
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.2)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
        assert time.monotonic() - sent < 5 and proc.returncode == 143, err
        conn.rollback()
    with Staging(pgs.staging_path) as st:
        assert st.ticks.count() == 10 * len(SYMBOLS)  # nothing lost


@pytest.mark.slow
def test_a_hung_rollup_child_is_stopped_and_the_next_hour_rolls_up_as_usual(
    settings: Settings, silent_port: int, vclock
) -> None:
    import io

    from rich.console import Console

    from etl.collect.rollup_child import RollupLauncher
    from etl.collect.view import CollectorView

    hung = replace(
        settings, pg_dsn=silent_dsn(silent_port), pg_connect_timeout_s=600.0, rollup_timeout_s=1.0
    )
    seed_ticks(hung.staging_path, SYMBOLS, hour_floor(int(vclock.now * 1000)) - HOUR_MS, polls=5)
    out = Console(file=io.StringIO(), width=200)
    launcher = RollupLauncher(hung, CollectorView(live=False, out=out), vclock)
    try:
        launcher.tick()
        assert launcher.proc is not None and launcher.launched == 1
        time.sleep(2.0)
        launcher.tick()  # past its limit: stopped
        assert launcher.proc is None and launcher.stopped == 1
        vclock.sleep(3600)
        launcher.tick()  # the next hour's rollup starts as usual
        assert launcher.launched == 2 and launcher.proc is not None
    finally:
        launcher.stop()
    text = out.file.getvalue()  # type: ignore[attr-defined]
    assert "past ETL_ROLLUP_TIMEOUT_S" in text and text.count("rollup started") == 2


# -- 4. bad rows written into staging by outside tools ------------------------------------------


def test_rows_past_the_constraints_are_quarantined_counted_and_never_purged(
    pgs: Settings,
) -> None:
    """Was: -5.0, 0.0 and inf went into bars (low = -5.0, high = inf) and were purged."""
    now_hour = hour_floor(int(time.time() * 1000))
    hour = now_hour - 3 * HOUR_MS
    seed_ticks(pgs.staging_path, SYMBOLS, hour, polls=100)
    done = outside_tool(
        pgs.staging_path,
        "PRAGMA ignore_check_constraints = ON",
        f"INSERT INTO ticks VALUES ('ETHUSDT', {hour + 10}, -5.0)",
        f"INSERT INTO ticks VALUES ('ETHUSDT', {hour + 11}, 0.0)",
        f"INSERT INTO ticks VALUES ('BTCUSDT', {hour + 12}, 9e999)",
        f"INSERT INTO tick_rows (sym, ts, price) VALUES (999, {hour + 13}, 5.0)",
    )
    assert done.returncode == 0, done.stderr
    result = run_rollup(replace(pgs, raw_retention_h=1.0))
    assert result.hours == 1 and result.rejected == 4
    bars = query(pgs.pg_dsn, "SELECT symbol, low, high, samples FROM metrics_hourly ORDER BY 1")  # type: ignore[arg-type]
    assert all(0 < low <= high < math.inf for _, low, high, _ in bars.rows())
    assert bars["samples"].to_list() == [100, 100, 100]  # none of them is a sample
    with Staging(pgs.staging_path) as st:
        assert st.quarantine.count() == 4  # the purge ran and kept every one
        reasons = {r["reason"] for r in st.quarantine.reasons()}
    assert reasons == {"price is not greater than 0", "price is not finite", "unknown symbol id"}
    status = run_etl(["status", "--json"], etl_env(pgs))
    report = json.loads(status.stdout)
    assert report["staging"]["rejected"] == 4 and status.returncode == 1
    assert any("quarantined" in p for p in report["problems"])


def test_a_pre_identity_file_with_bad_rows_rolls_up_and_quarantines_them(
    pgs: Settings,
) -> None:
    """Was: a text price or a BLOB made every later rollup exit 1; a NULL price was a sample."""
    now_hour = hour_floor(int(time.time() * 1000))
    hour = now_hour - 2 * HOUR_MS
    rows = [f"('BTCUSDT', {hour + k * 5000}, {100.0 + k})" for k in range(50)]
    bad = [row.replace("1790000000000", str(hour + 777)) for row in BAD_ROWS]
    done = outside_tool(
        pgs.staging_path,
        # the table an outside tool (or this project before staging identity) made: no checks
        "CREATE TABLE ticks (symbol TEXT, ts INTEGER, price REAL)",
        "CREATE INDEX ticks_ts ON ticks (ts)",
        *(f"INSERT INTO ticks VALUES {r}" for r in rows + bad),
    )
    assert done.returncode == 0, done.stderr
    result = run_rollup(pgs)
    assert result.hours == 1
    bar = query(pgs.pg_dsn, "SELECT symbol, samples, low, high FROM metrics_hourly")  # type: ignore[arg-type]
    assert bar.rows() == [("BTCUSDT", 50, 100.0, 149.0)]
    with Staging(pgs.staging_path) as st:
        assert st.quarantine.count() == len(BAD_ROWS)


# -- 5. a corrupt staging file -----------------------------------------------------------------


def corrupt(path: Path) -> None:
    """Overwrite pages in the middle of the file with garbage (the header stays)."""
    size = path.stat().st_size
    with path.open("r+b") as fh:
        for page in range(2, size // 4096 - 1, 3):
            fh.seek(page * 4096)
            fh.write(os.urandom(4096))


def test_a_corrupt_staging_file_is_refused_with_a_recovery_recipe(pgs: Settings) -> None:
    """Was: collect exited 0 and kept appending; rollup and status exited 1."""
    now_hour = hour_floor(int(time.time() * 1000))
    seed_ticks(pgs.staging_path, SYMBOLS, now_hour - 3 * HOUR_MS, polls=2 * 720)
    with Staging(pgs.staging_path) as st:
        st.db.checkpoint()
    corrupt(pgs.staging_path)
    env = etl_env(pgs)
    for args in (["collect", "--no-rollup", "--polls", "1"], ["rollup"], ["status"]):
        done = run_etl(args, env)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        line = one_line(done)
        assert str(pgs.staging_path) in line and "malformed" in line
        if args[0] == "collect":
            assert ".recover" in line


# -- 6. every error is one plain line with the right exit code ----------------------------------


@pytest.mark.parametrize(
    ("args", "extra", "literal"),
    [
        (["status"], {"ETL_INTERVAL_S": "[/]"}, "'[/]'"),
        (["status"], {"ETL_SYMBOLS": "[/]"}, "'[/]'"),
        (["rollup", "--since", "[/]"], {}, "'[/]'"),
        (["rollup"], {"ETL_PG_DSN": "postgresql://u:S3cret@[::1/db"}, "postgresql://u:***@[::1/db"),
        (["rollup"], {"ETL_PG_DSN": "postgresql://u:S3cret@127.0.0.1/db?sslmode=bogus"}, "sslmode"),
    ],
)
def test_bad_input_is_one_literal_line_and_exit_2(
    settings: Settings, args: list[str], extra: dict[str, str], literal: str
) -> None:
    for debug in ([], ["--debug"]):
        done = run_etl([*debug, *args], etl_env(settings, **extra))
        assert done.returncode == 2, done.stderr
        assert "S3cret" not in done.stdout + done.stderr
        last = done.stderr.strip().splitlines()[-1]
        assert literal in last and "MarkupError" not in done.stderr
        if not debug:
            one_line(done)


def test_libpq_prefixes_are_printed_literally(settings: Settings) -> None:
    now_hour = hour_floor(int(time.time() * 1000))
    seed_ticks(settings.staging_path, SYMBOLS, now_hour - 2 * HOUR_MS, polls=5)
    done = run_etl(
        ["rollup"], etl_env(replace(settings, pg_dsn="postgresql://etl@127.0.0.1:9/etl"))
    )
    assert done.returncode == 3 and "[libpq]" in one_line(done)


MARKUP = "[/][bold red]x[/bold red] :smile: [link=http://x]"
MARKUP_PATH = "[/][bold]x[/bold]:smile:"  # a path may not have spaces (the embedded server)


@pytest.mark.slow
def test_text_from_settings_files_and_servers_is_printed_literally_everywhere(
    settings: Settings, open_dir: Path
) -> None:
    """Was: a staging name holding ``[/]`` made `etl rollup` and `etl backup` exit 1
    ("unexpected MarkupError") after their work was committed, and a restore left a partial
    file. Markup in the data dir's path, the staging file's name and the exchange's error text
    goes through every command's output (tables, summaries, logs, errors) as it is."""
    data = open_dir / f"data{MARKUP_PATH}"
    marked = replace(settings, data_dir=data, sqlite_path=None, staging_name=f"name {MARKUP}")
    now_hour = hour_floor(int(time.time() * 1000))
    seed_ticks(marked.staging_path, SYMBOLS, now_hour - 3 * HOUR_MS, polls=2 * 720)
    env = etl_env(marked)
    outputs = {}
    for args in (
        ["rollup"],
        ["status"],
        ["status", "--json"],
        ["db", "init"],
        ["retention", "--dry-run"],
        ["backup", str(open_dir / f"backup{MARKUP_PATH}")],
        ["--log-format", "json", "rollup", "--rerun"],
    ):
        done = run_etl(args, env)
        assert done.returncode in (0, 1), (args, done.stdout, done.stderr)
        assert "MarkupError" not in done.stderr and "Traceback" not in done.stderr
        outputs[" ".join(args)] = done.stdout + done.stderr
    assert MARKUP in outputs["rollup"] and MARKUP_PATH in outputs["db init"]
    assert MARKUP in outputs["status"] and MARKUP_PATH in outputs["status"], outputs["status"]
    assert json.loads(outputs["status --json"])["staging"]["name"] == f"name {MARKUP}"
    elsewhere = {k: v for k, v in env.items() if k != "ETL_SQLITE_PATH"}
    restored = run_etl(
        ["restore", str(open_dir / f"backup{MARKUP_PATH}")],
        {**elsewhere, "ETL_DATA_DIR": str(open_dir / f"restored{MARKUP_PATH}")},
    )
    assert restored.returncode == 0, restored.stderr
    assert f"restored {open_dir / f'backup{MARKUP_PATH}'}" in restored.stdout
    # An error naming a marked-up path is one literal line too.
    missing = run_etl(["restore", str(open_dir / f"nowhere{MARKUP_PATH}")], env)
    assert missing.returncode == 2 and MARKUP_PATH in one_line(missing)
    spaced = run_etl(["db", "init"], {**env, "ETL_DATA_DIR": str(open_dir / "a space")})
    assert spaced.returncode == 2 and "without spaces" in one_line(spaced)


def test_the_exchanges_error_text_is_printed_literally(settings: Settings) -> None:
    """The exchange's own words (an error body's ``msg``) reach the log as they were sent."""
    from etl.exchange.fake.rest import FakeExchange

    with FakeExchange(list(settings.symbols), ws=False) as exchange:
        exchange.inject("status", status=400, code=-1100, msg=f"bad {MARKUP}", times=10**6)
        done = run_etl(
            ["collect", "--polls", "2", "--no-rollup"],
            etl_env(replace(settings, binance_url=exchange.url)),
        )
    assert "Traceback" not in done.stderr and "MarkupError" not in done.stderr
    assert f"bad {MARKUP}" in done.stdout + done.stderr, done.stdout + done.stderr


def test_backfill_of_a_symbol_the_exchange_does_not_list_is_exit_2(
    pgs: Settings,
) -> None:
    """Was: exit 1 with ApiError -1121."""
    done = run_etl(["backfill", "--symbols", "BTCUSDT,NOPEUSDT"], etl_env(pgs))
    assert done.returncode == 2 and "NOPEUSDT (unknown)" in one_line(done)


@pytest.fixture
def tiny_disk() -> Iterator[Path]:
    """A real filesystem of 2 MiB (tmpfs), to fill."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    where = Path(tempfile_dir())
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)])
    if mounted.returncode != 0:
        pytest.skip("this machine does not let us mount a tmpfs")
    where.chmod(0o755)
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)
    shutil.rmtree(where, ignore_errors=True)


def tempfile_dir() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="etl-disk-", dir="/tmp")


def fill(disk: Path, leave: int = 0) -> None:
    """Fill the disk, then give back ``leave`` bytes."""
    filler = disk / "filler"
    with filler.open("wb") as fh, contextlib.suppress(OSError):
        while True:
            fh.write(b"\0" * 65536)
            fh.flush()
    if leave:
        with filler.open("r+b") as fh:
            fh.truncate(max(0, filler.stat().st_size - leave))


@pytest.mark.slow
def test_a_full_disk_while_polling_is_named_as_such(settings: Settings, tiny_disk: Path) -> None:
    """Was: logged as "exchange unreachable ... database or disk is full"."""
    from etl.exchange.fake.rest import FakeExchange

    with FakeExchange(2000, ws=False) as ex:
        polling = replace(
            settings,
            binance_url=ex.url,
            symbols=tuple(ex.market.symbols),
            sqlite_path=tiny_disk / "ticks.sqlite3",
            interval_s=1.0,
        )
        fill(tiny_disk, leave=300_000)  # room for the file and a few polls of 2,000 ticks
        done = run_etl(["collect", "--no-rollup", "--duration", "6"], etl_env(polling))
    assert f"disk full: {polling.staging_path}" in done.stdout, done.stdout[-2000:]
    assert "exchange unreachable" not in done.stdout and "Traceback" not in done.stderr
    assert done.returncode == 0  # it kept running, and stored what fitted
    (tiny_disk / "filler").unlink()
    with Staging(polling.staging_path) as st:
        assert st.ticks.count() > 0 and st.db.integrity_check() == "ok"


def test_a_full_disk_at_start_or_in_the_purge_is_exit_3(
    settings: Settings, tiny_disk: Path, pgs: Settings
) -> None:
    """Was: exit 1 in the purge."""
    now_hour = hour_floor(int(time.time() * 1000))
    purging = replace(pgs, sqlite_path=tiny_disk / "ticks.sqlite3", raw_retention_h=1.0)
    seed_ticks(purging.staging_path, SYMBOLS, now_hour - 3 * HOUR_MS, polls=2 * 720)
    with Staging(purging.staging_path) as st:
        before = st.ticks.count()
    fill(tiny_disk)
    for args in (["rollup"], ["collect", "--no-rollup", "--polls", "1"]):
        done = run_etl(args, etl_env(purging))
        assert done.returncode == 3 and "disk full: " in one_line(done), (args, done.stderr)
    (tiny_disk / "filler").unlink()
    with Staging(purging.staging_path) as st:
        assert st.db.integrity_check() == "ok" and 1 <= st.ticks.count() <= before
    again = run_etl(["rollup"], etl_env(purging))  # with room again, it converges
    assert again.returncode == 0, again.stderr
    with Staging(purging.staging_path) as st:
        assert st.ticks.count() == 1  # every committed hour purged but the newest row


# -- 7. values that must be refused -------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "extra", "fragment"),
    [
        (["collect", "--polls", "1"], {"ETL_SYMBOLS": ""}, "ETL_SYMBOLS is set but empty"),
        (["collect", "--polls", "1"], {"ETL_INTERVAL_S": "1e-9"}, "between 0.1 and 3600"),
        (["collect", "--polls", "1"], {"ETL_INTERVAL_S": "1e9"}, "between 0.1 and 3600"),
        (["rollup", "--since", "2026-02-01", "--until", "2026-01-01"], {}, "is not before"),
        (["backfill", "--since", "2026-02-01", "--until", "2026-01-01"], {}, "is not before"),
        (["reconcile", "--since", "2026-02-01", "--until", "2026-01-01"], {}, "is not before"),
        # Was: taken as 10 s (Python reads "1_0" as 10).
        (["collect", "--polls", "1"], {"ETL_INTERVAL_S": "1_0"}, "'1_0' is not a number"),
        (["collect", "--polls", "1"], {"ETL_INTERVAL_S": "nan"}, "'nan' is not a number"),
        # Was: exit 3 "weight budget for this minute is spent".
        (["collect", "--polls", "1"], {"ETL_WEIGHT_BUDGET": "1e-300"}, "between 0.01 and 1"),
        (["rollup"], {"ETL_ROLLUP_CHUNK_HOURS": "2.5"}, "'2.5' is not a whole number"),
    ],
)
def test_values_that_must_be_refused(
    settings: Settings, args: list[str], extra: dict[str, str], fragment: str
) -> None:
    started = time.monotonic()
    done = run_etl(args, etl_env(settings, **extra))
    assert done.returncode == 2 and fragment in one_line(done)
    assert time.monotonic() - started < 10


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"symbols = 5\n", "symbols: 5 is not a list of symbols"),  # was: exit 1 TypeError
        (b"\xff\xfesymbols = []\n", "is not UTF-8 text"),  # was: exit 1 UnicodeDecodeError
        (b"symbols = [1, 2]\n", "invalid symbol"),
        (b"interval_s = true\n", "True is not a number"),
    ],
)
def test_a_config_file_with_bad_values_is_one_line_and_exit_2(
    settings: Settings, tmp_path: Path, content: bytes, fragment: str
) -> None:
    config = tmp_path / "etl.toml"
    config.write_bytes(content)
    env = etl_env(settings, ETL_CONFIG=str(config))
    del env["ETL_SYMBOLS"], env["ETL_INTERVAL_S"]
    done = run_etl(["status"], env)
    assert done.returncode == 2 and fragment in one_line(done), done.stderr


def test_ten_thousand_unknown_symbols_make_one_short_line(
    settings: Settings, tmp_path: Path
) -> None:
    """Was: a 220 KB "one line"."""
    names = [f"NOPE{i:05d}USDT" for i in range(10_000)]
    config = tmp_path / "etl.toml"  # (too long for an environment variable)
    config.write_text(f"symbols = {json.dumps(names)}\n")
    env = etl_env(settings, ETL_CONFIG=str(config))
    del env["ETL_SYMBOLS"]
    done = run_etl(["collect", "--polls", "1"], env)
    line = one_line(done)
    assert done.returncode == 2 and len(line) < 400
    assert "NOPE00000USDT (unknown)" in line and "and 9,995 more" in line


def test_a_typo_gets_a_suggestion(settings: Settings) -> None:
    done = run_etl(["collect", "--polls", "1", "--symbols", "BTCUSTD"], etl_env(settings))
    assert done.returncode == 2 and "did you mean BTCUSDT?" in one_line(done)


# -- 8. deterministic daily bars ----------------------------------------------------------------


def test_identical_hourly_bars_give_bit_identical_daily_bars_whatever_their_order(
    make_db: Callable[[], str], settings: Settings
) -> None:
    """Was: two clean rollups of identical copies differed in metrics_daily.mean (2.6e-16)."""
    from etl.bars import hourly_bars
    from etl.jobs.demo_history import generate_ticks

    start = hour_floor(int(time.time() * 1000)) - 24 * 20 * HOUR_MS
    ticks = pl.concat(
        generate_ticks(s, start, start + 20 * 24 * HOUR_MS, 61_000) for s in SYMBOLS
    ).with_row_index("seq")
    bars = hourly_bars(ticks.with_columns(pl.col("seq").cast(pl.Int64)))
    daily = []
    for order in (bars, bars.reverse(), bars.sample(fraction=1.0, shuffle=True, seed=3)):
        dsn = make_db()
        with open_warehouse(replace(settings, pg_dsn=dsn)) as wh:
            wh.migrate()
            for chunk in order.iter_slices(97):  # written in many transactions, in this order
                wh.write_bars(chunk)
        daily.append(
            query(dsn, "SELECT symbol, day, mean, samples FROM metrics_daily ORDER BY 1, 2")
        )
    assert daily[0].height >= 3 * 19
    assert daily[0].rows() == daily[1].rows() == daily[2].rows()  # to the last bit


# -- 9. a ban survives a crash right after it arrives -------------------------------------------


@pytest.mark.slow
def test_a_ban_is_stored_before_the_body_arrives_so_a_crash_keeps_it(
    settings: Settings, exchange
) -> None:
    """Was: killed within a millisecond of a 429, the restarted collector sent 4 requests
    inside the 20 s Retry-After window."""
    exchange.inject("status", status=429, retry_after=20, code=-1003, body_delay=5.0)
    env = etl_env(settings)
    first = start_etl(["collect", "--no-rollup"], env)
    deadline = time.monotonic() + 30
    while not any(r.status == 429 for r in exchange.requests):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.5)  # the status and headers are in; the body is 4.5 s away
    os.kill(first.pid, signal.SIGKILL)
    first.wait(10)
    banned_at = next(r.at for r in exchange.requests if r.status == 429)
    second = run_etl(["collect", "--no-rollup", "--duration", "3"], env)
    assert "rate limited (429)" in second.stdout
    during = [r for r in exchange.requests if banned_at < r.at < banned_at + 20]
    assert during == [] and exchange.violations == 0


# -- faults under the warehouse and the backup ---------------------------------------------------


def stopped_at_its_point(proc: subprocess.Popen[str], timeout: float = 60) -> None:
    """Wait until ``proc`` stopped itself (``ETL_STOP_AT``)."""
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{proc.pid}/stat").read_text().split(") ")[1][0] != "T":
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "never reached its stop point"
        time.sleep(0.05)


def kill_postgres(pgdata: Path) -> None:
    """``kill -9`` of the embedded server's postmaster (its children die with it)."""
    pid = int((pgdata / "postmaster.pid").read_text().split()[0])
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.fixture
def embedded(settings: Settings, open_dir: Path) -> Settings:
    """Settings with a warehouse of its own: the embedded server in a data dir others may enter
    (a test may kill it)."""
    chosen = replace(settings, data_dir=open_dir / "data", sqlite_path=None)
    now_hour = hour_floor(int(time.time() * 1000))
    seed_ticks(chosen.staging_path, SYMBOLS, now_hour - 4 * HOUR_MS, polls=3 * 720)
    return chosen


@pytest.mark.slow
def test_postgres_killed_mid_rollup_is_exit_3_with_nothing_partial_and_a_rerun_converges(
    embedded: Settings, open_dir: Path
) -> None:
    reference = replace(embedded, data_dir=open_dir / "reference")
    reference.data_dir.mkdir()
    shutil.copy(embedded.staging_path, reference.staging_path)
    assert run_etl(["rollup"], etl_env(reference)).returncode == 0

    env = etl_env(embedded)
    rollup = start_etl(["rollup"], {**env, "ETL_STOP_AT": "before_commit"})
    stopped_at_its_point(rollup)
    kill_postgres(embedded.paths.pg)
    os.kill(rollup.pid, signal.SIGCONT)
    out, _ = rollup.communicate(timeout=60)
    assert rollup.returncode == 3, out
    lines = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "nothing partial was committed" in lines[0], out
    assert "Traceback" not in out
    with Staging(embedded.staging_path) as st:
        assert st.ticks.count() == 3 * 720 * len(SYMBOLS)  # no tick purged

    again = run_etl(["rollup"], env)  # the server restarts (crash recovery) and it converges
    assert again.returncode == 0, again.stdout + again.stderr
    with (
        embedded_server(embedded.paths.pg) as ours,
        embedded_server(reference.paths.pg) as theirs,
    ):
        assert snapshot(ours) == snapshot(theirs)


@pytest.mark.slow
def test_postgres_killed_mid_backup_is_exit_3_and_leaves_no_backup(
    embedded: Settings, open_dir: Path
) -> None:
    env = etl_env(embedded)
    assert run_etl(["rollup"], env).returncode == 0
    dest = open_dir / "backup"
    backup = start_etl(["backup", str(dest)], {**env, "ETL_STOP_AT": "backup_dumping"})
    stopped_at_its_point(backup)
    kill_postgres(embedded.paths.pg)
    os.kill(backup.pid, signal.SIGCONT)
    out, _ = backup.communicate(timeout=60)
    assert backup.returncode == 3, out
    assert "Traceback" not in out
    assert not dest.exists() and not list(open_dir.glob(".backup.partial-*"))
    again = run_etl(["backup", str(dest)], env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert (dest / "manifest.json").exists()


@pytest.mark.slow
def test_a_full_disk_during_a_backup_is_exit_3_and_leaves_nothing_restore_would_take(
    embedded: Settings, tiny_disk: Path, open_dir: Path
) -> None:
    env = etl_env(embedded)
    assert run_etl(["rollup"], env).returncode == 0
    fill(tiny_disk, leave=64 * 1024)  # room for the dump, not for the staging file's copy
    dest = tiny_disk / "backup"
    done = run_etl(["backup", str(dest)], env)
    assert done.returncode == 3 and "disk full" in one_line(done), done.stderr
    assert not dest.exists() and list(tiny_disk.iterdir()) == [tiny_disk / "filler"]
    refused = run_etl(["restore", str(dest)], {**env, "ETL_DATA_DIR": str(open_dir / "new")})
    assert refused.returncode == 2, refused.stderr
