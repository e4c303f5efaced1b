"""Part 1: the collector's hot path against the fake exchange serving 3,000 symbols.

- per poll: request + parse + validate + append (one SQLite transaction), median of N polls;
  baseline: ``requests`` + ``resp.json()`` + a list of tuples + stdlib ``sqlite3.executemany``.
- append: 3,000-tick polls appended back to back; baseline: stdlib ``sqlite3.executemany`` into
  the same schema (WAL, synchronous=NORMAL, index on ts), one transaction per poll.
Ours and the baseline alternate, so the machine's noise falls on both.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

import requests

from bench.common import exchange_process, median_ms, ratio_line, spread
from etl.exchange.client import BinanceClient
from etl.staging.store import Staging

SYMBOLS = 3000


def _stdlib_store(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(
        "CREATE TABLE ticks (symbol TEXT NOT NULL, ts INTEGER NOT NULL, price REAL NOT NULL)"
    )
    conn.execute("CREATE INDEX ticks_ts ON ticks (ts)")
    return conn


def run(polls: int = 60, appends: int = 300) -> dict[str, list[float]]:
    work = Path(tempfile.mkdtemp(prefix="etl-bench-collector-"))
    results: dict[str, list[float]] = {}
    with exchange_process(SYMBOLS) as url:
        client = BinanceClient(url)
        symbols = sorted(client.exchange_info().statuses)
        wanted = set(symbols)
        staging = Staging(work / "ours.sqlite3")
        base = _stdlib_store(work / "baseline.sqlite3")
        session = requests.Session()

        def ours_poll() -> float:
            started = time.perf_counter()
            poll = client.prices(symbols)
            staging.ticks.append(poll.symbols, poll.prices, poll.received_ms)
            return time.perf_counter() - started

        def baseline_poll() -> float:
            started = time.perf_counter()
            data = session.get(url + "/api/v3/ticker/price", timeout=5).json()
            ts = int(time.time() * 1000)
            rows = [(d["symbol"], ts, float(d["price"])) for d in data if d["symbol"] in wanted]
            base.execute("BEGIN")
            base.executemany("INSERT INTO ticks VALUES (?, ?, ?)", rows)
            base.execute("COMMIT")
            return time.perf_counter() - started

        for _ in range(3):  # warm up connections and caches
            ours_poll(), baseline_poll()
        ours, baseline = [], []
        for _ in range(polls):
            ours.append(ours_poll())
            baseline.append(baseline_poll())
        results["poll"] = ours
        results["poll_baseline"] = baseline

        prices = [100.0 + i / 7 for i in range(SYMBOLS)]
        t0 = int(time.time() * 1000) + 10_000_000
        ours, baseline = [], []
        for k in range(appends):
            ts = t0 + k * 5000
            started = time.perf_counter()
            staging.ticks.append(symbols, prices, ts)
            ours.append(time.perf_counter() - started)
            rows = list(zip(symbols, [ts] * SYMBOLS, prices, strict=True))
            started = time.perf_counter()
            base.execute("BEGIN")
            base.executemany("INSERT INTO ticks VALUES (?, ?, ?)", rows)
            base.execute("COMMIT")
            baseline.append(time.perf_counter() - started)
        results["append"] = ours
        results["append_baseline"] = baseline
        client.close()
        staging.close()
        base.close()
    shutil.rmtree(work, ignore_errors=True)
    return results


def report(r: dict[str, list[float]]) -> list[str]:
    poll_ms = median_ms(r["poll"])
    tps = SYMBOLS / (median_ms(r["append"]) / 1000)
    per_poll = [SYMBOLS / t / 1e6 for t in r["append"]]
    per_poll_base = [SYMBOLS / t / 1e6 for t in r["append_baseline"]]
    return [
        f"part 1: collector, {SYMBOLS:,} symbols per poll (fake exchange in its own process); "
        f"{len(r['poll'])} alternating polls, {len(r['append'])} alternating appends "
        "(min / median / max)",
        "  ratios (of the medians; pairs: the ratios of the alternating pairs)",
        ratio_line("per poll: baseline / ours", r["poll_baseline"], r["poll"]),
        ratio_line("append throughput: ours / baseline", r["append_baseline"], r["append"]),
        "  absolute",
        f"  {'per poll, request+parse+validate+append':<40} {spread(r['poll'], 'ms', 1000, 1)}"
        f"   goal <= 30 ms (median): {'met' if poll_ms <= 30 else 'MISSED'}",
        f"  {'per poll, requests+json+executemany':<40} "
        f"{spread(r['poll_baseline'], 'ms', 1000, 1)}",
        f"  {'append, 3,000-tick polls (M ticks/s)':<40} {spread(per_poll, 'M/s', digits=2)}"
        f"   goal >= 1 M/s (median): {'met' if tps >= 1e6 else 'MISSED'}",
        f"  {'append, sqlite3.executemany (M ticks/s)':<40} "
        f"{spread(per_poll_base, 'M/s', digits=2)}",
    ]
