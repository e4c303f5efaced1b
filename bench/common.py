"""Shared bits: timing and its summaries, worker processes, a fake exchange in its own process, an
embedded PostgreSQL, data."""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import adbc_driver_postgresql.dbapi as pg
import polars as pl

from etl.exchange.fake.rest import served
from etl.staging.store import Staging

ROOT = Path(__file__).resolve().parent.parent  # the checkout: children import ``bench`` from here


def median_ms(samples: Sequence[float]) -> float:
    return statistics.median(samples) * 1000


def percentile(samples: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation: a p99 is a wait that really happened)."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def spread(samples: Sequence[float], unit: str = "s", scale: float = 1.0, digits: int = 3) -> str:
    """``min / median / max unit`` of ``samples`` times ``scale``."""
    lo, mid, hi = (scale * v for v in (min(samples), statistics.median(samples), max(samples)))
    return f"{lo:.{digits}f} / {mid:.{digits}f} / {hi:.{digits}f} {unit}"


def ratio_line(
    label: str,
    num: Sequence[float],
    den: Sequence[float],
    goal: str = "",
    met: Callable[[float], bool] | None = None,
) -> str:
    """The ratio of the medians (judged against the goal), then the spread of the ratios of the
    alternating pairs."""
    ratio = statistics.median(num) / statistics.median(den)
    pairs = [a / b for a, b in zip(num, den, strict=False)]
    line = f"  {label:<40} {ratio:6.2f}   (pairs {spread(pairs, '', digits=2).strip()})"
    if met is not None:
        line += f"   goal {goal}: {'met' if met(ratio) else 'MISSED'}"
    return line


def child_env(**extra: str) -> dict[str, str]:
    """Environment of a child process: no ``ETL_*`` of the caller's, ``bench`` importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


class Worker:
    """A long-lived child speaking one line per request: it prints ``ready`` once set up, then
    answers each command line with the seconds the timed work took (timed inside the child)."""

    def __init__(self, module: str, *args: str, cwd: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=child_env(),
            cwd=cwd,
        )
        if self._line() != "ready":
            raise RuntimeError(f"{module} did not start")

    def _line(self) -> str:
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            self.proc.wait(10)
            raise RuntimeError(f"worker exited with {self.proc.returncode}")
        return line.strip()

    def ask(self, command: str) -> float:
        self.proc.stdin.write(command + "\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        return float(self._line())

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()  # EOF ends the worker's loop
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def spawn_wait(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """Run a child to its exit through ``bench.spawn``: wall seconds from spawn to exit and its
    peak RSS in MiB (measured by the small launcher: see there why)."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.spawn", *argv],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["exit"]:
        raise RuntimeError(f"{' '.join(argv)} exited with {result['exit']}")
    return result["wall_s"], result["rss_mib"]


def timed(fn: Callable[[], object], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


@contextmanager
def exchange_process(symbols: int) -> Iterator[str]:
    """The fake exchange (REST only) in a child process: its URL."""
    with served("--symbols", str(symbols), "--no-ws") as (url, _):
        yield url


@contextmanager
def postgres() -> Iterator[str]:
    """An embedded PostgreSQL in /tmp for the benchmark's lifetime."""
    from etl.warehouse.embedded import embedded_server

    base = Path(tempfile.mkdtemp(prefix="etl-bench-pg-", dir="/tmp"))
    base.chmod(0o755)
    try:
        with embedded_server(base / "pg") as uri:
            yield uri
    finally:  # the server has stopped: its data (hundreds of MiB) goes too
        shutil.rmtree(base, ignore_errors=True)


def fresh_database(admin_uri: str, name: str) -> str:
    """An empty database ``name`` on the bench's server (dropped first if there); its URI."""
    with pg.connect(admin_uri, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        cur.execute(f"CREATE DATABASE {name}")
    return admin_uri.replace("/etl?", f"/{name}?")


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
            total += st.ticks.append_frame(frame)
    return total
