"""A stand-in for the collector's writes, in a process of its own as in production: one
``Staging.append`` of a 3,000-tick poll every ``--interval-ms``, each commit timed.

Usage: ``python -m bench.poll_writer STAGING_PATH [--symbols N] [--interval-ms MS]``. Prints
``ready`` once the staging file is open, writes until a line (or EOF) arrives on stdin, then
prints one JSON list of ``[started, seconds, ok]`` per commit (``started`` on the system-wide
monotonic clock, so the parent can line the commits up with its own timings).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

from etl.staging.store import Staging


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path")
    parser.add_argument("--symbols", type=int, default=3000)
    parser.add_argument("--interval-ms", type=float, default=50.0)
    args = parser.parse_args()
    symbols = [f"S{i:05d}USDT" for i in range(args.symbols)]
    prices = [100.0 + i / 7 for i in range(args.symbols)]
    interval = args.interval_ms / 1000
    stop = threading.Event()
    # stdin is read on a thread so that the loop never blocks on it between commits.
    threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
    commits: list[tuple[float, float, bool]] = []
    with Staging(args.path) as staging:
        print("ready", flush=True)
        due = time.monotonic()
        while not stop.is_set():
            started = time.monotonic()
            try:
                staging.ticks.append(symbols, prices, int(time.time() * 1000))
                ok = True
            except Exception:  # "database is locked" past busy_timeout: counted, not fatal
                ok = False
            commits.append((started, time.monotonic() - started, ok))
            # A fixed cadence, as the collector polls; a late commit is not followed by a burst.
            due = max(due + interval, time.monotonic())
            stop.wait(due - time.monotonic())
    print(json.dumps(commits), flush=True)


if __name__ == "__main__":
    main()
