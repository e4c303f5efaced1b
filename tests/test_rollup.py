"""The rollup from a real SQLite staging file into a real PostgreSQL: correctness, idempotence,
crashes at every step, an unreachable server, concurrency and odd timestamps."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import adbc_driver_postgresql.dbapi as pg
import polars as pl
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from etl.config import Settings
from etl.hours import HOUR_MS, hour_floor
from etl.jobs.rollup import run_rollup
from etl.staging.store import Staging
from tests.conftest import etl_env, run_etl
from tests.pgutil import execute, query, seed_ticks, snapshot

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]


def staged_hours(path: Path) -> dict[int, int]:
    with Staging(path) as st:
        frame = st.ticks.read_window(-(2**62), 2**62)
    counts = frame.group_by(hour=pl.col("ts") // HOUR_MS * HOUR_MS).len()
    return dict(counts.iter_rows())


def test_db_init_applies_sql_and_makes_partitions_ahead(pgs: Settings) -> None:
    env = etl_env(pgs)
    for _ in range(2):  # idempotent
        done = run_etl(["db", "init"], env)
        assert done.returncode == 0, done.stderr
    parts = query(
        pgs.pg_dsn,  # type: ignore[arg-type]
        "SELECT c.relname AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'metrics_hourly'::regclass ORDER BY 1",
    )["name"].to_list()
    today = datetime.now(UTC)
    months = [(today.year * 12 + today.month - 1 + k) for k in range(3)]
    expected = [f"metrics_hourly_{m // 12:04d}{m % 12 + 1:02d}" for m in months]
    assert set(expected) <= set(parts)
    kind = query(
        pgs.pg_dsn, "SELECT relkind::text AS k FROM pg_class WHERE relname = 'metrics_hourly'"
    )  # type: ignore[arg-type]
    assert kind["k"].to_list() == ["p"]  # still partitioned


REF_SQL = """
SELECT symbol, to_timestamp(floor(ts / 3600000.0) * 3600) AS bucket,
       (array_agg(price ORDER BY ts, seq))[1] AS open, max(price) AS high, min(price) AS low,
       (array_agg(price ORDER BY ts DESC, seq DESC))[1] AS close, avg(price) AS mean,
       count(*)::int AS samples
FROM ref_ticks GROUP BY 1, 2 ORDER BY 1, 2
"""

offsets = st.one_of(
    st.sampled_from([0, 1, HOUR_MS - 1, HOUR_MS, 2 * HOUR_MS - 1, 2 * HOUR_MS]),
    st.integers(min_value=0, max_value=3 * HOUR_MS - 1),
)


@hsettings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(SYMBOLS),
            offsets,
            st.floats(min_value=1e-6, max_value=1e6, allow_nan=False, allow_infinity=False),
        ),
        min_size=1,
        max_size=200,
    )
)
@pytest.mark.slow
def test_committed_bars_match_a_sql_aggregate(
    pgs: Settings, make_db: Callable[[], str], ticks: list[tuple[str, int, float]]
) -> None:
    now_hour = hour_floor(int(time.time() * 1000))
    base = now_hour - 48 * HOUR_MS
    dsn = make_db()
    work = Path(tempfile.mkdtemp(dir=pgs.data_dir))
    settings = replace(pgs, pg_dsn=dsn, data_dir=work, sqlite_path=work / "t.sqlite3")
    frame = pl.DataFrame(
        [(s, base + o, p) for s, o, p in ticks], schema=["symbol", "ts", "price"], orient="row"
    )
    with Staging(settings.staging_path) as staging:
        staging.ticks.append_frame(frame)
        staged = staging.ticks.read_window(-(2**62), 2**62)
    run_rollup(settings)
    with pg.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
        cur.adbc_ingest("ref_ticks", staged.to_arrow(), mode="create")
    expected = query(dsn, REF_SQL)
    got = query(
        dsn,
        "SELECT symbol, bucket, open, high, low, close, mean, samples FROM metrics_hourly ORDER BY 1, 2",
    )
    assert got.height == expected.height
    for a, b in zip(got.iter_rows(named=True), expected.iter_rows(named=True), strict=True):
        for key in ("symbol", "bucket", "open", "high", "low", "close", "samples"):
            assert a[key] == b[key], (key, a, b)
        assert a["mean"] == pytest.approx(b["mean"], rel=1e-9)
    shutil.rmtree(work)


def test_rollup_twice_gives_identical_tables(pgs: Settings) -> None:
    now_hour = hour_floor(int(time.time() * 1000))
    seed_ticks(pgs.staging_path, SYMBOLS, now_hour - 5 * HOUR_MS, polls=4 * 720)
    env = etl_env(pgs)
    first = run_etl(["rollup"], env)
    assert first.returncode == 0, first.stderr
    before = snapshot(pgs.pg_dsn)  # type: ignore[arg-type]
    assert len(before["hourly"]) == 4 * 3 and len(before["runs"]) == 4
    second = run_etl(["rollup"], env)
    assert second.returncode == 0
    assert snapshot(pgs.pg_dsn) == before  # type: ignore[arg-type]
    updated = query(pgs.pg_dsn, "SELECT count(DISTINCT updated_at) AS n FROM metrics_hourly")  # type: ignore[arg-type]
    assert updated["n"][0] == 1  # the second run touched no row


def test_rerun_rolls_up_committed_hours_again_to_the_same_result(pgs: Settings) -> None:
    now_hour = hour_floor(int(time.time() * 1000))
    seed_ticks(pgs.staging_path, SYMBOLS, now_hour - 3 * HOUR_MS, polls=2 * 720)
    run_rollup(pgs)
    before = snapshot(pgs.pg_dsn)  # type: ignore[arg-type]
    summary = run_rollup(pgs, rerun=True)
    assert summary.hours == 2 and summary.bars == 0  # read again, nothing changed
    assert snapshot(pgs.pg_dsn) == before  # type: ignore[arg-type]


@pytest.mark.slow
@pytest.mark.parametrize("point", ["after_read", "before_commit", "after_commit", "before_purge"])
def test_kill_9_at_any_point_then_rerun_converges(
    pgs: Settings, make_db: Callable[[], str], tmp_path: Path, point: str
) -> None:
    now_hour = hour_floor(int(time.time() * 1000))
    # 8 hours staged, 1 h raw retention: the run commits and purges most of them.
    seed_ticks(pgs.staging_path, SYMBOLS, now_hour - 8 * HOUR_MS, polls=8 * 720)
    pgs = replace(pgs, raw_retention_h=1.0, rollup_chunk_hours=3)
    original = staged_hours(pgs.staging_path)

    reference = replace(pgs, pg_dsn=make_db(), sqlite_path=tmp_path / "ref.sqlite3")
    shutil.copy(pgs.staging_path, reference.sqlite_path)  # type: ignore[arg-type]
    assert run_etl(["rollup"], etl_env(reference)).returncode == 0

    crashed = run_etl(["rollup"], etl_env(pgs, ETL_CRASH_AT=point))
    assert crashed.returncode == -9, crashed.stdout + crashed.stderr
    committed = {row[0] for row in snapshot(pgs.pg_dsn)["runs"]}  # type: ignore[arg-type]
    now_staged = staged_hours(pgs.staging_path)
    for hour, count in original.items():
        if datetime.fromtimestamp(hour / 1000, UTC) not in committed:
            assert now_staged.get(hour) == count  # nothing of an uncommitted hour is gone

    rerun = run_etl(["rollup"], etl_env(pgs))
    assert rerun.returncode == 0, rerun.stderr
    assert snapshot(pgs.pg_dsn) == snapshot(reference.pg_dsn)  # type: ignore[arg-type]
    assert staged_hours(pgs.staging_path) == staged_hours(reference.staging_path)


def test_unreachable_postgres_exits_3_and_the_next_run_catches_up(pgs: Settings) -> None:
    now_hour = hour_floor(int(time.time() * 1000))
    seed_ticks(pgs.staging_path, SYMBOLS, now_hour - 3 * HOUR_MS, polls=3 * 720)
    pgs = replace(pgs, raw_retention_h=0.5)
    before = staged_hours(pgs.staging_path)
    down = run_etl(["rollup"], etl_env(replace(pgs, pg_dsn="postgresql://etl@127.0.0.1:9/etl")))
    assert down.returncode == 3
    lines = down.stderr.strip().splitlines()
    assert len(lines) == 1 and "PostgreSQL unreachable" in lines[0]
    assert "Traceback" not in down.stdout + down.stderr
    assert staged_hours(pgs.staging_path) == before
    up = run_etl(["rollup"], etl_env(pgs))
    assert up.returncode == 0, up.stderr
    assert len(snapshot(pgs.pg_dsn)["runs"]) == 3  # type: ignore[arg-type]


def test_a_bad_dsn_is_a_configuration_error(pgs: Settings) -> None:
    done = run_etl(
        ["rollup"], etl_env(replace(pgs, pg_dsn="postgresql://etl@localhost:notaport/etl"))
    )
    assert done.returncode == 2, done.stderr
    assert "bad PostgreSQL DSN" in done.stderr


@pytest.mark.slow
def test_two_rollups_started_together_give_one_result(
    pgs: Settings, make_db: Callable[[], str], tmp_path: Path
) -> None:
    now_hour = hour_floor(int(time.time() * 1000))
    seed_ticks(pgs.staging_path, SYMBOLS, now_hour - 6 * HOUR_MS, polls=6 * 720)
    reference = replace(pgs, pg_dsn=make_db(), sqlite_path=tmp_path / "ref.sqlite3")
    shutil.copy(pgs.staging_path, reference.sqlite_path)  # type: ignore[arg-type]
    assert run_etl(["rollup"], etl_env(reference)).returncode == 0
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "etl", "rollup"],
            env=etl_env(pgs),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    got = snapshot(pgs.pg_dsn)  # type: ignore[arg-type]
    assert got == snapshot(reference.pg_dsn)  # type: ignore[arg-type]
    assert len(got["runs"]) == 6 and len(got["hourly"]) == 18


def test_far_past_and_future_ticks_never_fail_the_batch(pgs: Settings) -> None:
    now_hour = hour_floor(int(time.time() * 1000))
    seed_ticks(pgs.staging_path, SYMBOLS, now_hour - 2 * HOUR_MS, polls=720)
    y2001 = int(datetime(2001, 3, 4, 5, 6, tzinfo=UTC).timestamp() * 1000)
    y2100 = int(datetime(2100, 1, 1, 0, 30, tzinfo=UTC).timestamp() * 1000)
    with Staging(pgs.staging_path) as st:
        st.ticks.append(["BTCUSDT"], [42.0], y2001)
        st.ticks.append(["BTCUSDT"], [43.0], y2100)
    keep = replace(pgs, hourly_retention_d=100_000.0)  # keep 2001's partition to look at it
    summary = run_rollup(keep)
    assert summary.future_ticks == 1
    bars = query(
        keep.pg_dsn,
        "SELECT tableoid::regclass::text AS part, bucket, close FROM metrics_hourly WHERE bucket < '2002-01-01'",
    )  # type: ignore[arg-type]
    assert bars.rows() == [("metrics_hourly_200103", datetime(2001, 3, 4, 5, tzinfo=UTC), 42.0)]
    assert len(snapshot(keep.pg_dsn)["hourly"]) == 3 + 1  # type: ignore[arg-type]
    with Staging(pgs.staging_path) as st:
        assert st.ticks.count_between(y2100, None) == 1  # set aside, still staged


def test_the_open_hour_is_never_rolled_up(pgs: Settings) -> None:
    from etl.warehouse.store import open_warehouse

    now = int(time.time() * 1000)
    with Staging(pgs.staging_path) as st:
        st.ticks.append(["BTCUSDT"], [1.0], now - 1000)
    with open_warehouse(pgs) as wh:  # the rollup finds nothing closed and leaves it untouched
        wh.migrate()
    summary = run_rollup(pgs)
    assert summary.hours == 0
    assert snapshot(pgs.pg_dsn)["hourly"] == []  # type: ignore[arg-type]


def test_purge_follows_the_ledger_not_the_clock(pgs: Settings) -> None:
    now_hour = hour_floor(int(time.time() * 1000))
    seed_ticks(pgs.staging_path, SYMBOLS, now_hour - 6 * HOUR_MS, polls=6 * 720)
    pgs = replace(pgs, raw_retention_h=3.0)
    first = run_rollup(pgs)
    assert first.purged == 3 * 720 * 3  # the three hours that ended more than 3 h ago
    left = staged_hours(pgs.staging_path)
    # hours ending more than 3 h ago are gone (the newest row is always kept), later ones stay
    assert sorted(h for h, n in left.items() if n > 1) == [
        now_hour - k * HOUR_MS for k in (3, 2, 1)
    ]
    # a late tick for a purged hour stays staged, and one for an unpurged hour is rolled up
    with Staging(pgs.staging_path) as st:
        st.ticks.append(["BTCUSDT"], [1.0], now_hour - 6 * HOUR_MS + 1)
        st.ticks.append(["BTCUSDT"], [1e9], now_hour - 2 * HOUR_MS + 1)
    summary = run_rollup(pgs)
    assert summary.hours == 1 and summary.skipped_hours == [now_hour - 6 * HOUR_MS]
    high = query(
        pgs.pg_dsn,
        "SELECT high FROM metrics_hourly WHERE symbol = 'BTCUSDT' AND bucket = $1",
        [datetime.fromtimestamp((now_hour - 2 * HOUR_MS) / 1000, UTC)],
    )  # type: ignore[arg-type]
    assert high["high"][0] == 1e9
    with Staging(pgs.staging_path) as st:
        assert st.ticks.count_between(now_hour - 6 * HOUR_MS, now_hour - 5 * HOUR_MS) == 1


def test_years_of_ledger_before_the_staged_hours_change_no_decision(pgs: Settings) -> None:
    """A rollup reads the ledger only from the oldest staged hour on (years of it cost 0.58 s a
    run); what it decides is the same as with the whole ledger."""
    now_hour = hour_floor(int(time.time() * 1000))
    seed_ticks(pgs.staging_path, SYMBOLS, now_hour - 6 * HOUR_MS, polls=6 * 720)
    pgs = replace(pgs, raw_retention_h=3.0)
    assert run_rollup(pgs).hours == 6
    with Staging(pgs.staging_path) as st:
        staging_id = st.id
    execute(  # three years of this file's hours before its staged ones, all purged long ago
        pgs.pg_dsn,  # type: ignore[arg-type]
        "INSERT INTO rollup_runs (staging_id, staging_name, hour, symbols, rows, ticks_read, "
        f"max_seq, bars_lost, started_at, finished_at, purged_at) SELECT '{staging_id}'::uuid, "
        "'old', h, 3, 3, 2160, 1, 0, h, h, h FROM generate_series("
        f"to_timestamp({(now_hour - 6 * HOUR_MS) / 1000}) - interval '3 years', "
        f"to_timestamp({(now_hour - 7 * HOUR_MS) / 1000}), interval '1 hour') h",
    )
    again = run_rollup(pgs)
    assert (again.hours, again.skipped_hours) == (0, [])  # every staged hour is committed
    with Staging(pgs.staging_path) as st:  # late ticks: a purged hour's, an unpurged one's
        st.ticks.append(["BTCUSDT"], [1.0], now_hour - 6 * HOUR_MS + 1)
        st.ticks.append(["BTCUSDT"], [1e9], now_hour - 2 * HOUR_MS + 1)
    summary = run_rollup(pgs)
    assert summary.hours == 1 and summary.skipped_hours == [now_hour - 6 * HOUR_MS]
    high = query(
        pgs.pg_dsn,  # type: ignore[arg-type]
        "SELECT high FROM metrics_hourly WHERE symbol = 'BTCUSDT' AND bucket = $1",
        [datetime.fromtimestamp((now_hour - 2 * HOUR_MS) / 1000, UTC)],
    )
    assert high["high"][0] == 1e9
    assert query(pgs.pg_dsn, "SELECT count(*) AS n FROM metrics_hourly")["n"][0] == 18  # type: ignore[arg-type]


def test_latest_price_view_gives_the_newest_close(pgs: Settings) -> None:
    now_hour = hour_floor(int(time.time() * 1000))
    seed_ticks(pgs.staging_path, SYMBOLS, now_hour - 3 * HOUR_MS, polls=2 * 720)
    run_rollup(pgs)
    with Staging(pgs.staging_path) as st:
        last = st.ticks.read_window(now_hour - 2 * HOUR_MS, now_hour - HOUR_MS).sort("ts", "seq")
    expected = (
        last.group_by("symbol").agg(pl.col("price").last(), pl.col("ts").last()).sort("symbol")
    )
    view = query(pgs.pg_dsn, "SELECT symbol, price, at FROM latest_price ORDER BY symbol")  # type: ignore[arg-type]
    assert view["symbol"].to_list() == expected["symbol"].to_list()
    assert view["price"].to_list() == expected["price"].to_list()
    assert [int(t.timestamp() * 1000) for t in view["at"]] == expected["ts"].to_list()


@pytest.mark.slow
def test_collector_rolls_up_closed_hours_in_a_child_process(pgs: Settings) -> None:
    now_hour = hour_floor(int(time.time() * 1000))
    import io

    from rich.console import Console

    from etl.collect.loop import Collector
    from etl.collect.view import CollectorView

    seed_ticks(pgs.staging_path, SYMBOLS, now_hour - 3 * HOUR_MS, polls=2 * 720)
    out = Console(file=io.StringIO(), width=200)
    stats = Collector(pgs, rollup=True, view=CollectorView(live=False, out=out)).run(polls=10)
    assert stats.rollups >= 1 and stats.polls_ok == 10
    text = out.file.getvalue()  # type: ignore[attr-defined]
    assert "rollup started" in text
    deadline = time.monotonic() + 60
    while len(snapshot(pgs.pg_dsn)["runs"]) < 2:  # type: ignore[arg-type]
        assert time.monotonic() < deadline, (pgs.data_dir / "rollup.log").read_text()
        time.sleep(0.5)
    with Staging(pgs.staging_path) as st:
        polled = st.ticks.read_window(now_hour, 2**62)
    stamps = sorted(set(polled["ts"].to_list()))
    assert len(stamps) == 10
    assert max(ts % 200 for ts in stamps) < 150  # the rollup child did not delay the polls


def test_no_rollup_starts_no_child(settings: Settings) -> None:
    from etl.collect.loop import Collector
    from etl.collect.view import CollectorView

    stats = Collector(settings, rollup=False, view=CollectorView(live=False)).run(polls=2)
    assert stats.rollups == 0
    assert not (settings.data_dir / "rollup.log").exists()


def test_rerun_keeps_bars_of_purged_hours(pgs: Settings) -> None:
    now_hour = hour_floor(int(time.time() * 1000))
    seed_ticks(pgs.staging_path, SYMBOLS, now_hour - 6 * HOUR_MS, polls=5 * 720)
    pgs = replace(pgs, raw_retention_h=3.0)
    run_rollup(pgs)  # hours -6 .. -4 purged (but for the newest row), -3 .. -2 still staged
    before = snapshot(pgs.pg_dsn)  # type: ignore[arg-type]
    with Staging(pgs.staging_path) as st:
        st.ticks.append(
            ["BTCUSDT"], [1e9], now_hour - 5 * HOUR_MS + 7
        )  # a late tick in a purged hour
    summary = run_rollup(pgs, rerun=True)
    assert now_hour - 5 * HOUR_MS in summary.skipped_hours
    assert summary.hours == 2  # only the hours whose ticks are all still staged
    after = snapshot(pgs.pg_dsn)  # type: ignore[arg-type]
    assert after["hourly"] == before["hourly"] and after["daily"] == before["daily"]


def test_a_crash_between_purge_and_ledger_never_rolls_up_a_partial_hour(pgs: Settings) -> None:
    now_hour = hour_floor(int(time.time() * 1000))
    seed_ticks(pgs.staging_path, SYMBOLS, now_hour - 5 * HOUR_MS, polls=4 * 720)
    pgs = replace(pgs, raw_retention_h=2.0)
    crashed = run_etl(["rollup"], etl_env(pgs, ETL_CRASH_AT="after_purge"))
    assert crashed.returncode == -9
    hourly = snapshot(pgs.pg_dsn)["hourly"]  # type: ignore[arg-type]
    with Staging(pgs.staging_path) as st:  # ticks purged, ledger not told: then a late tick
        st.ticks.append(["BTCUSDT"], [1e9], now_hour - 5 * HOUR_MS + 7)
    summary = run_rollup(pgs)
    assert summary.hours == 0 and now_hour - 5 * HOUR_MS in summary.skipped_hours
    assert snapshot(pgs.pg_dsn)["hourly"] == hourly  # type: ignore[arg-type]
    assert all(row[-1] for row in snapshot(pgs.pg_dsn)["runs"][:2])  # type: ignore[arg-type]


def test_a_thin_poll_bar_never_replaces_a_kline_bar(pgs: Settings) -> None:
    from etl.bars import kline_bars
    from etl.warehouse.store import open_warehouse

    now_hour = hour_floor(int(time.time() * 1000))
    hour = now_hour - 3 * HOUR_MS
    minutes = pl.DataFrame(
        {
            "open_ms": [hour + m * 60_000 for m in range(60)],
            "open": [1.0] * 60,
            "high": [2.0] * 60,
            "low": [0.5] * 60,
            "close": [1.5] * 60,
        }
    )
    with open_warehouse(pgs) as wh:
        wh.migrate()
        wh.write_bars(kline_bars(minutes, "BTCUSDT"))
    seed_ticks(pgs.staging_path, ["BTCUSDT"], hour, polls=10, interval_ms=1000)  # 10 of 18,000
    summary = run_rollup(pgs)
    assert summary.hours == 1 and summary.kline_kept == 1
    kept = query(pgs.pg_dsn, "SELECT source, samples FROM metrics_hourly")  # type: ignore[arg-type]
    assert kept.rows() == [("kline", 60)]
