"""What an operator watches: `etl status` as a health check (exit codes, JSON that follows its
schema, values for people), honest coverage, Prometheus metrics scraped for real, log lines."""

from __future__ import annotations

import io
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jsonschema
import polars as pl
import pytest
import requests
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from etl.collect.loop import Collector
from etl.collect.metrics import CollectorMetrics
from etl.collect.view import CollectorView
from etl.config import Settings
from etl.hours import HOUR_MS, hour_floor, iso
from etl.jobs.rollup import run_rollup
from etl.staging.store import Staging
from etl.warehouse.store import open_warehouse
from tests.conftest import etl_env, run_etl
from tests.pgutil import execute, seed_ticks

SCHEMA = json.loads(
    (Path(__file__).resolve().parent.parent / "docs" / "status.schema.json").read_text()
)
SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")


@pytest.fixture
def pgs(settings: Settings, pg_dsn: str) -> Settings:
    return replace(settings, pg_dsn=pg_dsn, symbols=SYMBOLS, interval_s=5.0)


def status(settings: Settings) -> tuple[int, dict]:
    done = run_etl(["status", "--json"], etl_env(settings))
    report = json.loads(done.stdout)
    jsonschema.validate(report, SCHEMA)  # every real output follows the schema
    assert report["exit_code"] == done.returncode
    return done.returncode, report


def healthy_store(s: Settings) -> None:
    """Three complete hours up to the last closed one, rolled up, and a fresh poll."""
    now_ms = int(time.time() * 1000)
    last_closed = hour_floor(now_ms - 10_000) - HOUR_MS
    seed_ticks(s.staging_path, list(SYMBOLS), last_closed - 2 * HOUR_MS, polls=3 * 720)
    run_rollup(s)
    with Staging(s.staging_path) as st:
        st.state.record_interval(5.0, last_closed - 2 * HOUR_MS)
        st.ticks.append(list(SYMBOLS), [1.0, 2.0, 3.0], now_ms - 1000)


def test_status_is_a_health_check_0_1_3(pgs: Settings) -> None:
    healthy_store(pgs)
    code, report = status(pgs)
    assert (code, report["health"], report["problems"]) == (0, "healthy", [])

    execute(pgs.pg_dsn, "DELETE FROM metrics_hourly WHERE symbol = 'ETHUSDT'")  # type: ignore[arg-type]
    with Staging(pgs.staging_path) as st:  # and a ban
        st.state.set("binance.ban", {"until": time.time() + 600, "status": 418}, 0)
    code, report = status(pgs)
    assert code == 1 and report["health"] == "degraded"
    problems = " | ".join(report["problems"])
    assert "banned us (HTTP 418)" in problems and "ETHUSDT" in problems
    assert "{" not in problems and "None" not in problems  # words, not Python reprs

    code, report = status(replace(pgs, pg_dsn="postgresql://etl:x@127.0.0.1:9/etl"))
    assert code == 3 and report["health"] == "unreachable"


def test_status_names_a_silent_symbol_an_overdue_hour_and_a_failed_rollup(
    pgs: Settings,
) -> None:
    """The other degraded conditions, each a problem line; and the sizes status shows."""
    now_ms = int(time.time() * 1000)
    first = hour_floor(now_ms) - 5 * HOUR_MS
    seed_ticks(pgs.staging_path, list(SYMBOLS), first, polls=4 * 720)  # 4 closed hours
    run_rollup(pgs, until_ms=first + 3 * HOUR_MS)  # the 4th, closed over an hour ago, waits
    with Staging(pgs.staging_path) as st:
        st.state.record_interval(5.0, first)
        st.ticks.append(["BTCUSDT", "ETHUSDT"], [1.0, 2.0], now_ms - 1000)  # SOLUSDT falls silent
        st.state.remember_rollup(now_ms - 60_000, "connection to server lost", 2.0)
    (pgs.data_dir / "rollup.log").write_text("a rollup's lines\n")
    code, report = status(pgs)
    assert code == 1 and report["health"] == "degraded"
    problems = report["problems"]
    (silent,) = [p for p in problems if p.startswith("no tick for more than 3 intervals")]
    assert "SOLUSDT" in silent and "BTCUSDT" not in silent
    (overdue,) = [p for p in problems if "staged but not rolled up" in p]
    assert overdue.startswith("1 closed hour(s)") and iso(first + 3 * HOUR_MS) in overdue
    (failed,) = [p for p in problems if p.startswith("the last rollup failed")]
    assert "connection to server lost" in failed
    sizes = report["staging"]["bytes"]
    assert sizes["ticks.sqlite3"] == pgs.staging_path.stat().st_size > 0
    assert report["warehouse"]["bytes"] > 0
    assert report["logs"] == {str(pgs.data_dir / "rollup.log"): len("a rollup's lines\n")}
    shown = run_etl(["status"], etl_env(pgs)).stdout  # and on screen, for people
    assert "KiB" in shown or "MiB" in shown


@pytest.mark.slow
def test_status_on_an_empty_store_creates_nothing_and_reads_like_words(open_dir: Path) -> None:
    """Was: a 46 MB cluster and an empty ticks.sqlite3 for a look; `(None .. None)`."""
    fresh = open_dir / "typo"
    env = etl_env(None, ETL_DATA_DIR=str(fresh))
    done = run_etl(["status"], env)
    assert done.returncode == 1
    assert "None" not in done.stdout and "no staging database" in done.stdout
    assert not fresh.exists()  # looking created nothing
    report = json.loads(run_etl(["status", "--json"], env).stdout)
    jsonschema.validate(report, SCHEMA)
    rolled = run_etl(["rollup"], env)
    assert rolled.returncode == 2 and f"nothing staged in {fresh}" in rolled.stderr
    assert not fresh.exists()
    # Was: a 46 MB cluster (and for reconcile an empty ticks.sqlite3) made to find nothing.
    for command in (["reconcile"], ["retention", "--dry-run"], ["retention"]):
        looked = run_etl(command, env)
        assert looked.returncode == 2 and "no warehouse yet" in looked.stderr, command
        assert not fresh.exists(), command


def test_weight_time_is_iso_8601(pgs: Settings) -> None:
    healthy_store(pgs)
    with Staging(pgs.staging_path) as st:
        st.state.set(
            "binance.weight",
            {"used": 24, "limit": 6000, "budget": 3000, "at": 1_790_000_000_000},
            0,
        )
    _, report = status(pgs)
    assert report["staging"]["weight"]["at"] == "2026-09-21T14:13:20Z"


def test_coverage_counts_missing_hours_as_zero_and_uses_the_recorded_interval(
    pgs: Settings, tmp_path: Path
) -> None:
    """Was: ETHUSDT 100.0 % with 4 of 24 hours missing; a 1 s hour read 11.4 % under 5 s."""
    now_ms = int(time.time() * 1000)
    last_closed = hour_floor(now_ms - 10_000) - HOUR_MS
    first = last_closed - 23 * HOUR_MS
    seed_ticks(pgs.staging_path, ["BTCUSDT", "ETHUSDT"], first, polls=24 * 720)
    with Staging(pgs.staging_path) as st:
        st.state.record_interval(5.0, first)
    run_rollup(pgs)
    fast = replace(pgs, data_dir=tmp_path / "fast", sqlite_path=None)  # a demo at 1 s
    seed_ticks(fast.staging_path, ["SOLUSDT"], last_closed, polls=3600, interval_ms=1000)
    with Staging(fast.staging_path) as st:
        st.state.record_interval(1.0, last_closed)
    run_rollup(fast)
    for k in range(4):
        execute(
            pgs.pg_dsn,  # type: ignore[arg-type]
            "DELETE FROM metrics_hourly WHERE symbol = 'ETHUSDT' "
            f"AND bucket = to_timestamp({(first + (7 + k) * HOUR_MS) // 1000})",
        )
    _, report = status(pgs)
    coverage = report["warehouse"]["coverage_24h"]
    assert coverage["BTCUSDT"]["coverage"] == 1.0
    assert coverage["ETHUSDT"]["coverage"] == pytest.approx(20 / 24, abs=1e-4)
    assert coverage["SOLUSDT"]["coverage"] == pytest.approx(1 / 24, abs=1e-4)  # 1 full hour
    _, again = status(replace(pgs, interval_s=60.0))  # the configured interval changes nothing
    assert again["warehouse"]["coverage_24h"] == coverage
    # Was: a symbol with no bar at all read 4.2 %, and every hour without a bar 100 % in the
    # notebook's grid (LEAST(1.0, NULL) is 1.0 in PostgreSQL).
    _, none = status(replace(pgs, symbols=(*SYMBOLS, "BNBUSDT")))
    assert none["warehouse"]["coverage_24h"]["BNBUSDT"]["coverage"] == 0.0
    lo = datetime.fromtimestamp(first / 1000, UTC)
    with open_warehouse(pgs) as wh:
        grid = wh.coverage_grid(["ETHUSDT", "BNBUSDT"], lo, lo + timedelta(hours=24))
    no_bar = grid.filter(pl.col("source").is_null())
    assert no_bar.height == 4 + 24 and no_bar["coverage"].to_list() == [0.0] * 28
    eth = grid.filter(pl.col("symbol") == "ETHUSDT")["coverage"]
    assert eth.mean() == pytest.approx(20 / 24, abs=1e-4)


@pytest.mark.slow
def test_prometheus_metrics_scraped_while_collecting(settings: Settings) -> None:
    env = etl_env(settings, ETL_METRICS_PORT="0", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "etl", "collect", "--no-rollup"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = None
        polls = 0
        deadline = time.monotonic() + 30
        while polls < 8:
            assert time.monotonic() < deadline
            line = proc.stdout.readline()  # type: ignore[union-attr]
            assert line
            found = re.search(r"Prometheus metrics at (\S+)", line)
            url = found.group(1) if found else url
            polls += "poll ok" in line
        assert url and url.startswith("http://127.0.0.1:")
        text = urllib.request.urlopen(url, timeout=5).read().decode()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    with Staging(settings.staging_path) as st:
        ticks = st.ticks.read_window(0, 2**62)
        stored_polls = ticks["ts"].n_unique()
    ok = samples[("etl_polls_total", (("result", "ok"),))]
    assert stored_polls - 1 <= ok <= stored_polls  # a poll may land between scrape and stop
    assert samples[("etl_ticks_stored_total", ())] == ok * len(settings.symbols)
    assert samples[("etl_request_weight_limit", ())] == 6000
    assert (
        0 < samples[("etl_request_weight_used", ())] <= samples[("etl_request_weight_budget", ())]
    )
    assert samples[("etl_ban_active", ())] == 0
    assert samples[("etl_poll_duration_seconds_count", ())] == ok
    for symbol in settings.symbols:
        assert 0 <= samples[("etl_last_tick_age_seconds", (("symbol", symbol),))] < 5
    assert samples[("etl_staged_rows", ())] >= (ok - 1) * len(settings.symbols)
    assert samples[("etl_staging_bytes", ())] > 0
    assert samples[("etl_quarantined_rows", ())] == 0
    assert ("etl_rollup_runs_total", (("result", "failed"),)) in samples
    names = {name for name, _ in samples}
    # only what a poll collector can move: no trade series, no `_created` twin of a counter
    assert not {n for n in names if n.startswith(("etl_trade", "etl_stream"))}, names
    assert not {n for n in names if n.endswith("_created")}, names


def test_the_last_rollup_success_outlives_a_restart_and_a_failure(tmp_path: Path) -> None:
    """Was: 0 after every restart, so "no rollup for 2 hours" fired at once, and for ever
    under cron. Now: the last success any rollup wrote into the staging file; before any, the
    collector's start."""
    from prometheus_client import generate_latest

    from etl.collect.events import RollupEnded
    from etl.collect.metrics import CollectorMetrics

    def scraped(metrics: CollectorMetrics) -> float:
        text = generate_latest(metrics.registry).decode()
        (value,) = [
            s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == "etl_rollup_last_success_timestamp_seconds"
        ]
        return value

    started = 1_795_000_000.0
    with Staging(tmp_path / "t.sqlite3") as st:
        metrics = CollectorMetrics()
        metrics.watch(st, lambda: None, lambda: started)
        assert scraped(metrics) == started  # nothing rolled up yet: counts from the start
        st.state.remember_rollup(int((started + 10) * 1000), None, 1.0)  # `etl rollup` from cron
        st.state.remember_rollup(int((started + 20) * 1000), "server gone", 1.0)  # then a failure
        assert scraped(metrics) == started + 10
        assert st.state.get("rollup.last")["ok"] is False  # etl status still says it failed
        restarted = CollectorMetrics()
        restarted.watch(st, lambda: None, lambda: started + 3600)
        assert scraped(restarted) == started + 10  # a restart keeps it
        restarted.on(RollupEnded(started + 3700, "ok", 2.0))  # an hourly child of this collector
        assert scraped(restarted) == started + 3700


def test_log_lines_are_json_on_request_and_plain_when_piped(settings: Settings) -> None:
    done = run_etl(
        ["--log-format", "json", "collect", "--no-rollup", "--polls", "2"], etl_env(settings)
    )
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    assert sum("poll ok" in r["message"] for r in records) == 2
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r["time"]) for r in records)
    plain = run_etl(["collect", "--no-rollup", "--polls", "1"], etl_env(settings))
    assert plain.returncode == 0 and plain.stdout.strip(), plain.stderr
    assert all(
        re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", line) for line in plain.stdout.splitlines()
    )


@pytest.mark.slow
def test_every_command_result_is_json_lines_under_log_format_json(pgs: Settings) -> None:
    """Was: `etl --log-format json rollup` printed one JSON line, then a boxed table."""
    now_hour = hour_floor(int(time.time() * 1000))
    seed_ticks(pgs.staging_path, SYMBOLS, now_hour - 2 * HOUR_MS, polls=720)
    env = etl_env(pgs)
    rolled = run_etl(["--log-format", "json", "rollup"], env)
    assert rolled.returncode == 0, rolled.stderr
    records = [json.loads(line) for line in rolled.stdout.splitlines()]
    (result,) = [r["result"] for r in records if "result" in r]
    assert result["hours rolled up"] == "1" and result["ticks read"] == f"{720 * 3:,}"
    for command, code in ((["status"], 1), (["retention"], 0), (["reconcile"], 0)):
        done = run_etl(["--log-format", "json", *command], env)
        assert done.returncode == code, (command, done.stdout, done.stderr)  # status: no polls
        assert done.stdout.strip(), command
        assert all(json.loads(line)["message"] for line in done.stdout.splitlines()), command


@pytest.mark.parametrize("width", [60, 80, 120, 160])
def test_status_problems_wrap_whole_at_any_width_and_each_is_said_once(
    settings: Settings, width: int
) -> None:
    """Was: each problem cut to one line at 80 and 160 columns, dropping its advice ("... is
    `etl collect` ru"), and "PostgreSQL unreachable" said twice."""
    now_hour = hour_floor(int(time.time() * 1000))
    seed_ticks(settings.staging_path, list(settings.symbols), now_hour - 3 * HOUR_MS, polls=4)
    unreachable = replace(settings, pg_dsn="postgresql://etl@127.0.0.1:9/etl")
    done = run_etl(["status"], etl_env(unreachable, COLUMNS=str(width)))
    report = json.loads(run_etl(["status", "--json"], etl_env(unreachable)).stdout)
    assert done.returncode == 3 and len(report["problems"]) >= 2, report["problems"]
    lines = done.stdout.splitlines()
    assert max(len(line) for line in lines) <= width
    flat = " ".join(re.sub(r"[│╭╮╰╯─┃━┏┓┗┛┡┩└┘┌┐├┤┬┴┼]", " ", line) for line in lines)
    # Folded lines may break a long path anywhere: compare without any space; two runs, two ages.
    flat = re.sub(r"\d+sago", "Nsago", re.sub(r"\s+", "", flat))
    for problem in report["problems"]:
        said = re.sub(r"\d+sago", "Nsago", re.sub(r"\s+", "", problem))
        assert flat.count(said) == 1, (said, flat)
    assert flat.count("PostgreSQLunreachable") == 1


# -- the /metrics endpoint under abuse ----------------------------------------------------------


def samples_of(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def dropped(text: str, reason: str) -> float:
    return samples_of(text)[("etl_metrics_requests_dropped_total", (("reason", reason),))]


def idle_clients(host: str, port: int, n: int) -> list[socket.socket]:
    """``n`` connections that never finish a request: every other one sends half a request line."""
    out = []
    for k in range(n):
        sock = socket.create_connection((host, port), timeout=10)
        if k % 2:
            sock.sendall(b"GET /metr")
        out.append(sock)
    return out


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """Whether the server closed ``sock`` (EOF or reset) within ``within`` seconds."""
    sock.settimeout(max(within, 0.01))
    try:
        return sock.recv(1 << 16) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


@pytest.mark.slow
def test_a_flood_of_idle_connections_and_a_burst_of_scrapes_add_no_thread(
    settings: Settings,
) -> None:
    """Was: 400 idle half-sent connections held 415 threads in the collector, and 22 of 200
    parallel scrapes timed out (the old server: a thread per connection, no read timeout, no
    cap). Now: a flood of 500 idle connections and 200 scrapes at once add no thread, every
    scrape is answered, the polls go on, and the idle ones are closed once their request time is
    up, each counted. Latencies are in bench/metrics_bench.py, not asserted here."""
    cfg = replace(settings, metrics_port=0)
    out = Console(file=io.StringIO(), width=200)
    collector = Collector(cfg, rollup=False, view=CollectorView(live=False, out=out))
    runner = threading.Thread(target=collector.run, name="collector", daemon=True)
    runner.start()
    idle: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 30
        while collector.metrics_url is None or collector.stats.polls_ok < 3:
            assert time.monotonic() < deadline and runner.is_alive(), out.file.getvalue()  # type: ignore[attr-defined]
            time.sleep(0.05)
        url = collector.metrics_url
        host, port = url.split("//")[1].split("/")[0].rsplit(":", 1)

        def threads() -> int:  # the process's threads but the scrapers of this test
            return sum(not t.name.startswith("scraper") for t in threading.enumerate())

        assert requests.get(url, timeout=10).status_code == 200  # the server's threads exist
        before, polls_before = threads(), collector.stats.polls_ok
        idle = idle_clients(host, int(port), 500)
        during = [threads()]
        scraped = requests.get(url, timeout=10)  # answered at all, flood or not
        assert scraped.status_code == 200 and "etl_polls_total" in scraped.text

        def scrape(_: int) -> int:
            during.append(threads())
            return requests.get(url, timeout=10).status_code

        with ThreadPoolExecutor(200, thread_name_prefix="scraper") as pool:
            codes = list(pool.map(scrape, range(200)))
        during.append(threads())
        assert codes == [200] * 200
        # The fake exchange's HTTP server may start a thread for a new poll connection: slack 5.
        assert max(during) <= before + 5, (before, max(during))
        server = collector.metrics_server
        assert server is not None and server.open_connections <= server.max_connections
        # Every idle one is closed: evicted to make room, or cut at the request timeout.
        waited_until = time.monotonic() + server.request_timeout_s + 10
        still_open = [s for s in idle if not closed_by_server(s, waited_until - time.monotonic())]
        assert not still_open, f"{len(still_open)} idle connections still open"
        text = requests.get(url, timeout=10).text
        assert dropped(text, "timeout") + dropped(text, "evicted") == 500
        assert dropped(text, "evicted") >= 500 - server.max_connections
        assert dropped(text, "refused") == 0
        assert collector.stats.polls_ok > polls_before  # the polls went on through it all
    finally:
        for sock in idle:
            sock.close()
        collector.stop.set()
        runner.join(20)
    assert not runner.is_alive()
    assert not [t for t in threading.enumerate() if t.name.startswith("metrics-")]


def test_the_metrics_endpoint_evicts_cuts_slow_clients_and_counts_every_drop(
    tmp_path: Path,
) -> None:
    """The bounds one by one, on a server with a cap of 8 and a 0.5 s request timeout: the
    oldest idle connection makes room for a new one, a client sending a byte at a time is cut at
    the timeout, a huge or malformed head is refused; each is counted under its reason. The
    answer is prometheus_client's exposition of the registry, as before."""
    with Staging(tmp_path / "t.sqlite3") as st:
        metrics = CollectorMetrics()
        metrics.watch(st, lambda: None, time.time)
        server = metrics.serve(0, "127.0.0.1", max_connections=8, request_timeout_s=0.5)
        host, port = server.server_address
        request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
        try:
            idle = idle_clients(host, port, 8)
            deadline = time.monotonic() + 5
            while server.open_connections < 8:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            newest = socket.create_connection((host, port), timeout=5)
            newest.sendall(request)
            answer = b"".join(iter(lambda: newest.recv(1 << 16), b""))
            assert answer.startswith(b"HTTP/1.0 200 OK\r\n")
            body = answer.split(b"\r\n\r\n", 1)[1].decode()
            names = {f.name for f in text_string_to_metric_families(body)}
            expected = generate_latest(metrics.registry).decode()
            assert names == {f.name for f in text_string_to_metric_families(expected)}
            assert closed_by_server(idle[0], 2)  # the oldest made room for it
            slow = socket.create_connection((host, port), timeout=5)
            began = time.monotonic()
            with pytest.raises(OSError):
                for byte in request:
                    slow.send(bytes([byte]))
                    time.sleep(0.05)  # 38 bytes: 1.9 s if it were let through
                    if closed_by_server(slow, 0.0):
                        raise ConnectionResetError
            assert time.monotonic() - began < 1.8
            big = socket.create_connection((host, port), timeout=5)
            big.sendall(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 40_000 + b"\r\n\r\n")
            assert closed_by_server(big, 2)
            garbage = socket.create_connection((host, port), timeout=5)
            garbage.sendall(b"GET /metrics HTTX/1.1\r\n\r\n")
            reply = b"".join(iter(lambda: garbage.recv(1 << 16), b""))
            assert b"Error code: 400" in reply  # the standard library's answer (as HTTP/0.9)
            assert all(closed_by_server(s, 2) for s in idle[1:])  # cut at the request timeout
            text = generate_latest(metrics.registry).decode()
            assert dropped(text, "evicted") == 1
            assert dropped(text, "timeout") == 7 + 1  # the other idle ones and the slow one
            assert dropped(text, "too_large") == 1 and dropped(text, "bad_request") == 1
            assert dropped(text, "refused") == 0
        finally:
            server.shutdown()
    assert not [t for t in threading.enumerate() if t.name.startswith("metrics-")]
