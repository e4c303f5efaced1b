"""The embedded PostgreSQL: no server left behind after a clean exit, a SIGTERM, or a pid that
died without saying goodbye."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import adbc_driver_postgresql.dbapi as pg
import psutil
import pytest

from etl.errors import ConfigError
from etl.warehouse.embedded import embedded_server, prune_stale_pids
from etl.warehouse.store import RUN_LOCK
from tests.conftest import etl_env, run_etl
from tests.pgutil import seed_ticks


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
