"""Part 4: the trade collector's sustained ingest, and its CPU per 1,000 trades a second.

The fake exchange runs in a process of its own and streams ``SYMBOLS`` symbols at
``TRADES_PER_MINUTE`` aggregate trades each (about 30,000 trades a second in all) over
WebSockets. ``etl collect --source trades --no-rollup`` runs in another process with a
pseudo-terminal as its standard output, so its live table is drawn as on a screen. Its staging
file starts with cursors at the exchange's latest ids (a collector that has been running: no
first-start catch-up of the hour so far). After a warm-up, over a measured window:

- ingest: trades newly staged per second (rows counted in the staging file);
- backlog at the end: ids the exchange had made that were not yet staged (the collector keeps up
  if it stays flat);
- CPU: the collector process's user + system seconds per wall second, and that per 1,000
  trades/s.
"""

from __future__ import annotations

import contextlib
import os
import pty
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import psutil
import requests

from bench.common import child_env, spread
from etl.exchange.fake.rest import served
from etl.staging.store import Staging
from etl.staging.trades import cursor_schema

SYMBOLS = 60
# Per symbol: 60 x 500/s = 30,000 trades/s offered, so that ingest, not the offer, is measured
# against the goal of 20,000/s (the fake's per-minute counts vary by +-50 % around the mean).
TRADES_PER_MINUTE = 30_000


@contextlib.contextmanager
def streaming_exchange(symbols: int, per_minute: int) -> Iterator[tuple[str, str]]:
    """The fake exchange with its streams in a child process: ``(REST URL, WebSocket URL)``."""
    args = ("--symbols", str(symbols), "--trades-per-minute", str(per_minute))
    with served(*args, "--weight-limit", "1000000", env=child_env()) as (rest, ws):
        assert ws is not None
        yield rest, ws


def latest_ids(rest: str, symbols: list[str]) -> dict[str, tuple[int, int]]:
    out = {}
    with requests.Session() as s:
        for symbol in symbols:
            last = s.get(f"{rest}/api/v3/aggTrades", params={"symbol": symbol, "limit": 1}).json()
            out[symbol] = (int(last[-1]["a"]), int(last[-1]["T"]))
    return out


def staged(path: Path) -> tuple[int, dict[int, int]]:
    """Rows and the highest id per symbol id, read with stdlib sqlite3 (another process)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute("SELECT max(seq) FROM tick_rows").fetchone()[0] or 0
        tops = dict(conn.execute("SELECT sym, last_id FROM trade_cursor").fetchall())
    finally:
        conn.close()
    return int(rows), {int(k): int(v) for k, v in tops.items()}


def one_run(rest: str, ws: str, symbols: list[str], warmup: float, window: float) -> dict:
    work = Path(tempfile.mkdtemp(prefix="etl-bench-trades-"))
    path = work / "ticks.sqlite3"
    ids = latest_ids(rest, symbols)
    started = time.time()
    with Staging(path) as st:
        syms = st.ticks.symbol_ids(symbols)
        st.trades.append(
            pl.DataFrame(
                schema=dict.fromkeys(["sym", "ts", "agg_id", "trades"], pl.Int64)
            ).with_columns(price=pl.lit(0.0), qty=pl.lit(0.0)),
            pl.DataFrame(
                [
                    (sym, ids[s][0], ids[s][1], ids[s][1], ids[s][1])
                    for s, sym in zip(symbols, syms, strict=True)
                ],
                schema=cursor_schema(),
                orient="row",
            ),
        )
    env = child_env(
        ETL_SQLITE_PATH=str(path),
        ETL_DATA_DIR=str(work),
        ETL_SYMBOLS=",".join(symbols),
        ETL_BINANCE_URL=rest,
        ETL_WS_URL=ws,
        ETL_SOURCE="trades",
        COLUMNS="120",
        LINES="40",
    )
    master, slave = pty.openpty()  # a terminal: the live table is drawn
    proc = subprocess.Popen(
        [sys.executable, "-m", "etl", "collect", "--no-rollup"],
        stdout=slave,
        stderr=slave,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    os.close(slave)
    drawn = [0]

    def drain() -> None:  # read the screen as a terminal would, so the child never blocks
        with contextlib.suppress(OSError):
            while chunk := os.read(master, 65536):
                drawn[0] += len(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        time.sleep(warmup)
        ps = psutil.Process(proc.pid)
        cpu0, (rows0, _), t0 = ps.cpu_times(), staged(path), time.perf_counter()
        time.sleep(window)
        cpu1, (rows1, tops), t1 = ps.cpu_times(), staged(path), time.perf_counter()
        exchange = latest_ids(rest, symbols)
    finally:
        proc.terminate()
        proc.wait(20)
        with contextlib.suppress(OSError):
            os.close(master)
    shutil.rmtree(work, ignore_errors=True)
    wall = t1 - t0
    cpu = (cpu1.user - cpu0.user + cpu1.system - cpu0.system) / wall
    rate = (rows1 - rows0) / wall
    sym_of = dict(zip(symbols, syms, strict=True))
    backlog = sum(max(0, exchange[s][0] - tops.get(sym_of[s], 0)) for s in symbols)
    return {
        "rate": rate,
        "offered": sum(exchange[s][0] - ids[s][0] for s in symbols) / (time.time() - started),
        "cpu": cpu,
        "cpu_per_k": cpu / (rate / 1000) if rate else float("inf"),
        "backlog": backlog,
        "drawn": drawn[0],
    }


def run(runs: int = 3, warmup: float = 10.0, window: float = 30.0) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {
        "rate": [],
        "offered": [],
        "cpu": [],
        "cpu_per_k": [],
        "backlog": [],
    }
    with streaming_exchange(SYMBOLS, TRADES_PER_MINUTE) as (rest, ws):
        symbols = sorted(requests.get(f"{rest}/api/v3/exchangeInfo").json()["symbols"], key=str)
        names = sorted(s["symbol"] for s in symbols)[:SYMBOLS]
        for _ in range(runs):
            r = one_run(rest, ws, names, warmup, window)
            if not r["drawn"]:
                raise RuntimeError("the collector drew no live table")
            for key in out:
                out[key].append(r[key])
    out["window"] = [window]
    return out


def report(r: dict[str, list[float]]) -> list[str]:
    rate = statistics.median(r["rate"])
    return [
        f"part 4: trade collector, {SYMBOLS} symbols x {TRADES_PER_MINUTE:,} trades/min "
        f"(~{SYMBOLS * TRADES_PER_MINUTE // 60:,}/s) over WebSockets from the fake exchange in "
        f"its own process; live table on (a pseudo-terminal); {len(r['rate'])} runs of "
        f"{r['window'][0]:.0f} s after a warm-up (min / median / max)",
        f"  {'offered by the exchange, trades/s':<40} {spread(r['offered'], '/s', digits=0)}",
        f"  {'ingest, trades staged per second':<40} {spread(r['rate'], '/s', digits=0)}"
        f"   goal >= 20,000/s (median): {'met' if rate >= 20_000 else 'MISSED'}",
        f"  {'collector CPU (cores)':<40} {spread(r['cpu'], 'cores', digits=3)}",
        f"  {'CPU per 1,000 trades/s':<40} {spread(r['cpu_per_k'], 'cores', digits=4)}",
        f"  {'ids not yet staged at the end':<40} {spread(r['backlog'], 'ids', digits=0)}",
    ]
