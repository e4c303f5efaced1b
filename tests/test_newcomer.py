"""A newcomer's first hour: the dead ends found by walking the README from a fresh clone, each
kept as a test (the CLI people type, the first offline run, the demo, silent no-ops, Ctrl-C
through `just`, the live table)."""

from __future__ import annotations

import io
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import polars as pl
import psutil
import pytest
from rich.console import Console

from etl.collect.loop import Collector
from etl.collect.view import CollectorView
from etl.config import Settings
from etl.exchange.fake.rest import FakeExchange
from etl.hours import HOUR_MS, hour_floor
from etl.staging.store import Staging
from tests.conftest import VirtualClock, etl_env, run_etl
from tests.pgutil import seed_ticks

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_every_setting_works_after_the_command_too(settings: Settings) -> None:
    """Was: `etl collect --symbols BTCUSDT` failed with "No such option: --symbols"."""
    env = etl_env(settings)
    after = run_etl(["collect", "--no-rollup", "--polls", "1", "--symbols", "BTCUSDT"], env)
    before = run_etl(["--symbols", "ETHUSDT", "collect", "--no-rollup", "--polls", "1"], env)
    assert after.returncode == before.returncode == 0, after.stderr + before.stderr
    assert "1 prices" in after.stdout and "1 prices" in before.stdout
    both = run_etl(
        [
            "--symbols",
            "ETHUSDT",
            "collect",
            "--no-rollup",
            "--polls",
            "1",
            "--symbols",
            "BTCUSDT,SOLUSDT",
        ],
        env,
    )
    assert "2 prices" in both.stdout  # the one after the command wins
    # --config and --debug too (--config names a file of settings: ETL_CONFIG)
    toml = settings.data_dir / "etl.toml"
    toml.write_text('symbols = ["SOLUSDT"]\n')
    no_symbols = {k: v for k, v in env.items() if k != "ETL_SYMBOLS"}  # env beats the file
    configured = run_etl(
        ["collect", "--no-rollup", "--polls", "1", "--config", str(toml)], no_symbols
    )
    assert configured.returncode == 0, configured.stderr
    assert "collecting 1 symbol(s)" in configured.stdout
    missing = run_etl(["status", "--config", str(toml) + ".gone", "--debug"], env)
    assert missing.returncode == 2 and "Traceback" in missing.stderr  # --debug: the traceback


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["collect"],
        ["rollup"],
        ["status"],
        ["backfill"],
        ["reconcile"],
        ["demo"],
        ["db", "init"],
    ],
)
def test_help_shows_types_env_vars_and_an_example(command: list[str]) -> None:
    """Was: `<bool>` after every flag and `--interval-s <str>`; and every command's help
    repeated all 21 settings (~70 lines): a command's help shows its own options and points to
    `etl --help` for the settings, which it takes all the same."""
    done = run_etl([*command, "--help"], etl_env(None))
    assert done.returncode == 0
    text = " ".join(done.stdout.split())  # the help wraps to the terminal's width
    assert "<bool>" not in text and "<str>" not in text and "<int>" not in text
    if not command:
        assert "--interval-s SECONDS" in text and "[env: ETL_INTERVAL_S; default: 5]" in text
        return
    assert "Example: etl " in text and "see etl --help" in text
    assert "--interval-s SECONDS" not in text and len(done.stdout.splitlines()) < 40


@pytest.mark.slow
def test_the_first_offline_run_says_why_and_points_to_the_demo(settings: Settings) -> None:
    """Was: "connection failed (ConnectionError)" forever, and `weight 740 / 6000` counted
    for requests that never left the machine."""
    offline = replace(settings, binance_url="http://no-such-host.invalid", interval_s=0.5)
    out = Console(file=io.StringIO(), width=300)
    collector = Collector(offline, rollup=False, view=CollectorView(live=False, out=out))
    stats = collector.run(polls=3)
    text = out.file.getvalue()  # type: ignore[attr-defined]
    assert "name resolution failed for no-such-host.invalid" in text
    assert "`just demo`" in text
    assert stats.polls_ok == 0 and collector.client.governor.used == 0  # type: ignore[union-attr]
    done = run_etl(["collect", "--no-rollup", "--polls", "2"], etl_env(offline))
    assert done.returncode == 3 and "no poll stored anything in 2 tries" in done.stderr


@pytest.mark.slow
def test_refused_connections_are_named(settings: Settings) -> None:
    done = run_etl(
        ["collect", "--no-rollup", "--polls", "1"],
        # 2 s, not the suite's 0.2 s: on a loaded machine a 0.2 s poll could pass its deadline
        # before its request went out, and then nothing was refused to be named.
        etl_env(replace(settings, binance_url="http://127.0.0.1:9", interval_s=2.0)),
    )
    assert "connection refused by 127.0.0.1:9" in done.stdout, done.stdout + done.stderr


def test_rollup_of_a_range_with_nothing_in_it_says_what_it_looked_for(settings: Settings) -> None:
    """Was: an all-zero table."""
    now_hour = hour_floor(int(time.time() * 1000))
    seed_ticks(settings.staging_path, ["BTCUSDT"], now_hour - 3 * HOUR_MS, polls=10)
    env = etl_env(replace(settings, pg_dsn="postgresql://etl@127.0.0.1:9/never"))
    future = run_etl(["rollup", "--since", "2099-01-01"], env)
    assert future.returncode == 0, future.stderr
    assert "nothing staged in" in future.stdout and "2099-01-01T00:00:00Z" in future.stdout
    assert "its ticks span" in future.stdout  # and what there is instead
    empty = run_etl(["rollup", "--since", "2020-01-01", "--until", "2020-01-02"], env)
    assert "for closed hours from 2020-01-01T00:00:00Z to 2020-01-02T00:00:00Z" in empty.stdout


@pytest.mark.slow
def test_the_demo_and_seed_demo_meet_in_one_place_and_say_how_to_look(open_dir: Path) -> None:
    env = etl_env(None, ETL_DATA_DIR=str(open_dir / "data"))
    done = run_etl(["demo", "--polls", "2"], env)
    assert done.returncode == 0, done.stderr
    demo_dir = open_dir / "data" / "demo"
    assert f"etl --data-dir {demo_dir} status" in done.stdout
    # the advice keeps the data dir the demo was given (here from ETL_DATA_DIR)
    assert f"etl --data-dir {open_dir / 'data'} notebook --demo" in done.stdout
    look = run_etl(["--data-dir", str(demo_dir), "status", "--json"], env)
    assert '"rows": 10' in look.stdout  # 2 polls of the 5 default symbols, where it said


def offline(argv: list[str]) -> list[str]:
    """``argv`` in a network namespace of its own: only 127.0.0.1 exists, no name resolves."""
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        pytest.skip("a network namespace needs root, unshare and ip")
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"unshare -n refused here: {probe.stderr.decode().strip()}")
    return ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$0" "$@"', *argv]


@pytest.mark.slow
@pytest.mark.parametrize("source", ["poll", "trades"])
def test_both_demo_sources_stay_offline_whatever_the_configuration_says(
    open_dir: Path, source: str
) -> None:
    """Was: `etl demo --source trades` opened its stream to the real exchange: offline it
    retried a name lookup for ever and stored 0 trades (exit 0)."""
    env = etl_env(
        None,
        ETL_DATA_DIR=str(open_dir / "data"),
        ETL_SOURCE=source,
        ETL_BINANCE_URL="https://api.binance.com",
        ETL_WS_URL="wss://stream.binance.com:9443",
    )
    done = subprocess.run(
        offline([sys.executable, "-m", "etl", "demo", "--duration", "6"]),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "binance.com" not in done.stdout + done.stderr
    with Staging(open_dir / "data" / "demo" / "ticks.sqlite3", create=False) as st:
        stored = st.ticks.count()
        has_trades = st.trades.exist()
    assert stored > (50 if source == "trades" else 5) and has_trades == (source == "trades")


@pytest.mark.slow
def test_the_fake_exchange_lists_real_symbols_so_typos_are_caught(open_dir: Path) -> None:
    env = etl_env(None, ETL_DATA_DIR=str(open_dir / "data"))
    done = run_etl(["demo", "--polls", "1", "--symbols", "ETHBTC,DOGEUSDT"], env)
    assert done.returncode == 0, done.stderr
    typo = run_etl(["demo", "--polls", "1", "--symbols", "DOGEUSTD"], env)
    assert typo.returncode == 2 and "did you mean DOGEUSDT?" in typo.stderr


def test_the_live_table_shows_prices_to_the_tick_the_hour_and_the_update_time(
    vclock: VirtualClock,
) -> None:
    """Was: `59947.663` next to `0.59980933`, jumping columns, no hour, no time."""
    with FakeExchange(["BTCUSDT", "XRPUSDT", "ETHBTC"], clock=vclock, ws=False) as ex:
        out = Console(file=io.StringIO(), force_terminal=True, width=200)
        view = CollectorView(live=True, out=out)
        settings = replace(
            Settings(), binance_url=ex.url, symbols=("BTCUSDT", "XRPUSDT", "ETHBTC"), interval_s=5.0
        )
        with_dir = replace(
            settings, data_dir=Path(os.environ.get("TMPDIR", "/tmp")) / f"live-{os.getpid()}"
        )
        try:
            Collector(
                with_dir,
                rollup=False,
                view=view,
                clock=vclock,
                wait=vclock.sleep,
                stop=vclock.stop,
                monotonic=vclock.monotonic,
            ).run(polls=3)
        finally:
            shutil.rmtree(with_dir.data_dir, ignore_errors=True)
        ticks = {s: str(ex.market.tick_size(s)) for s in settings.symbols}
    text = out.file.getvalue()  # type: ignore[attr-defined]
    frame = text.split("this hour")[-1]
    for symbol, tick in ticks.items():
        places = len(tick.rstrip("0").split(".")[1]) if "." in tick.rstrip("0") else 0
        row = next(line for line in frame.splitlines() if symbol in line)
        last = row.split("│")[5].strip()
        assert re.fullmatch(r"[\d,]+" + (rf"\.\d{{{places}}}" if places else ""), last), (
            symbol,
            row,
        )
    assert re.search(r"\d\d:00-\d\d:00 UTC, updated \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", text)


def test_on_an_80_column_terminal_the_live_table_keeps_every_column_whole() -> None:
    """Was: the samples column dropped. Narrow, the table loses its box and shortens its
    headers instead."""
    out = Console(file=io.StringIO(), force_terminal=True, width=80, color_system=None)
    frame = pl.DataFrame(
        [
            ("BTCUSDT", 60262.05, 60300.1, 60100.0, 60250.0, 60222.123, 720),
            ("XRPUSDT", 0.6012, 0.61, 0.6, 0.605, 0.605, 719),
        ],
        schema=["symbol", "open", "high", "low", "close", "mean", "samples"],
        orient="row",
    )
    with CollectorView(live=True, out=out) as view:
        view.set_tick_sizes({"BTCUSDT": "0.01", "XRPUSDT": "0.0001"})
        view.refresh({"hour": "10:00-11:00 UTC"}, frame)
    drawn = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.file.getvalue())  # type: ignore[attr-defined]
    btc = [line for line in drawn.splitlines() if "BTCUSDT" in line][-1].split()
    assert btc == [
        "BTCUSDT",
        "60,262.05",
        "60,300.10",
        "60,100.00",
        "60,250.00",
        "60,222.1230",
        "720",
    ]
    assert max(len(line) for line in drawn.splitlines()) <= 80


def test_live_table_columns_only_grow_when_a_price_gains_and_loses_a_digit() -> None:
    out = Console(file=io.StringIO(), force_terminal=True, width=200)
    borders = []
    with CollectorView(live=True, out=out) as view:
        view.set_tick_sizes({"BTCUSDT": "0.01000000"})
        for price, samples in ((9.5, 9), (10.5, 10), (9.5, 11)):  # 9.50 -> 10.50 -> 9.50
            frame = pl.DataFrame(
                [("BTCUSDT", price, price, price, price, price, samples)],
                schema=["symbol", "open", "high", "low", "close", "mean", "samples"],
                orient="row",
            )
            view.refresh({"hour": "10:00-11:00 UTC"}, frame)
            drawn = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.file.getvalue())  # type: ignore[attr-defined]
            row = [line for line in drawn.splitlines() if "BTCUSDT" in line and "│" in line][-1]
            borders.append([i for i, c in enumerate(row) if c == "│"])
    assert borders[1] > borders[0]  # a digit more: the columns widen
    assert borders[2] == borders[1]  # and stay wide when it goes


def _just_under_a_terminal(settings: Settings, args: list[str]) -> tuple[int, str, int]:
    """`just ARGS` on a pseudo-terminal, as a person at a terminal runs it; Ctrl-C typed once
    the collector polls. Returns just's exit code, everything the terminal showed, etl's pid."""
    just = shutil.which("just", path=str(Path(sys.executable).parent)) or shutil.which("just")
    if just is None:
        pytest.skip("just is not installed")
    env = {**etl_env(settings), "TERM": "xterm", "COLUMNS": "200", "LINES": "50"}
    pid, fd = pty.fork()
    if pid == 0:  # the child: a new session whose controlling terminal is the pty
        os.chdir(ROOT)
        os.execve(just, [just, *args], env)
    seen = b""
    deadline = time.monotonic() + 60
    sent = False
    while True:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            pytest.fail(seen.decode(errors="replace"))
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                break
            seen += chunk
        if not sent and re.search(rb"[1-9]\d* ok, \d+ missed", seen):  # the live table polls
            os.write(fd, b"\x03")  # Ctrl-C: the terminal signals its foreground process group
            sent = True
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), seen.decode(errors="replace"), pid


def test_ctrl_c_through_just_ends_as_the_collector_does(settings: Settings) -> None:
    """Was: the clean summary, then `error: interrupted by SIGINT` and exit 130."""
    code, screen, _ = _just_under_a_terminal(settings, ["collect", "--no-rollup"])
    assert "stopped after" in screen, screen
    assert "interrupted by SIGINT" not in screen and code == 0, screen


def test_sigterm_to_the_collector_under_just_is_exit_0(settings: Settings) -> None:
    env = etl_env(settings)
    proc = subprocess.Popen(
        [
            shutil.which("just", path=str(Path(sys.executable).parent)) or "just",
            "collect",
            "--no-rollup",
        ],
        cwd=ROOT,
        env={**env, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen = ""
    while "poll ok" not in seen:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line, seen
        seen += line
    children = psutil.Process(proc.pid).children(recursive=True)
    etl = [c for c in children if "etl" in " ".join(c.cmdline())]
    assert etl, "etl runs under just"
    etl[-1].send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0 and "stopped after" in out, out
