"""What an operator watches: `etl status` as a health check (exit codes, JSON that follows its
schema, values for people), honest coverage, Prometheus metrics scraped for real, log lines."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jsonschema
import polars as pl
import pytest
from prometheus_client.parser import text_string_to_metric_families

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
