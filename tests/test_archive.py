"""The Parquet archive of staged ticks (docs/archive.md): written and recorded before the purge,
never twice, whole or not at all through kill -9 at every step, refused when damaged, on a local
disk or an S3-compatible server; bars rebuilt from it equal the live ones bit for bit; Polars and
DuckDB read it; `etl status` reports it. Real SQLite files, a real PostgreSQL, real processes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import jsonschema
import polars as pl
import pytest

from etl.config import Settings
from etl.hours import HOUR_MS, hour_floor, now_ms
from etl.jobs.rollup import run_rebuild, run_rollup
from etl.staging.archive import Archive
from etl.staging.store import Staging
from tests.conftest import etl_env, one_line, run_etl
from tests.pgutil import query, seed_ticks

ROOT = Path(__file__).resolve().parent.parent
POLLED = ["BTCUSDT", "ETHUSDT"]
TRADED = ["SOLUSDT", "XRPUSDT"]


def stage(path: Path, first: int, hours: int) -> None:
    """Poll ticks of two symbols (a tie in time in one hour), and trades of two others with a
    chain that starts inside the first hour, ids missing in hour 2 and a recorded hole in hour
    3: everything a bar takes from outside its ticks."""
    seed_ticks(path, POLLED, first, polls=hours * 720)
    with Staging(path) as st:
        st.ticks.append(["BTCUSDT"], [123.25], first + HOUR_MS + 5_017)  # same ts as a poll
        syms = st.ticks.symbol_ids(TRADED)
        rows = []
        for k, sym in enumerate(syms):
            agg = 1_000 * (k + 1)
            for i in range(hours * 360):
                ts = first + 1_800_000 * (k == 0) + i * 10_000 + 3
                if ts >= first + hours * HOUR_MS:
                    break
                if k == 1 and first + 2 * HOUR_MS + 600_000 <= ts < first + 2 * HOUR_MS + 660_000:
                    agg += 1  # ids never staged: a gap inside hour 2
                    continue
                rows.append((sym, ts, 50.0 + (i * 7 % 13) / 8, agg, 0.25 + i % 3, 1 + i % 2))
                agg += 1
        trades = pl.DataFrame(
            rows, schema=["sym", "ts", "price", "agg_id", "qty", "trades"], orient="row"
        )
        last = trades.group_by("sym").agg(pl.col("agg_id").max(), pl.col("ts").max()).sort("sym")
        st.trades.append(
            trades,
            pl.DataFrame(
                {
                    "sym": last["sym"],
                    "last_id": last["agg_id"],
                    "last_ts": last["ts"],
                    "since_ms": [first + 1_800_000, first],
                    "live_ms": [first + hours * HOUR_MS + 1] * 2,
                }
            ),
            pl.DataFrame(
                {
                    "sym": [syms[0]],
                    "after_id": [5],
                    "before_id": [17],
                    "from_ms": [first + 3 * HOUR_MS + 100],
                    "to_ms": [first + 3 * HOUR_MS + 200],
                    "reason": ["test"],
                    "found_ms": [first + 4 * HOUR_MS],
                }
            ),
        )


def all_rows(path: Path, hours: list[int]) -> pl.DataFrame:
    """Every staged row of ``hours`` with every column, named."""
    with Staging(path) as st:
        names = st.ticks.symbols()
        parts = []
        for hour in hours:
            polls, trades = st.ticks.hour_rows(hour, 2**62)
            parts += [polls, trades]
    frame = pl.concat(parts, how="diagonal_relaxed").join(names, on="sym").drop("sym")
    return frame.select("seq", "symbol", "ts", "price", "agg_id", "qty", "trades").sort("seq")


def archived_rows(archive_dir: str) -> pl.DataFrame:
    archive = Archive(archive_dir)
    parts = []
    for m in archive.manifests():
        hour = archive.read_hour(m)
        parts += [hour.polls, hour.trades]
    return (
        pl.concat(parts, how="diagonal_relaxed")
        .select("seq", "symbol", "ts", "price", "agg_id", "qty", "trades")
        .sort("seq")
    )


def bars_of(dsn: str) -> tuple[list[tuple], list[tuple]]:
    hourly = query(dsn, "SELECT * FROM metrics_hourly ORDER BY symbol, bucket").drop("updated_at")
    daily = query(dsn, "SELECT * FROM metrics_daily ORDER BY symbol, day").drop("updated_at")
    return hourly.rows(), daily.rows()


@pytest.fixture
def hours_ago() -> int:
    return hour_floor(now_ms()) - 6 * HOUR_MS


@pytest.fixture
def archived(pgs: Settings, tmp_path: Path, hours_ago: int) -> Settings:
    """Five hours staged and rolled up one at a time, as the collector's hourly child does,
    then archived and purged by a rollup with a short raw retention."""
    settings = replace(pgs, archive_dir=str(tmp_path / "archive"), interval_s=5.0)
    stage(settings.staging_path, hours_ago, 5)
    for k in range(5):
        run_rollup(
            replace(settings, raw_retention_h=1000.0), until_ms=hours_ago + (k + 1) * HOUR_MS
        )
    return settings


@pytest.mark.slow
def test_archive_before_purge_keeps_every_staged_row_and_records_each_file(
    archived: Settings, hours_ago: int
) -> None:
    hours = [hours_ago + k * HOUR_MS for k in range(5)]
    before = all_rows(archived.staging_path, hours)
    done = run_rollup(replace(archived, raw_retention_h=0.5))
    assert done.archive is not None and done.archive.hours == 5 and done.archive.files == 10
    assert done.purged == before.height - 1  # the newest row always stays
    assert archived_rows(archived.archive_dir).equals(before)  # type: ignore[arg-type]
    root = Path(archived.archive_dir)  # type: ignore[arg-type]
    with Staging(archived.staging_path) as st:
        files = st.archive_log.files()
        assert st.archive_log.archived().keys() == set(hours)
        assert st.ticks.count() == 1
        sid = st.id
    assert files.height == 10
    for row in files.iter_rows(named=True):
        data = (root / row["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == row["sha256"] and len(data) == row["bytes"]
        assert row["path"].startswith(f"source={row['source']}/date=")
        assert row["path"].endswith(f"/{sid}.parquet")
        frame = pl.read_parquet(root / row["path"])
        assert frame.height == row["rows"]
        assert frame["ts"].dt.epoch("ms").min() == row["min_ts"]
        assert frame["ts"].dt.epoch("ms").max() == row["max_ts"]
        if row["source"] == "trade":
            assert (frame["agg_id"].min(), frame["agg_id"].max()) == (row["min_id"], row["max_id"])
        manifest = json.loads((root / f"_manifests/{sid}").glob("*/*.json").__next__().read_text())
        assert manifest["format"] == "etl-archive/1"
    # every file of the hour is named by its manifest, with the same checksum
    archive = Archive(archived.archive_dir)  # type: ignore[arg-type]
    named = {f["path"]: f["sha256"] for m in archive.manifests() for f in m.files}
    assert named == dict(zip(files["path"], files["sha256"], strict=True))
    assert not list(root.rglob(".*.tmp"))


@pytest.mark.slow
def test_an_archived_hour_is_not_written_twice(archived: Settings, hours_ago: int) -> None:
    first = run_rollup(replace(archived, raw_retention_h=4.0))  # archives and purges 2 hours
    assert first.archive is not None and first.archive.hours == 2
    root = Path(archived.archive_dir)  # type: ignore[arg-type]
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*.parquet")}
    again = run_rollup(replace(archived, raw_retention_h=0.5))
    assert again.archive is not None
    assert (again.archive.hours, again.archive.already) == (3, 0)
    for path, stamp in stamps.items():
        assert path.stat().st_mtime_ns == stamp  # the first two hours untouched
    assert len(list(root.rglob("*.parquet"))) == 10


@pytest.mark.slow
def test_bars_rebuilt_from_the_archive_equal_the_live_bars_bit_for_bit(
    archived: Settings, make_db: Callable[[], str], hours_ago: int
) -> None:
    run_rollup(replace(archived, raw_retention_h=0.5))  # archive and purge every hour
    live = bars_of(archived.pg_dsn)  # type: ignore[arg-type]
    sources = {(row[0], row[11]) for row in live[0]}
    assert sources == {(s, "poll") for s in POLLED} | {(s, "trade") for s in TRADED}
    missing = [row[-1] for row in live[0] if row[11] == "trade"]
    assert missing.count(0) < len(missing) and max(missing) > 1  # edges, a gap and a hole
    rebuilt = replace(archived, pg_dsn=make_db())
    done = run_rebuild(rebuilt, since_ms=hours_ago, until_ms=hours_ago + 5 * HOUR_MS)
    assert (done.hours, done.files, done.unrecorded) == (5, 10, 0)
    assert done.made == done.bars == len(live[0])
    assert bars_of(rebuilt.pg_dsn) == live  # type: ignore[arg-type]
    # into the live warehouse, the same bars again change nothing
    same = run_rebuild(archived, since_ms=hours_ago, until_ms=hours_ago + 5 * HOUR_MS)
    assert same.bars == 0 and bars_of(archived.pg_dsn) == live  # type: ignore[arg-type]
