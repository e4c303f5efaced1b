"""Shared fixtures: a real PostgreSQL (embedded, or ``TEST_PG_DSN``), real SQLite files, and the
project's fake exchange on 127.0.0.1. Nothing here mocks a database or the HTTP path."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import adbc_driver_postgresql.dbapi as pg
import pytest
from rich.console import Console

from etl.collect.view import CollectorView
from etl.config import Settings, load_settings
from etl.exchange.fake.rest import FakeExchange
from etl.hours import GRACE_MS, HOUR_MS

# Real recorded Binance payloads, byte for byte as recorded (their sources are in SOURCES.md).
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "binance"


# Long enough for any test that puts ticks in hours counted from the wall clock.
HOUR_EDGE_S = 30.0


# Scripts that made the legacy fixtures, run against old releases' code: not tests, and not
# importable as this release's modules (the suite collects doctests from every module it finds).
collect_ignore = ["fixtures"]


@pytest.fixture(autouse=True)
def _clear_of_an_hour_boundary() -> None:
    """Many tests stage ticks in hours counted from the wall clock and expect the hour before now
    to be closed (it ended GRACE_MS ago) and the current one open. A test started in the last
    HOUR_EDGE_S of an hour, or inside the grace after it, could see one of those flip while it
    runs (a rollup then found 5 closed hours of 6): such a test first waits until the grace has
    passed. At most once per run of the suite, at most about 41 s."""
    into_ms = time.time() * 1000 % HOUR_MS
    ready_ms = GRACE_MS + 1000
    if into_ms < ready_ms:
        time.sleep((ready_ms - into_ms) / 1000)
    elif HOUR_MS - into_ms < HOUR_EDGE_S * 1000:
        time.sleep((HOUR_MS - into_ms + ready_ms) / 1000)


class Recorder(CollectorView):
    """A collector view that keeps its lines, to read."""

    def __init__(self) -> None:
        super().__init__(live=False, out=Console(file=io.StringIO(), width=200))

    @property
    def text(self) -> str:
        return self.out.file.getvalue()  # type: ignore[attr-defined]


class VirtualClock:
    """Time that passes only when someone sleeps: minutes of polling in milliseconds. Calling it
    reads the wall clock; :meth:`monotonic` the time that passed, which a step of the wall clock
    (:meth:`step`) leaves alone."""

    def __init__(self, start: float) -> None:
        self.now = start
        self.passed = 0.0
        self.stop = threading.Event()

    def __call__(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.passed

    def sleep(self, seconds: float) -> bool:
        self.now += max(0.0, seconds)
        self.passed += max(0.0, seconds)
        return self.stop.is_set()

    def step(self, seconds: float) -> None:
        """The wall clock jumps (an NTP correction, an operator's date command)."""
        self.now += seconds


@pytest.fixture
def vclock() -> VirtualClock:
    # Start a little after a minute boundary, as wall clocks do.
    return VirtualClock(1_795_000_020.0)


@pytest.fixture
def exchange() -> Iterator[FakeExchange]:
    with FakeExchange() as ex:
        yield ex


@pytest.fixture(scope="session")
def pg_admin_dsn() -> Iterator[str]:
    """A PostgreSQL server for the session: ``TEST_PG_DSN``, or the embedded one in /tmp."""
    if os.environ.get("TEST_PG_DSN"):
        yield os.environ["TEST_PG_DSN"]
        return
    from etl.warehouse.embedded import embedded_server

    # Not under pytest's 0700 temp dirs: the embedded server's user must be able to enter it.
    base = Path(tempfile.mkdtemp(prefix="etl-test-pg-", dir="/tmp"))
    base.chmod(0o755)
    with embedded_server(base / "pg") as uri:
        yield uri
    shutil.rmtree(base, ignore_errors=True)


def _with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


@pytest.fixture
def make_db(pg_admin_dsn: str) -> Iterator[Callable[[], str]]:
    """Creates fresh, empty databases (dropped after the test); returns their URIs."""
    names: list[str] = []

    def create() -> str:
        name = f"etl_test_{uuid.uuid4().hex[:12]}"
        with pg.connect(pg_admin_dsn, autocommit=True) as conn, conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE {name}")
        names.append(name)
        return _with_database(pg_admin_dsn, name)

    yield create
    with pg.connect(pg_admin_dsn, autocommit=True) as conn, conn.cursor() as cur:
        for name in names:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def pg_dsn(make_db: Callable[[], str]) -> str:
    """A fresh, empty database for one test."""
    return make_db()


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A temporary directory others may enter, as an embedded server started as root needs
    (pytest's own temporary directories are 0700)."""
    base = Path(tempfile.mkdtemp(prefix="etl-test-", dir="/tmp"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
def settings(data_dir: Path, exchange: FakeExchange) -> Settings:
    """Settings for a collector on the fake exchange, with no PostgreSQL."""
    return replace(
        load_settings(env={}),
        symbols=("BTCUSDT", "ETHUSDT", "BNBUSDT"),
        interval_s=0.2,
        binance_url=exchange.url,
        data_dir=data_dir,
    )


@pytest.fixture
def pgs(settings: Settings, pg_dsn: str) -> Settings:
    """:func:`settings` with a fresh PostgreSQL database as the warehouse."""
    return replace(settings, pg_dsn=pg_dsn)


def etl_env(settings: Settings | None = None, **extra: str) -> dict[str, str]:
    # No terminal size either: pytest-xdist's workers inherit COLUMNS=80, and a test that wants
    # a width says so.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("ETL_") and k not in ("COLUMNS", "LINES")
    }
    if settings is not None:
        env.update(settings.env())
    env.update(extra)
    return env


def run_etl(
    args: list[str], env: dict[str, str], timeout: float = 120, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real ``etl`` command in a child process."""
    return subprocess.run(
        [sys.executable, "-m", "etl", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


def start(argv: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.Popen[str]:
    """Start ``argv`` in a child process, its output (both streams) line by line on ``stdout``."""
    return subprocess.Popen(
        argv,
        env={**env, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=cwd,
    )


def start_etl(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    """Start the real ``etl`` command in a child process (see :func:`start`)."""
    return start([sys.executable, "-m", "etl", *args], env)


def wait_for(proc: subprocess.Popen[str], needle: str, count: int = 1, timeout: float = 60) -> str:
    """Read ``proc``'s output until ``needle`` has appeared ``count`` times; what was read."""
    seen = ""
    deadline = time.monotonic() + timeout
    while seen.count(needle) < count:
        assert time.monotonic() < deadline, seen
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line, seen
        seen += line
    return seen


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    """A failed command's error: exactly one line on stderr and no traceback anywhere."""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    return lines[0]
