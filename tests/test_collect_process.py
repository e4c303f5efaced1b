"""The ``etl`` command as a user runs it: a real child process, real signals, real exit codes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from etl.config import Settings
from etl.exchange.fake.rest import FakeExchange
from etl.staging.store import Staging
from tests.conftest import etl_env, run_etl
from tests.pgutil import seed_ticks


def start_collector(settings: Settings, *args: str) -> subprocess.Popen[str]:
    env = etl_env(settings, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "etl", "collect", "--no-rollup", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def read_until(
    proc: subprocess.Popen[str], needle: str, count: int, timeout: float = 30
) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while sum(needle in line for line in lines) < count:
        assert time.monotonic() < deadline, "".join(lines)
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line, "".join(lines)
        lines.append(line)
    return lines


def no_traceback(text: str) -> bool:
    return "Traceback" not in text and 'File "' not in text


def test_kill_9_leaves_a_sound_file_with_every_committed_poll(settings: Settings) -> None:
    settings = replace(settings, interval_s=0.1)
    proc = start_collector(settings)
    lines = read_until(proc, "poll ok", 15)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    confirmed = sum("poll ok" in line for line in lines)
    with Staging(settings.staging_path) as st:
        assert st.db.integrity_check() == "ok"
        ticks = st.ticks.read_window(0, 2**62)
    per_poll = ticks.group_by("ts").len()
    assert per_poll.height >= confirmed  # every poll reported before the kill is on disk
    assert set(per_poll["len"].to_list()) == {3}  # and no poll is half-written


def test_sigterm_finishes_the_write_and_exits_0_with_a_summary(settings: Settings) -> None:
    proc = start_collector(settings)
    read_until(proc, "poll ok", 3)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out
    assert "stopped after" in out and "polls ok" in out
    with Staging(settings.staging_path) as st:
        assert st.db.integrity_check() == "ok"
        assert st.ticks.count() % 3 == 0 and st.ticks.count() >= 9


def test_sigint_exits_0_too(settings: Settings) -> None:
    proc = start_collector(settings)
    read_until(proc, "poll ok", 2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out
    assert "stopped after" in out and no_traceback(out)


@pytest.mark.slow
def test_polls_and_duration_stop_early(settings: Settings) -> None:
    done = run_etl(["collect", "--no-rollup", "--polls", "4"], etl_env(settings))
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("poll ok") == 4
    started = time.monotonic()
    done = run_etl(["collect", "--no-rollup", "--duration", "1"], etl_env(settings))
    assert done.returncode == 0 and time.monotonic() - started < 10


@pytest.mark.slow
def test_unreachable_exchange_keeps_running_and_says_so(settings: Settings) -> None:
    env = etl_env(replace(settings, binance_url="http://127.0.0.1:9", interval_s=0.5))
    done = run_etl(["collect", "--no-rollup", "--duration", "3"], env)
    assert done.returncode == 0, done.stderr
    assert "exchange unreachable since" in done.stdout
    assert no_traceback(done.stdout + done.stderr)


@pytest.mark.slow
def test_ban_is_honoured_by_a_restarted_collector(
    settings: Settings, exchange: FakeExchange
) -> None:
    exchange.inject("status", status=418, retry_after=4, code=-1003)
    first = run_etl(["collect", "--no-rollup", "--polls", "2"], etl_env(settings))
    assert first.returncode == 3 and "IP banned (418)" in first.stderr  # both polls banned
    banned_at = next(r.at for r in exchange.requests if r.status == 418)
    # long enough to outlast the ban and store polls after it
    second = run_etl(["collect", "--no-rollup", "--duration", "6"], etl_env(settings))
    assert second.returncode == 0
    during_ban = [r for r in exchange.requests if banned_at < r.at < banned_at + 4]
    assert during_ban == []
    assert exchange.violations == 0
    assert "418" in second.stdout or "rate limited" in second.stdout


@pytest.mark.parametrize(
    ("args", "env_extra", "fragment"),
    [
        (["--symbols", "BTCUSDT,NOPEUSDT"], {}, "NOPEUSDT (unknown)"),
        (["--symbols", 'BTC"USDT'], {}, "invalid symbol"),
        (["--symbols", "BTC USDT"], {}, "invalid symbol"),
        (["--interval-s", "0"], {}, "must be greater than 0"),
        (["--interval-s", "-1"], {}, "must be greater than 0"),
        (
            [],
            {"ETL_DATA_DIR": "/dev/null/data", "ETL_SQLITE_PATH": ""},
            "cannot open the staging database",
        ),
        ([], {"ETL_SQLITE_PATH": "/proc/ticks.sqlite3"}, "cannot open the staging database"),
        ([], {"ETL_CONFIG": "BROKEN"}, "not valid TOML"),
    ],
)
def test_bad_configuration_exits_2_with_one_line(
    settings: Settings, tmp_path: Path, args: list[str], env_extra: dict[str, str], fragment: str
) -> None:
    (tmp_path / "broken.toml").write_text("symbols = [\n")
    env = etl_env(settings, **env_extra)
    if env.get("ETL_CONFIG") == "BROKEN":
        env["ETL_CONFIG"] = str(tmp_path / "broken.toml")
    if env.get("ETL_SQLITE_PATH") == "":
        del env["ETL_SQLITE_PATH"]
    done = run_etl([*args, "collect", "--no-rollup", "--polls", "1"], env)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], done.stderr
    assert no_traceback(done.stdout + done.stderr)


@pytest.mark.slow
def test_a_dsn_password_never_appears_in_any_output(settings: Settings) -> None:
    secret = "Sup3rS3cretPw"
    env = etl_env(settings, ETL_PG_DSN=f"postgresql://etl:{secret}@127.0.0.1:9/etl")
    now_hour = int(time.time() * 1000) // 3_600_000 * 3_600_000
    seed_ticks(settings.staging_path, ["BTCUSDT"], now_hour - 3_600_000, polls=10)  # to roll up
    outputs = [
        run_etl(["collect", "--polls", "1"], env),
        run_etl(["rollup"], env),
        run_etl(["db", "init"], env),
        run_etl(["--debug", "rollup"], env),
        run_etl(["--pg-dsn", f"postgresql://x:{secret}@127.0.0.1:9/x", "rollup"], env),
    ]
    for done in outputs:
        assert secret not in done.stdout + done.stderr
    time.sleep(2)  # the collector's rollup child writes its own log
    log = (settings.data_dir / "rollup.log").read_text()
    assert secret not in log and "postgresql://etl:***@127.0.0.1:9/etl" in log
    assert outputs[1].returncode == 3
    assert "postgresql://etl:***@127.0.0.1:9/etl" in outputs[1].stderr


@pytest.mark.slow
def test_demo_collects_offline(tmp_path: Path) -> None:
    env = etl_env(None, ETL_DATA_DIR=str(tmp_path / "data"))
    done = run_etl(["demo", "--polls", "3"], env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("poll ok") == 3
    with Staging(tmp_path / "data" / "demo" / "ticks.sqlite3") as st:
        assert st.ticks.count() == 3 * 5
