"""The collector's ``/metrics`` endpoint under idle and parallel clients (issue 18, item 4).

``python -m bench.metrics_bench [--idle 500] [--parallel 200] [--rows 1000000]``

A child process plays the collector: a staging file of ``--rows`` ticks, the Prometheus
instruments served with :meth:`etl.collect.metrics.CollectorMetrics.serve`, and a poll every
100 ms (an append of 100 ticks and the ``Polled`` event, as the poll loop does). This process:

1. opens ``--idle`` connections that send nothing or half a request line, and keeps them open;
2. scrapes ``/metrics`` 20 times, one after another (latency of each);
3. scrapes ``--parallel`` times at once (latency of each, how many failed within 10 s);
4. reports the child's threads (before, during the flood, after), its peak memory, and how
   late its polls came (the slot's time to the append's commit).

Only 127.0.0.1 is ever contacted. Measures whatever ``CollectorMetrics.serve`` is in the
checkout it runs from, so the same file measures the server before and after a change.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil

CHILD = r"""
import json, sys, threading, time
import polars as pl
from etl.collect.events import Polled
from etl.collect.metrics import CollectorMetrics
from etl.staging.store import Staging

path, rows = sys.argv[1], int(sys.argv[2])
symbols = [f"S{i}USDT" for i in range(100)]
with Staging(path) as st:
    polls = rows // len(symbols)
    now = int(time.time() * 1000)
    st.ticks.append_frame(pl.DataFrame({
        "symbol": symbols * polls,
        "ts": [now - (polls - k) * 1000 for k in range(polls) for _ in symbols],
        "price": [1.0] * (polls * len(symbols)),
    }))
    metrics = CollectorMetrics()
    metrics.watch(st, lambda: None, time.time)
    server = metrics.serve(0, "127.0.0.1")
    print(json.dumps({"port": server.server_address[1]}), flush=True)
    late = []
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    slot = time.time()
    while not stop.is_set():
        slot += 0.1
        wait = slot - time.time()
        if wait > 0:
            time.sleep(wait)
        ms = int(time.time() * 1000)
        st.ticks.append(symbols, [1.0] * len(symbols), ms)
        metrics.on(Polled(time.time(), ms, symbols, [1.0] * len(symbols), 0.001))
        late.append(time.time() - slot)
    print(json.dumps({"late": late}), flush=True)
"""


def scrape(url: str, timeout: float) -> float | None:
    """Seconds to a full answer, or None if it failed."""
    began = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            reply.read()
    except OSError:
        return None
    return time.perf_counter() - began


def spread_ms(samples: list[float]) -> str:
    if not samples:
        return "none answered"
    q = statistics.quantiles(samples, n=20) if len(samples) > 1 else samples * 19
    return (
        f"min {min(samples) * 1000:.1f} / median {statistics.median(samples) * 1000:.1f} / "
        f"p95 {q[18] * 1000:.1f} / max {max(samples) * 1000:.1f} ms"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--idle", type=int, default=500)
    parser.add_argument("--parallel", type=int, default=200)
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(Path(tmp) / "t.sqlite3"), str(args.rows)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(root)},
        )
        assert child.stdout is not None and child.stdin is not None
        port = json.loads(child.stdout.readline())["port"]
        url = f"http://127.0.0.1:{port}/metrics"
        proc = psutil.Process(child.pid)
        print(f"checkout {root}, staging {args.rows:,} ticks")
        scrape(url, 30)
        print(f"threads idle: {proc.num_threads()}, RSS {proc.memory_info().rss >> 20} MiB")
        idle: list[socket.socket] = []
        for k in range(args.idle):
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
            except OSError:
                break
            if k % 2:
                s.sendall(b"GET /metr")  # half a request line, never finished
            idle.append(s)
        time.sleep(1.0)
        print(
            f"{len(idle)} idle connections open: threads {proc.num_threads()}, "
            f"RSS {proc.memory_info().rss >> 20} MiB"
        )
        one = [scrape(url, 30) for _ in range(20)]
        print(
            f"20 scrapes one after another: {spread_ms([t for t in one if t is not None])}, "
            f"{one.count(None)} failed"
        )
        peak = [0]
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                with contextlib.suppress(psutil.Error):
                    peak[0] = max(peak[0], proc.num_threads())
                time.sleep(0.02)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        with ThreadPoolExecutor(args.parallel) as pool:
            many = list(pool.map(lambda _: scrape(url, 10), range(args.parallel)))
        done.set()
        watcher.join()
        answered = [t for t in many if t is not None]
        print(
            f"{args.parallel} scrapes at once: {spread_ms(answered)}, "
            f"{many.count(None)} failed within 10 s; peak threads {peak[0]}"
        )
        closed = 0
        for s in idle:
            s.settimeout(0.0)
            try:
                closed += s.recv(1) == b""
            except BlockingIOError:
                pass
            except OSError:
                closed += 1
        print(f"idle connections closed by the server so far: {closed} of {len(idle)}")
        for s in idle:
            s.close()
        child.stdin.close()
        late = json.loads(child.stdout.readline())["late"]
        child.wait(30)
        print(
            f"polls: {len(late)}, lateness median {statistics.median(late) * 1000:.1f} ms, "
            f"max {max(late) * 1000:.1f} ms"
        )


if __name__ == "__main__":
    main()
