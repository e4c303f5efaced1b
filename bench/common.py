"""Shared bits: timing, a fake exchange in its own process, an embedded PostgreSQL, data."""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import polars as pl

from etl.staging import Staging


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def timed(fn: Callable[[], object], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


@contextmanager
def exchange_process(symbols: int) -> Iterator[str]:
    """The fake exchange in a child process, so its work does not share our GIL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "etl.fake_exchange", "--port", "0", "--symbols", str(symbols)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        yield line.strip().rsplit(" ", 1)[-1]
    finally:
        proc.terminate()
        proc.wait(10)


@contextmanager
def postgres() -> Iterator[str]:
    """An embedded PostgreSQL in /tmp for the benchmark's lifetime."""
    from etl.embedded_pg import embedded_server

    base = Path(tempfile.mkdtemp(prefix="etl-bench-pg-", dir="/tmp"))
    base.chmod(0o755)
    with embedded_server(base / "pg") as uri:
        yield uri


def stage_hours(
    path: Path, symbols: int, start_ms: int, hours: int, interval_ms: int = 5000
) -> int:
    """Stage ``hours`` of polls of ``symbols`` symbols, an hour at a time (bounded memory)."""
    names = [f"S{i:05d}USDT" for i in range(symbols)]
    polls = 3_600_000 // interval_ms
    total = 0
    with Staging(path) as st:
        for h in range(hours):
            frame = pl.DataFrame(
                {
                    "symbol": names * polls,
                    "ts": pl.int_range(0, polls * symbols, eager=True) // symbols * interval_ms
                    + start_ms
                    + h * 3_600_000
                    + 37,
                }
            ).with_columns(price=100.0 + (pl.col("ts").hash(h) % 10_000).cast(pl.Float64) / 100.0)
            total += st.append_frame(frame)
    return total


def row(label: str, ours: str, baseline: str, ratio: str) -> str:
    return f"  {label:<44} {ours:>16} {baseline:>16} {ratio:>9}"
