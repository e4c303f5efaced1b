"""Operations: backup and restore while collecting, reaching the warehouse by hand, a bound on
every log, the systemd unit as shipped, and a staging file that levels off. Real processes, real
PostgreSQL (embedded servers in directories others may enter, as root needs), real SQLite files,
the project's fake exchange."""

from __future__ import annotations

import contextlib
import json
import math
import os
import pty
import select
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import polars as pl
import pytest

from etl.config import Settings, load_settings
from etl.exchange.fake.rest import FakeExchange
from etl.hours import HOUR_MS, hour_floor, iso
from etl.jobs.rollup import run_rollup
from etl.staging.store import Staging
from etl.warehouse import server_logs as pg_logs
from etl.warehouse.embedded import embedded_server
from etl.warehouse.tools import embedded_bin_dirs, split_password
from tests.conftest import etl_env, one_line, run_etl, start, start_etl, wait_for
from tests.pgutil import execute, query, seed_ticks, snapshot
from tests.test_warehouse import gone

ROOT = Path(__file__).resolve().parent.parent
SYMBOLS = ["BTCUSDT", "ETHUSDT", "BNBUSDT"]
PASSWORD = "S3cretPw42"


def env_of(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of ``settings`` without ETL_SQLITE_PATH, so --data-dir moves everything."""
    env = etl_env(settings, **extra)
    env.pop("ETL_SQLITE_PATH", None)
    return env


def all_ticks(path: Path) -> pl.DataFrame:
    with Staging(path, create=False) as st:
        return st.ticks.read_window(0, 2**62).sort("seq")


def tables(dsn: str) -> dict[str, list[tuple]]:
    """Every row of the warehouse's tables, every column (timestamps included)."""
    return {
        "metrics_hourly": query(dsn, "SELECT * FROM metrics_hourly ORDER BY symbol, bucket").rows(),
        "metrics_daily": query(dsn, "SELECT * FROM metrics_daily ORDER BY symbol, day").rows(),
        "rollup_runs": query(dsn, "SELECT * FROM rollup_runs ORDER BY staging_id, hour").rows(),
    }


def with_password(dsn: str) -> str:
    """The test server trusts every connection, so a password in the DSN is harmless; it lets
    the tests check that no output ever shows it."""
    assert "postgres:@" in dsn or "postgres@" in dsn, dsn
    return dsn.replace("postgres:@", f"postgres:{PASSWORD}@").replace(
        "postgres@", f"postgres:{PASSWORD}@"
    )


@pytest.fixture
def pg_bin(tmp_path: Path) -> Path:
    """A PATH directory holding the PostgreSQL 18 client programs, as a user's install would."""
    bindir = tmp_path / "pgbin"
    bindir.mkdir()
    real = embedded_bin_dirs()[18]
    for name in ("pg_dump", "pg_restore", "psql"):
        wrapper = bindir / name
        wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(str(real / name))} "$@"\n')
        wrapper.chmod(0o755)
    return bindir


# -- 1. backup and restore ---------------------------------------------------------------------


@pytest.mark.slow
def test_a_backup_taken_while_collecting_restores_the_snapshot_and_the_rollup_goes_on_the_same(
    open_dir: Path, exchange: FakeExchange
) -> None:
    now_hour = hour_floor(int(time.time() * 1000))
    src = replace(
        load_settings(env={}),
        symbols=tuple(SYMBOLS),
        interval_s=0.2,
        binance_url=exchange.url,
        data_dir=open_dir / "src",
        raw_retention_h=24.0,
    )
    dst = replace(src, data_dir=open_dir / "dst")
    # 29 closed hours; the first 24 rolled up (the oldest 6 then purged), 5 still pending.
    seed_ticks(src.staging_path, SYMBOLS, now_hour - 30 * HOUR_MS, 29 * 60, interval_ms=60_000)
    first = run_etl(["rollup", "--until", iso(now_hour - 6 * HOUR_MS)], env_of(src))
    assert first.returncode == 0, first.stderr

    collector = start([sys.executable, "-m", "etl", "collect", "--no-rollup"], env_of(src))
    try:
        wait_for(collector, "poll ok", 5)
        backed = run_etl(["backup", str(open_dir / "bk")], env_of(src))
        assert backed.returncode == 0, backed.stderr
        wait_for(collector, "poll ok", 5)  # it kept collecting after the snapshot
    finally:
        collector.send_signal(signal.SIGTERM)
        out, _ = collector.communicate(timeout=30)
    assert collector.returncode == 0, out

    manifest = json.loads((open_dir / "bk" / "manifest.json").read_text())
    backup = sorted(p.name for p in (open_dir / "bk").iterdir())
    assert backup == ["manifest.json", "ticks.sqlite3", "warehouse.dump"]
    header = (open_dir / "bk" / "ticks.sqlite3").read_bytes()[:20]
    assert header[18:20] == b"\x01\x01"  # a self-contained file: not in WAL mode
    restored = run_etl(
        ["restore", str(open_dir / "bk"), "--data-dir", str(dst.data_dir)], env_of(src)
    )
    assert restored.returncode == 0, restored.stderr

    # The staging file: the source's rows up to the snapshot, with its identity.
    source_ticks, copy_ticks = all_ticks(src.staging_path), all_ticks(dst.staging_path)
    upto = manifest["staging"]["max_seq"]
    assert copy_ticks.equals(source_ticks.filter(pl.col("seq") <= upto))
    assert copy_ticks["seq"].max() == upto and source_ticks["seq"].max() > upto
    assert copy_ticks.height == manifest["rows"]["ticks"]
    assert copy_ticks["ts"].max() >= now_hour  # polls of the running collector are in it
    with Staging(src.staging_path) as a, Staging(dst.staging_path) as b:
        assert (a.id, a.name, a.quarantine.count()) == (b.id, b.name, b.quarantine.count())
        assert b.id == manifest["staging"]["id"]
    # The warehouse: every row of bars, daily bars and ledger, to the last timestamp.
    with (
        embedded_server(src.paths.pg) as a_dsn,
        embedded_server(dst.paths.pg) as b_dsn,
    ):
        before = tables(a_dsn)
        assert tables(b_dsn) == before
        assert {k: len(v) for k, v in before.items()} == {k: manifest["rows"][k] for k in before}
        purged = "SELECT count(*) AS n FROM rollup_runs WHERE purged_at IS NOT NULL"
        assert query(b_dsn, purged)["n"][0] == 6  # the oldest hours, purged before the backup

    # A rollup on the copy goes on exactly where the original's does.
    until = ["rollup", "--until", iso(now_hour)]
    for settings in (src, dst):
        done = run_etl(until, env_of(settings))
        assert done.returncode == 0, done.stderr
    with (
        embedded_server(src.paths.pg) as a_dsn,
        embedded_server(dst.paths.pg) as b_dsn,
    ):
        after, copy = snapshot(a_dsn), snapshot(b_dsn)
        assert (copy["hourly"], copy["daily"]) == (after["hourly"], after["daily"])
        assert len(after["runs"]) == len(copy["runs"]) == 29  # 5 pending hours rolled up on both
        # A ledger row's max_seq is the newest row its read could see: the original had kept
        # collecting, so its new rows see further; everything else is the same.
        ledger = [r[:4] + r[5:] for r in after["runs"]]
        assert [r[:4] + r[5:] for r in copy["runs"]] == ledger
        assert [r[4] for r in copy["runs"]][:24] == [r[4] for r in after["runs"]][:24]
        assert {r[4] for r in copy["runs"][24:]} == {upto}
        assert {r[4] for r in after["runs"][24:]} == {int(source_ticks["seq"].max())}
        ids = "SELECT DISTINCT staging_id::text AS id, staging_name FROM rollup_runs"
        assert query(a_dsn, ids).rows() == query(b_dsn, ids).rows()
    source_ticks, copy_ticks = all_ticks(src.staging_path), all_ticks(dst.staging_path)
    assert copy_ticks.equals(source_ticks.filter(pl.col("seq") <= upto))  # the same purge


@pytest.mark.slow
def test_a_backup_before_the_first_rollup_holds_the_staging_file_and_refusals_are_one_line(
    settings: Settings, tmp_path: Path
) -> None:
    env = env_of(settings)
    nothing = run_etl(["backup", str(tmp_path / "bk")], env)
    assert nothing.returncode == 2 and "no staging file" in one_line(nothing)
    assert run_etl(["collect", "--no-rollup", "--polls", "3"], env).returncode == 0
    done = run_etl(["backup", str(tmp_path / "bk"), "--json"], env)
    assert done.returncode == 0, done.stderr
    manifest = json.loads(done.stdout)
    assert manifest["postgresql"] is None and manifest["rows"]["ticks"] == 9
    assert sorted(os.listdir(tmp_path / "bk")) == ["manifest.json", "ticks.sqlite3"]
    assert not settings.paths.pg.exists()  # a backup never creates a warehouse

    again = run_etl(["backup", str(tmp_path / "bk")], env)
    assert again.returncode == 2 and "not an empty directory" in one_line(again)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    refused = run_etl(["restore", str(tmp_path / "bk"), "--data-dir", str(tmp_path / "full")], env)
    assert refused.returncode == 2 and "not empty" in one_line(refused)
    not_one = run_etl(["restore", str(tmp_path), "--data-dir", str(tmp_path / "new")], env)
    assert not_one.returncode == 2 and "not an etl backup" in one_line(not_one)

    restored = run_etl(["restore", str(tmp_path / "bk"), "--data-dir", str(tmp_path / "new")], env)
    assert restored.returncode == 0, restored.stderr
    assert all_ticks(tmp_path / "new" / "ticks.sqlite3").equals(all_ticks(settings.staging_path))

    with (tmp_path / "bk" / "ticks.sqlite3").open("r+b") as fh:  # one byte flipped
        fh.seek(5000)
        byte = fh.read(1)
        fh.seek(5000)
        fh.write(bytes([byte[0] ^ 1]))
    damaged = run_etl(["restore", str(tmp_path / "bk"), "--data-dir", str(tmp_path / "n2")], env)
    assert damaged.returncode == 2 and "damaged" in one_line(damaged)
    assert not (tmp_path / "n2").exists()


@pytest.mark.slow
def test_an_external_warehouse_is_backed_up_with_pg_dump_from_path_or_a_clear_exit_3(
    settings: Settings,
    pg_dsn: str,
    make_db: Callable[[], str],
    tmp_path: Path,
    pg_bin: Path,
) -> None:
    now_hour = hour_floor(int(time.time() * 1000))
    source = replace(settings, pg_dsn=with_password(pg_dsn), raw_retention_h=1.0)
    seed_ticks(source.staging_path, SYMBOLS, now_hour - 4 * HOUR_MS, 3 * 60, interval_ms=60_000)
    run_rollup(source)
    env = env_of(source)
    empty = tmp_path / "empty-path"
    empty.mkdir()
    missing = run_etl(["backup", str(tmp_path / "a")], {**env, "PATH": str(empty)})
    assert missing.returncode == 3
    line = one_line(missing)
    assert "pg_dump not found on PATH" in line and "postgresql-client-18" in line
    old = tmp_path / "old-path"
    old.mkdir()
    (old / "pg_dump").write_text("#!/bin/sh\necho 'pg_dump (PostgreSQL) 15.2'\n")
    (old / "pg_dump").chmod(0o755)
    too_old = run_etl(["backup", str(tmp_path / "a")], {**env, "PATH": str(old)})
    assert too_old.returncode == 3 and "15.2, older than 18" in one_line(too_old)
    assert not (tmp_path / "a").exists() and not list(tmp_path.glob(".a.partial-*"))

    path = f"{pg_bin}:{os.environ['PATH']}"
    done = run_etl(["backup", str(tmp_path / "a"), "--json"], {**env, "PATH": path})
    assert done.returncode == 0, done.stderr
    manifest = json.loads(done.stdout)
    assert manifest["postgresql"]["embedded"] is False
    assert manifest["postgresql"]["version"].startswith("18.")
    assert manifest["rows"]["metrics_hourly"] == 3 * 3 and manifest["rows"]["rollup_runs"] == 3

    target = replace(settings, data_dir=tmp_path / "restored", pg_dsn=make_db())
    restore = ["restore", str(tmp_path / "a")]
    restored = run_etl(restore, {**env_of(target), "PATH": path})
    assert restored.returncode == 0, restored.stderr
    assert tables(target.pg_dsn) == tables(pg_dsn)  # type: ignore[arg-type]
    again = run_etl(restore, {**env_of(replace(target, data_dir=tmp_path / "r2")), "PATH": path})
    assert again.returncode == 2 and "already holds" in one_line(again)
    assert not (tmp_path / "r2").exists()  # nothing left behind
    everything = missing.stderr + too_old.stderr + done.stdout + done.stderr + again.stderr
    assert PASSWORD not in everything + (tmp_path / "a" / "manifest.json").read_text()


# -- 2. reach the warehouse --------------------------------------------------------------------


@pytest.fixture
def warehouse_dir(open_dir: Path) -> Settings:
    """A data dir whose embedded warehouse holds a few bars."""
    now_hour = hour_floor(int(time.time() * 1000))
    settings = replace(load_settings(env={}), data_dir=open_dir / "data", symbols=tuple(SYMBOLS))
    seed_ticks(settings.staging_path, SYMBOLS, now_hour - 3 * HOUR_MS, 2 * 60, interval_ms=60_000)
    assert run_rollup(settings).bars == 2 * 3
    return settings


def test_db_shell_runs_psql_on_the_embedded_warehouse_and_stops_it_after(
    warehouse_dir: Settings,
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "etl", "db", "shell"],
        input="SELECT 42;\nSELECT count(*) AS bars FROM metrics_hourly;\n",
        env=env_of(warehouse_dir),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert " 42\n(1 row)" in done.stdout and "bars" in done.stdout and " 6\n" in done.stdout
    assert gone(warehouse_dir.paths.pg)  # started for the session, stopped after
    args = run_etl(["db", "shell", "--", "-At", "-c", "SELECT 6 * 7"], env_of(warehouse_dir))
    assert args.returncode == 0 and args.stdout.strip() == "42"
    failed = run_etl(["db", "shell", "--", "-c", "SELECT nonsense"], env_of(warehouse_dir))
    assert failed.returncode == 1 and "nonsense" in failed.stderr  # psql's own exit code


def read_pty(fd: int, until: str, timeout: float = 20) -> str:
    out = ""
    deadline = time.monotonic() + timeout
    while until not in out:
        assert time.monotonic() < deadline, out
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                out += os.read(fd, 4096).decode(errors="replace")
            except OSError:
                break
    return out


@pytest.mark.slow
def test_ctrl_c_in_db_shell_cancels_the_query_and_the_session_goes_on(
    warehouse_dir: Settings,
) -> None:
    """Ctrl-C reaches etl too: it must neither die nor let its watchdog end it seconds later."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: etl db shell on a terminal
        os.execve(
            sys.executable,
            [sys.executable, "-m", "etl", "db", "shell", "--", "-P", "pager=off"],
            env_of(warehouse_dir),
        )
    try:
        read_pty(fd, "etl=#")
        os.write(fd, b"SELECT pg_sleep(60);\n")
        time.sleep(1.0)
        os.write(fd, b"\x03")  # Ctrl-C: SIGINT to the terminal's foreground group
        assert "canceling statement due to user request" in read_pty(fd, "etl=#")
        time.sleep(6)  # past etl.shutdown's grace: the session must still be there
        os.write(fd, b"SELECT 40 + 2 AS answer;\n")
        assert "42" in read_pty(fd, "(1 row)")
        os.write(fd, b"\\q\n")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
        os.close(fd)
    assert gone(warehouse_dir.paths.pg)


def test_db_shell_and_url_on_an_external_warehouse(
    settings: Settings, pg_dsn: str, tmp_path: Path, pg_bin: Path
) -> None:
    env = env_of(replace(settings, pg_dsn=with_password(pg_dsn)))
    path = f"{pg_bin}:{os.environ['PATH']}"
    done = subprocess.run(
        [sys.executable, "-m", "etl", "db", "shell"],
        input="SELECT 42;\n",
        env={**env, "PATH": path},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert " 42\n(1 row)" in done.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = run_etl(["db", "shell"], {**env, "PATH": str(empty)})
    assert missing.returncode == 3 and "psql not found on PATH" in one_line(missing)
    down = {**env, "ETL_PG_DSN": f"postgresql://etl:{PASSWORD}@127.0.0.1:9/etl"}
    unreachable = run_etl(["db", "shell"], down)
    assert unreachable.returncode == 3 and "unreachable" in one_line(unreachable)

    masked = run_etl(["db", "url"], env)
    assert masked.returncode == 0 and masked.stdout.strip() == with_password(pg_dsn).replace(
        PASSWORD, "***"
    )
    shown = run_etl(["db", "url", "--show-password"], env)
    assert shown.stdout.strip() == with_password(pg_dsn)
    keyvalue = run_etl(
        ["db", "url"], {**env, "ETL_PG_DSN": f"host=db user=etl password={PASSWORD}"}
    )
    assert keyvalue.stdout.strip() == "host=db user=etl password=***"
    everything = missing.stderr + unreachable.stderr + masked.stdout + masked.stderr + done.stderr
    assert PASSWORD not in everything + keyvalue.stdout


@pytest.mark.slow
def test_db_url_of_the_embedded_warehouse_works_while_db_serve_keeps_it_up(
    warehouse_dir: Settings,
) -> None:
    env = env_of(warehouse_dir)
    down = run_etl(["db", "url"], env)
    assert down.returncode == 3 and "`etl db serve`" in one_line(down)
    assert down.stdout == ""  # nothing a script could take for a URI

    serving = start_etl(["db", "serve"], env)
    try:
        wait_for(serving, "is up at", timeout=60)
        done = run_etl(["db", "url"], env)
        assert done.returncode == 0, done.stderr
        url = done.stdout.strip()
        assert url.startswith("postgresql://postgres") and "/etl?host=" in url
        assert query(url, "SELECT count(*) AS n FROM metrics_hourly")["n"][0] == 2 * 3
    finally:
        serving.send_signal(signal.SIGTERM)
        out, _ = serving.communicate(timeout=30)
    assert serving.returncode == 0 and "stopped serving" in out, out
    gone_down = run_etl(["db", "url"], env)
    assert gone_down.returncode == 3, gone_down.stdout  # the server stopped with db serve

    nowhere = run_etl(
        ["db", "url"],
        env_of(replace(warehouse_dir, data_dir=warehouse_dir.data_dir.parent / "none")),
    )
    assert nowhere.returncode == 2 and "no warehouse yet" in one_line(nowhere)


@pytest.mark.parametrize(
    ("dsn", "bare", "password"),
    [
        ("postgresql://etl:s3cret@db:5432/etl", "postgresql://etl@db:5432/etl", "s3cret"),
        (
            "postgresql://etl:p%40ss%3Aw@db/etl?sslmode=require",
            "postgresql://etl@db/etl?sslmode=require",
            "p@ss:w",
        ),
        (
            "postgresql://etl@db/etl?password=x%26y&sslmode=require",
            "postgresql://etl@db/etl?sslmode=require",
            "x&y",
        ),
        (
            "postgresql://postgres:@/etl?host=/tmp/pg",
            "postgresql://postgres@/etl?host=/tmp/pg",
            None,
        ),
        ("host=db user=etl password='a b\\'c' dbname=etl", "host=db user=etl  dbname=etl", "a b'c"),
        ("host=db user=etl", "host=db user=etl", None),
    ],
)
def test_split_password(dsn: str, bare: str, password: str | None) -> None:
    assert split_password(dsn) == (bare, password)


# -- 3. logs with a bound ----------------------------------------------------------------------


@pytest.mark.slow
def test_the_hourly_rollups_log_rotates_and_stays_under_its_bound(
    settings: Settings, vclock
) -> None:
    """100 simulated hours of a chatty rollup child (50 kB each, 5 MB in all): four files at
    most, each at most 1 MiB plus one run's output (rotation happens before a launch)."""
    import io

    from rich.console import Console

    from etl.collect.rollup_child import RollupLauncher
    from etl.collect.view import CollectorView

    run_bytes = 50_001
    chatty = [sys.executable, "-c", f"print('x' * {run_bytes - 1})"]
    view = CollectorView(live=False, out=Console(file=io.StringIO(), width=200))
    launcher = RollupLauncher(settings, view, vclock, command=chatty)
    for _ in range(100):
        launcher.tick()
        assert launcher.proc is not None
        launcher.proc.wait(30)
        launcher.tick()  # reaped
        vclock.sleep(3600)
    assert (launcher.launched, launcher.failed) == (100, 0)
    logs = sorted(settings.data_dir.glob("rollup.log*"))
    assert [p.name for p in logs] == ["rollup.log", *(f"rollup.log.{k}" for k in (1, 2, 3))]
    sizes = [p.stat().st_size for p in logs]
    assert all(n <= RollupLauncher.LOG_MAX_BYTES + run_bytes for n in sizes), sizes
    assert sum(sizes) % run_bytes == 0  # whole runs only: rotation never cuts one


@pytest.mark.slow
def test_every_log_of_the_embedded_server_stays_under_its_bound(open_dir: Path) -> None:
    """A day of hourly rollups (each starts and stops the server), a chatty server now and then,
    and a data dir from before the bound whose log had grown for years."""
    bound = pg_logs.LOG_MAX_BYTES
    start_hour = hour_floor(int(time.time() * 1000)) - 26 * HOUR_MS
    settings = replace(load_settings(env={}), data_dir=open_dir / "data", symbols=tuple(SYMBOLS))
    pgdata = settings.paths.pg
    seed_ticks(settings.staging_path, SYMBOLS, start_hour, 25 * 60, interval_ms=60_000)
    run_rollup(settings, until_ms=start_hour + HOUR_MS)
    with (pgdata / "log").open("ab") as fh:  # as years of unbounded starts left it
        fh.write(b"2025-01-01 00:00:00 UTC [1] LOG:  an old line\n" * (3 * bound // 46))
    assert (pgdata / "log").stat().st_size > 2 * bound

    largest: dict[str, int] = {}
    for k in range(1, 25):
        hour_end = start_hour + (k + 1) * HOUR_MS
        result = run_rollup(settings, until_ms=hour_end, now=lambda e=hour_end: e / 1000 + 11)
        assert result.hours == 1
        if k % 8 == 0:  # a chatty server: 1.5 MiB of log in one session
            with embedded_server(pgdata) as uri:
                execute(
                    uri,
                    "DO $$ BEGIN FOR i IN 1..1500 LOOP "
                    "RAISE LOG 'chatty %', repeat('x', 1000); END LOOP; END $$",
                )
                time.sleep(0.5)
                during = max(p.stat().st_size for p in pg_logs.log_files(pgdata))
                assert during > bound  # the bound is really exercised
        assert gone(pgdata)
        for path in pg_logs.log_files(pgdata):
            size = path.stat().st_size
            largest[path.name] = max(largest.get(path.name, 0), size)
            assert size <= bound, (path, size)
    with embedded_server(pgdata) as uri:
        collector = query(uri, "SELECT current_setting('logging_collector') AS on")["on"][0]
    assert collector == "on"
    names = {p.name for p in pg_logs.log_files(pgdata)}
    assert names <= {"log"} | {f"postgresql-{h:02d}.log" for h in range(24)}  # a fixed set
    assert (pgdata / "log").stat().st_size <= bound
    from etl.jobs.status import log_sizes

    shown = log_sizes(settings)  # what `etl status` lists under logs: every one of them
    assert set(shown) == {str(p) for p in pg_logs.log_files(pgdata)}
    print(f"largest log files over the run (bound {bound:,} B): {largest}")


# -- 4. the systemd unit -----------------------------------------------------------------------


# -- 5. disk stays bounded ---------------------------------------------------------------------


@pytest.fixture
def many_symbols() -> list[str]:
    return [f"S{i:04d}USDT" for i in range(3000)]


@pytest.mark.slow
def test_the_staging_file_levels_off_at_one_retention_window(
    settings: Settings, pg_dsn: str, many_symbols: list[str]
) -> None:
    """Three simulated days of 3,000-tick polls through the collector's append and the rollup's
    purge: the file (with its WAL) stops growing once purges begin, near one window of ticks."""
    interval_s = 120
    days = 3
    pgs = replace(settings, pg_dsn=pg_dsn, raw_retention_h=24.0, interval_s=float(interval_s))
    start_ms = hour_floor(int(time.time() * 1000)) - (days + 1) * 24 * HOUR_MS
    base = [10.0 + i for i in range(len(many_symbols))]
    sizes: list[tuple[int, int]] = []  # (hour index, bytes of file + WAL)

    def on_disk() -> int:
        return sum(v for k, v in st.db.file_sizes().items() if not k.endswith("-shm"))

    window = 0
    with Staging(pgs.staging_path, synchronous=pgs.sqlite_synchronous) as st:
        for hour in range(days * 24):
            hour_ms = start_ms + hour * HOUR_MS
            for poll in range(3600 // interval_s):
                wiggle = 1.0 + 0.001 * math.sin(hour * 31 + poll)
                st.ticks.append(
                    many_symbols, [p * wiggle for p in base], hour_ms + poll * interval_s * 1000
                )
            if hour == 23:
                window = st.path.stat().st_size  # exactly 24 h staged, nothing purged yet
            end_s = (hour_ms + HOUR_MS) / 1000
            result = run_rollup(pgs, now=lambda e=end_s: e + 11, apply_retention=False)
            assert result.hours == 1
            sizes.append((hour, on_disk()))
        staged_hours = len(st.ticks.hour_sizes())
    steady = max(size for hour, size in sizes if hour >= 48)
    day2 = max(size for hour, size in sizes if 24 <= hour < 48)
    ticks_per_window = 24 * (3600 // interval_s) * len(many_symbols)
    print(
        f"one retention window: {ticks_per_window:,} ticks, {window / 2**20:.1f} MiB; "
        f"steady state (day 3, file + WAL): {steady / 2**20:.1f} MiB = {steady / window:.2f}x; "
        f"day 2: {day2 / window:.2f}x; hours staged at the end: {staged_hours}"
    )
    assert steady <= 1.5 * window
    assert steady <= 1.02 * day2  # levelled off: day 3 no bigger than day 2
    assert staged_hours <= 26
