"""The Parquet archive of staged ticks (docs/archive.md): written and recorded before the purge,
never twice, whole or not at all through kill -9 at every step, refused when damaged, on a local
disk or an S3-compatible server; bars rebuilt from it equal the live ones bit for bit; Polars and
DuckDB read it; `etl status` reports it. Real SQLite files, a real PostgreSQL, real processes."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import jsonschema
import polars as pl
import pytest

from etl.config import Settings
from etl.hours import HOUR_MS, hour_floor, now_ms
from etl.jobs.rebuild import run_rebuild
from etl.jobs.rollup import run_rollup
from etl.staging.archive import Archive
from etl.staging.store import Staging
from tests.conftest import etl_env, one_line, run_etl
from tests.pgutil import query, seed_ticks

ROOT = Path(__file__).resolve().parent.parent
POLLED = ["BTCUSDT", "ETHUSDT"]
TRADED = ["SOLUSDT", "XRPUSDT"]


def stage(path: Path, first: int, hours: int) -> None:
    """Poll ticks of two symbols (a tie in time in one hour), and trades of two others with a
    chain that starts inside the first hour, ids missing across hours 0 and 1 and inside hour 2,
    and a recorded hole in hour 3: everything a bar takes from outside its ticks."""
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
                inside = first + 2 * HOUR_MS + 600_000 <= ts < first + 2 * HOUR_MS + 660_000
                across = abs(ts - (first + HOUR_MS)) < 20_000
                if (k == 1 and inside) or (k == 0 and across):
                    agg += 1  # ids never staged: a gap inside hour 2, one across hours 0 and 1
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


LATE_HOLE = pl.DataFrame(
    {"sym": [0], "after_id": [2_000_000], "before_id": [2_000_100], "from_ms": [0], "to_ms": [0]}
).with_columns(reason=pl.lit("given up after the rollup"), found_ms=pl.lit(now_ms()))


@pytest.fixture
def hours_ago() -> int:
    return hour_floor(now_ms()) - 6 * HOUR_MS


@pytest.fixture
def archived(pgs: Settings, tmp_path: Path, hours_ago: int) -> Settings:
    """Five hours staged and rolled up, the first two in one read (as a backlog is), then one
    at a time (as the collector's hourly child does); not purged yet."""
    settings = replace(pgs, archive_dir=str(tmp_path / "archive"), interval_s=5.0)
    stage(settings.staging_path, hours_ago, 5)
    for k in (2, 3, 4, 5):
        run_rollup(replace(settings, raw_retention_h=1000.0), until_ms=hours_ago + k * HOUR_MS)
    return settings


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


def test_an_archived_hour_is_not_written_twice(archived: Settings, hours_ago: int) -> None:
    purging = replace(archived, raw_retention_h=0.5)
    killed = run_etl(["rollup"], etl_env(purging, ETL_CRASH_AT="archive_recorded"))
    assert killed.returncode == -9  # the first hour recorded, nothing purged
    root = Path(archived.archive_dir)  # type: ignore[arg-type]
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    assert len([p for p in stamps if p.suffix == ".parquet"]) == 2
    again = run_rollup(purging)
    assert again.archive is not None
    assert (again.archive.hours, again.archive.already) == (4, 1)
    for path, stamp in stamps.items():
        assert path.stat().st_mtime_ns == stamp  # the first hour's files and manifest untouched
    assert len(list(root.rglob("*.parquet"))) == 10
    after = run_rollup(purging)  # every hour purged now: nothing left to archive
    assert after.archive is None and after.purged == 0


def test_bars_rebuilt_from_the_archive_equal_the_live_bars_bit_for_bit(
    archived: Settings, make_db: Callable[[], str], hours_ago: int
) -> None:
    with Staging(archived.staging_path) as st:  # the feed gives up on ids of hour 1, late
        st.trades.append(
            pl.DataFrame(),
            holes=LATE_HOLE.with_columns(
                sym=st.ticks.symbol_ids(["XRPUSDT"])[0],
                from_ms=pl.lit(hours_ago + HOUR_MS + 5),
                to_ms=pl.lit(hours_ago + HOUR_MS + 50),
            ),
        )
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


CRASH_POINTS = [
    "archive_partial",
    "archive_written",
    "archive_manifest",
    "archive_recorded",
    "before_purge",
    "after_purge",
]


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_kill_9_at_each_archive_step_leaves_no_file_or_a_whole_one_and_loses_no_tick(
    archived: Settings, hours_ago: int, point: str
) -> None:
    hours = [hours_ago + k * HOUR_MS for k in range(5)]
    original = all_rows(archived.staging_path, hours)
    purging = replace(archived, raw_retention_h=0.5)
    crashed = run_etl(["rollup"], etl_env(purging, ETL_CRASH_AT=point))
    assert crashed.returncode == -9, crashed.stdout + crashed.stderr
    root = Path(archived.archive_dir)  # type: ignore[arg-type]
    if point == "archive_partial":  # killed half way through a file: the half is hidden
        assert [p.name.startswith(".") for p in root.rglob("*.tmp")] == [True]
    for path in root.rglob("*.parquet"):  # every file a reader sees is whole
        assert pl.read_parquet(path).height > 0
    with Staging(archived.staging_path) as st:
        recorded = st.archive_log.archived()
    left = all_rows(archived.staging_path, hours)
    for hour in hours:
        if hour not in recorded:  # not archived: not one of its ticks is gone
            mine = original.filter(
                (pl.col("seq") > 0) & (pl.col("ts") // HOUR_MS * HOUR_MS == hour)
            )
            assert left.filter(pl.col("ts") // HOUR_MS * HOUR_MS == hour).equals(mine)
    rerun = run_etl(["rollup"], etl_env(purging))
    assert rerun.returncode == 0, rerun.stderr
    assert archived_rows(archived.archive_dir).equals(original)  # type: ignore[arg-type]
    with Staging(archived.staging_path) as st:
        assert st.archive_log.archived().keys() == set(hours)
        assert st.ticks.count() == 1
    assert not list(root.rglob(".*.tmp"))
    assert not Archive(archived.archive_dir).unrecorded(  # type: ignore[arg-type]
        Archive(archived.archive_dir).manifests(),
        None,
        None,  # type: ignore[arg-type]
    )


def test_an_unwritable_archive_stops_the_purge_exits_3_and_status_is_degraded(
    archived: Settings, hours_ago: int, tmp_path: Path
) -> None:
    hours = [hours_ago + k * HOUR_MS for k in range(5)]
    original = all_rows(archived.staging_path, hours)
    (tmp_path / "a-file").write_text("not a folder")
    broken = replace(archived, raw_retention_h=0.5, archive_dir=str(tmp_path / "a-file" / "x"))
    done = run_etl(["rollup"], etl_env(broken))
    assert done.returncode == 3, done.stderr
    line = one_line(done)
    assert "cannot write the archive at" in line and "a-file/x/source=" in line
    assert "the ticks stay staged" in line
    assert all_rows(archived.staging_path, hours).equals(original)
    status = run_etl(["status", "--json"], etl_env(broken))
    report = json.loads(status.stdout)
    jsonschema.validate(report, STATUS_SCHEMA)
    assert status.returncode == 1 and report["health"] == "degraded"
    assert report["archive"]["overdue_hours"] and report["archive"]["hours"] == 0
    assert any("not archived" in p for p in report["problems"])
    assert any(
        "last rollup failed" in p and "cannot write the archive" in p for p in report["problems"]
    )
    fixed = run_etl(["rollup"], etl_env(replace(broken, archive_dir=archived.archive_dir)))
    assert fixed.returncode == 0, fixed.stderr
    assert archived_rows(archived.archive_dir).equals(original)  # type: ignore[arg-type]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 40 KiB file system of its own (tmpfs): a real full disk. Needs root and mount."""
    where = tmp_path / "small"
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=40k", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.strip()})")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_full_archive_disk_stops_the_purge_with_exit_3_and_loses_no_tick(
    archived: Settings, hours_ago: int, small_disk: Path, tmp_path: Path
) -> None:
    hours = [hours_ago + k * HOUR_MS for k in range(5)]
    original = all_rows(archived.staging_path, hours)
    full = replace(archived, raw_retention_h=0.5, archive_dir=str(small_disk / "archive"))
    done = run_etl(["rollup"], etl_env(full))
    assert done.returncode == 3, done.stderr
    assert "the archive is full" in one_line(done)
    assert all_rows(archived.staging_path, hours).equals(original)  # nothing purged
    with Staging(archived.staging_path) as st:
        recorded = st.archive_log.archived()
    assert 0 < len(recorded) < 5  # some hours fitted, and were recorded; none purged
    moved = tmp_path / "bigger"
    shutil.copytree(small_disk / "archive", moved)
    again = run_etl(["rollup"], etl_env(replace(full, archive_dir=str(moved))))
    assert again.returncode == 0, again.stderr
    assert archived_rows(str(moved)).equals(original)


def test_a_tampered_or_truncated_archive_file_is_refused_naming_it(
    archived: Settings, hours_ago: int, make_db: Callable[[], str], tmp_path: Path
) -> None:
    run_rollup(replace(archived, raw_retention_h=0.5))
    root = Path(archived.archive_dir)  # type: ignore[arg-type]
    poll = sorted(root.glob("source=poll/date=*/hour=*/*.parquet"))[2]
    data = bytearray(poll.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit
    poll.write_bytes(bytes(data))
    env = etl_env(replace(archived, pg_dsn=make_db(), symbols=("BTCUSDT", "SOLUSDT")))
    since = ["--since", _iso(hours_ago), "--until", _iso(hours_ago + 5 * HOUR_MS)]
    for args in (["rollup", "--from-archive"], ["export", "ticks", "--out", str(tmp_path / "x")]):
        done = run_etl([*args, *since], env)
        assert done.returncode == 2, done.stderr
        line = one_line(done)
        assert str(poll) in line and "does not match its checksum" in line
    untouched = query(env["ETL_PG_DSN"], "SELECT to_regclass('metrics_hourly') IS NULL AS new")
    assert untouched["new"][0]  # checked before anything was written: the warehouse untouched
    poll.write_bytes(bytes(data[: len(data) // 2]))  # now truncated
    done = run_etl(["rollup", "--from-archive", *since], env)
    assert done.returncode == 2 and str(poll) in one_line(done)


def _iso(ms: int) -> str:
    from etl.hours import iso

    return iso(ms)


STATUS_SCHEMA = json.loads((ROOT / "docs" / "status.schema.json").read_text())


def test_status_shows_the_archive_its_newest_hour_and_hours_not_archived_yet(
    archived: Settings, hours_ago: int
) -> None:
    run_rollup(replace(archived, raw_retention_h=4.0))  # two hours archived and purged
    done = run_etl(["status", "--json"], etl_env(replace(archived, raw_retention_h=4.0)))
    report = json.loads(done.stdout)
    jsonschema.validate(report, STATUS_SCHEMA)
    ar = report["archive"]
    assert ar["enabled"] and ar["target"] == archived.archive_dir
    assert (ar["hours"], ar["files"]) == (2, 4)
    assert ar["bytes"] == sum(p.stat().st_size for p in Path(ar["target"]).rglob("*.parquet"))
    assert ar["newest_hour"] == _iso(hours_ago + HOUR_MS)
    assert ar["unarchived_hours"] == [_iso(hours_ago + k * HOUR_MS) for k in (2, 3, 4)]
    assert ar["overdue_hours"] == [] and ar["problem"] is None
    text = run_etl(["status"], etl_env(replace(archived, raw_retention_h=4.0))).stdout
    assert "archive" in text and "3 hour(s) rolled up, not archived yet" in text


# -- object storage: an S3-compatible server on 127.0.0.1 ---------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[dict[str, str]]:
    """moto's S3 server on 127.0.0.1, standing in for Amazon S3 (or MinIO, R2, ...): the same
    HTTP API, reached through the usual AWS variables, in its own process as a real store
    would be. The AWS variables of the test process and its children point at it, and at
    nothing else (no config file, profile or instance metadata of the machine). Its request
    log is ``tmp_path / "moto.log"``."""
    pytest.importorskip(
        "moto.server", reason="moto[s3], flask and flask-cors are in the dev extras"
    )
    boto3 = pytest.importorskip("boto3", reason="boto3 is in the dev extras")
    port = _free_port()
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    with (tmp_path / "moto.log").open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for_port(port, server)
        env = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        boto3.client("s3").create_bucket(Bucket="ticks")
        yield env
    finally:
        server.kill()
        server.wait()


def s3_requests(tmp_path: Path) -> list[str]:
    """The requests moto's S3 server logged, as ``METHOD /path?query STATUS``."""
    found = re.findall(r'"([A-Z]+ \S+) HTTP/[\d.]+" (\d+)', (tmp_path / "moto.log").read_text())
    return [f"{request} {status}" for request, status in found]


def _wait_for_port(port: int, server: subprocess.Popen[bytes], within_s: float = 60.0) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the moto S3 server exited with {server.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"the moto S3 server did not listen on 127.0.0.1:{port} within {within_s:.0f} s")


@pytest.mark.slow
def test_an_s3_archive_is_written_read_back_and_rebuilds_the_bars(
    pgs: Settings, s3: dict[str, str], make_db: Callable[[], str], hours_ago: int, tmp_path: Path
) -> None:
    import boto3

    settings = replace(pgs, archive_dir="s3://ticks/etl/archive", interval_s=5.0)
    stage(settings.staging_path, hours_ago, 3)
    hours = [hours_ago + k * HOUR_MS for k in range(3)]
    original = all_rows(settings.staging_path, hours)
    run_rollup(replace(settings, raw_retention_h=1000.0))
    no_bucket = replace(settings, raw_retention_h=0.5, archive_dir="s3://no-bucket/x")
    refused = run_etl(["rollup"], {**etl_env(no_bucket), **s3})
    assert refused.returncode == 3, refused.stderr
    line = one_line(refused)
    assert (
        "cannot write the archive at s3://no-bucket/x/source=" in line and "NO_SUCH_BUCKET" in line
    )
    assert all_rows(settings.staging_path, hours).equals(original)  # nothing purged
    done = run_etl(["rollup"], {**etl_env(replace(settings, raw_retention_h=0.5)), **s3})
    assert done.returncode == 0, f"{done.stderr}\nS3 requests: {s3_requests(tmp_path)[-12:]}"
    # An hour's file is smaller than one part: one PutObject each, no multipart upload.
    writes = [r for r in s3_requests(tmp_path) if r.startswith(("PUT /ticks/", "POST /ticks/"))]
    assert len(writes) == 9 and all(r.startswith("PUT /ticks/etl/archive/") for r in writes)
    listed = boto3.client("s3").list_objects_v2(Bucket="ticks", Prefix="etl/archive/")
    keys = sorted(o["Key"] for o in listed["Contents"])
    assert len([k for k in keys if k.endswith(".parquet")]) == 6
    assert len([k for k in keys if "/_manifests/" in k]) == 3
    assert archived_rows(settings.archive_dir).equals(original)  # type: ignore[arg-type]
    live = bars_of(settings.pg_dsn)  # type: ignore[arg-type]
    rebuilt = replace(settings, pg_dsn=make_db())
    again = run_rebuild(rebuilt, since_ms=hours_ago, until_ms=hours_ago + 3 * HOUR_MS)
    assert again.files == 6 and bars_of(rebuilt.pg_dsn) == live  # type: ignore[arg-type]
    out = tmp_path / "out"
    ticks = run_etl(
        ["export", "ticks", "--since", _iso(hours_ago), "--out", str(out), "--of", "trade"],
        {**etl_env(replace(settings, symbols=tuple(TRADED))), **s3},
    )
    assert ticks.returncode == 0, ticks.stderr
    assert pl.read_parquet(out / "ticks-trade.parquet").height == original["agg_id"].count()


@pytest.mark.parametrize(
    ("given", "opened"),
    [
        ("s3://ticks/etl", "s3://ticks/etl?allow_delayed_open=true"),
        (
            "s3://ticks/etl?region=eu-west-1",
            "s3://ticks/etl?region=eu-west-1&allow_delayed_open=true",
        ),
        ("s3://ticks/etl?allow_delayed_open=false", "s3://ticks/etl?allow_delayed_open=false"),
        ("gs://ticks/etl", "gs://ticks/etl"),  # another store: its own options, none added
    ],
)
def test_an_s3_archive_is_opened_for_one_request_writes_unless_the_url_says_otherwise(
    given: str, opened: str
) -> None:
    from etl.staging.archive import _one_request_writes

    assert _one_request_writes(given) == opened


def test_a_file_larger_than_one_part_goes_up_in_parts_and_reads_back_the_same(
    s3: dict[str, str], tmp_path: Path
) -> None:
    archive = Archive("s3://ticks/big")
    data = os.urandom(24 * 1024 * 1024)  # incompressible: a year of one busy symbol's trades
    archive._write("source=trade/date=2026-12-04/hour=00/x.parquet", data, lambda _: None)
    assert archive._read("source=trade/date=2026-12-04/hour=00/x.parquet") == data
    requests = s3_requests(tmp_path)
    assert any(r.startswith("POST /ticks/big/source=trade/") and "?uploads " in r for r in requests)
    assert sum("partNumber=" in r for r in requests) >= 2


# -- the engines people scale to read it --------------------------------------------------------


def test_polars_and_duckdb_read_the_archive_and_agree_with_the_warehouse(
    archived: Settings, hours_ago: int
) -> None:
    duckdb = pytest.importorskip("duckdb", reason="duckdb is in the dev extras")
    hours = [hours_ago + k * HOUR_MS for k in range(5)]
    staged = all_rows(archived.staging_path, hours)
    run_rollup(replace(archived, raw_retention_h=0.5))
    root = archived.archive_dir
    hour = hours_ago + 2 * HOUR_MS
    from etl.hours import utc

    at = utc(hour)
    bar = query(
        archived.pg_dsn,  # type: ignore[arg-type]
        "SELECT open, high, low, close, volume, trades, samples FROM metrics_hourly "
        "WHERE symbol = 'XRPUSDT' AND bucket = $1",
        [at],
    ).row(0)

    # Polars (the query docs/archive.md shows)
    lazy = pl.scan_parquet(f"{root}/**/*.parquet", hive_partitioning=True)
    counts = lazy.group_by("source").len().collect().sort("source")
    assert counts.rows() == [
        ("poll", staged["agg_id"].null_count()),
        ("trade", staged["agg_id"].count()),
    ]
    polars_bar = (
        lazy.filter(
            (pl.col("source") == "trade")
            & (pl.col("date") == at.date())
            & (pl.col("hour") == at.hour)
            & (pl.col("symbol") == "XRPUSDT")
        )
        .sort("agg_id")
        .select(
            pl.col("price").first().alias("open"),
            pl.col("price").max().alias("high"),
            pl.col("price").min().alias("low"),
            pl.col("price").last().alias("close"),
            pl.col("qty").sum().alias("volume"),
            pl.col("trades").sum().alias("trades"),
            pl.len().alias("samples"),
        )
        .collect()
        .row(0)
    )
    assert polars_bar == bar

    # DuckDB (the query docs/archive.md shows)
    con = duckdb.connect()
    total = con.sql(
        f"SELECT source, count(*) FROM read_parquet('{root}/*/*/*/*.parquet', "
        "hive_partitioning = true) GROUP BY source ORDER BY source"
    ).fetchall()
    assert total == counts.rows()
    duck_bar = con.sql(
        f"""
        SELECT arg_min(price, agg_id), max(price), min(price), arg_max(price, agg_id),
               sum(qty), sum(trades), count(*)
        FROM read_parquet('{root}/source=trade/*/*/*.parquet', hive_partitioning = true)
        WHERE symbol = 'XRPUSDT' AND date = DATE '{at.date()}' AND hour = {at.hour}
        """
    ).fetchone()
    assert duck_bar[:4] == bar[:4] and duck_bar[5:] == bar[5:]
    assert duck_bar[4] == pytest.approx(bar[4], rel=1e-12)  # a sum in another order
