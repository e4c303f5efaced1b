"""Part 5: the Parquet archive (docs/archive.md): disk use and write time per hour of 3,000
symbols.

Two staged hours are archived the way the rollup does it before a purge
(``etl.staging.archive.archive_hours``: read the hour's rows from the staging file, encode them
as zstd Parquet, sha256, write to a hidden name, fsync, rename, fsync the folder, write the
manifest, record it all in the staging file):

- poll: 3,000 symbols polled every 5 s (2.16 M ticks), prices a random walk on a 0.01 grid;
- trade: 3,000 symbols with 300 aggregate trades each (0.9 M trades).

Reported: seconds per hour archived, and bytes per tick in the archive against the staging
file's bytes per tick (its size after a checkpoint, divided by its rows). Beside them, the same
hour of polls written one file per symbol (``source=poll/symbol=S/date=D/hour=H.parquet``, the
layout the issue sketched): what 3,000 small files an hour cost.

Each run archives into a new folder, from the same staging file (its archive record cleared).
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from bench.common import spread
from etl.bars import trade_context
from etl.hours import HOUR_MS, hour_floor
from etl.staging.archive import Archive, _Local, archive_hours, archive_table, encode, no_crash
from etl.staging.store import Staging

SYMBOLS = 3000
POLL_MS = 5000
TRADES_PER_SYMBOL = 300


def _stage(path: Path, poll_hour: int, trade_hour: int) -> dict[str, int]:
    rng = np.random.default_rng(5)
    names = [f"S{i:05d}USDT" for i in range(SYMBOLS)]
    polls = 3_600_000 // POLL_MS
    base = np.exp(rng.uniform(np.log(0.01), np.log(50_000), SYMBOLS))
    steps = rng.normal(0, 2e-4, (polls, SYMBOLS)).cumsum(axis=0)
    grid = np.maximum(base / 10_000, 1e-8)  # about 4-5 significant digits, as real tickers
    prices = np.round(base * np.exp(steps) / grid) * grid
    frame = pl.DataFrame(
        {
            "symbol": names * polls,
            "ts": np.repeat(poll_hour + 37 + POLL_MS * np.arange(polls), SYMBOLS),
            "price": prices.reshape(-1),
        }
    )
    n = SYMBOLS * TRADES_PER_SYMBOL
    with Staging(path) as st:
        st.ticks.append_frame(frame)
        syms = np.repeat(np.array(st.ticks.symbol_ids(names), dtype=np.int64), TRADES_PER_SYMBOL)
        offsets = np.sort(rng.integers(0, HOUR_MS, (SYMBOLS, TRADES_PER_SYMBOL)), axis=1)
        trade_prices = (
            np.round(
                base[:, None]
                * np.exp(rng.normal(0, 3e-4, (SYMBOLS, TRADES_PER_SYMBOL)).cumsum(axis=1))
                / grid[:, None]
            )
            * grid[:, None]
        )
        st.trades.append(
            pl.DataFrame(
                {
                    "sym": syms,
                    "ts": trade_hour + offsets.reshape(-1),
                    "price": trade_prices.reshape(-1),
                    "agg_id": np.arange(n, dtype=np.int64) + 10_000_000,
                    "qty": np.round(rng.exponential(0.5, n), 4) + 0.0001,
                    "trades": rng.integers(1, 6, n),
                }
            )
        )
        # What the rollup keeps for the archive when it makes the bars (see docs/archive.md).
        _, trades = st.ticks.hour_rows(trade_hour, st.ticks.max_seq())
        st.archive_log.keep_context(
            {poll_hour: POLL_MS / 1000, trade_hour: POLL_MS / 1000}, trade_context(trades)
        )
        st.db.checkpoint()
        rows = st.ticks.count()
    size = path.stat().st_size
    return {"poll_ticks": frame.height, "trade_ticks": n, "rows": rows, "bytes": size}


def _per_symbol(staging: Staging, hour: int, max_seq: int, folder: Path) -> tuple[float, int]:
    """The hour's polls as one file per symbol: seconds and bytes."""
    started = time.perf_counter()
    polls, _ = staging.ticks.hour_rows(hour, max_seq)
    names = staging.ticks.symbols()
    out = _Local(folder)
    total = 0
    for (sym,), rows in polls.partition_by("sym", as_dict=True).items():
        data = encode(archive_table(rows, names, "poll"))
        out.write(f"source=poll/symbol={sym}/date=d/hour=00.parquet", data, no_crash)
        total += len(data)
    return time.perf_counter() - started, total


def run(runs: int = 5) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="etl-bench-archive-", dir="/tmp"))
    r: dict[str, Any] = {"runs": runs, "poll_s": [], "trade_s": [], "split_s": []}
    try:
        poll_hour = hour_floor(int(time.time() * 1000)) - 4 * HOUR_MS
        trade_hour = poll_hour + HOUR_MS
        path = work / "staging.sqlite3"
        r.update(_stage(path, poll_hour, trade_hour))
        with Staging(path) as st:
            top = st.ticks.max_seq()
            for k in range(runs):
                for hour, key in ((poll_hour, "poll"), (trade_hour, "trade")):
                    with st.db.transaction() as cur:
                        if st.archive_log.archived():  # write the hour again
                            cur.execute("DELETE FROM archive_hours")
                    folder = work / f"archive-{k}"
                    done = archive_hours(
                        st, Archive(str(folder)), [(hour, top)], default_interval_s=5.0, now_ms=0
                    )
                    assert done.hours == 1 and done.rows == r[f"{key}_ticks"], done
                    assert not done.context_at_archive, done
                    r[f"{key}_s"].append(done.seconds)
                    r[f"{key}_bytes"] = done.bytes
                split_s, split_bytes = _per_symbol(st, poll_hour, top, work / f"split-{k}")
                r["split_s"].append(split_s)
                r["split_bytes"] = split_bytes
                shutil.rmtree(work / f"archive-{k}")
                shutil.rmtree(work / f"split-{k}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return r


def report(r: dict[str, Any]) -> list[str]:
    staged = r["bytes"] / r["rows"]

    def per_tick(key: str) -> str:
        b = r[f"{key}_bytes"] / r[f"{key}_ticks"]
        return f"{b:.2f} B/tick ({b / staged:.0%} of the staging file's {staged:.1f} B/tick)"

    return [
        f"part 5: the Parquet archive, one hour of {SYMBOLS:,} symbols archived as the rollup "
        f"does before a purge (read, zstd Parquet, sha256, fsync, rename, manifest, record); "
        f"{r['runs']} runs (min / median / max)",
        f"  {'poll hour (5 s, ' + format(r['poll_ticks'], ',') + ' ticks)':<40} "
        f"{spread(r['poll_s'])}   {per_tick('poll')}, {r['poll_bytes'] / 2**20:.1f} MiB",
        f"  {'trade hour (' + format(r['trade_ticks'], ',') + ' trades)':<40} "
        f"{spread(r['trade_s'])}   {per_tick('trade')}, {r['trade_bytes'] / 2**20:.1f} MiB",
        f"  {'poll hour, one file per symbol':<40} {spread(r['split_s'])}   "
        f"{r['split_bytes'] / r['poll_ticks']:.2f} B/tick in {SYMBOLS:,} files "
        f"(x{statistics.median(r['split_s']) / statistics.median(r['poll_s']):.1f} the time of "
        "one file)",
    ]
