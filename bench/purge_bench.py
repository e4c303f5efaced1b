"""Part 3: the collector never waits behind the purge.

One committed hour of 3,000 symbols at 1 s (10.8 M ticks) is purged the way production does it:
``run_rollup`` with a small ``raw_retention_h`` once the hour is in the ledger (nothing left to
roll up, so the pass is the purge plus the ledger and retention bookkeeping around it). Meanwhile
a writer in another process (``bench.poll_writer``; the collector and the rollup are separate
processes in production) commits one 3,000-tick poll every 50 ms into the same staging file with
``Staging.append``. Reported: the writer's maximum and p99 time per commit while the purge runs
(beside the same writer's figures just before it, the baseline), commits that failed, and the
purge pass's duration (beside a pass with nothing to purge). Goal: max wait <= 100 ms.

Each run starts from a copy of one staged file and a new warehouse database, and commits the
hour with a first ``run_rollup`` (not timed).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.common import (
    ROOT,
    child_env,
    fresh_database,
    percentile,
    postgres,
    spread,
    stage_hours,
)
from etl.config import load_settings
from etl.hours import HOUR_MS, hour_floor
from etl.jobs.rollup import run_rollup

SYMBOLS = 3000
WRITE_EVERY_MS = 50
IDLE_S = 2.0  # the writer alone before the purge: its undisturbed commit times
WARMUP = 3  # the writer's first commits (fresh connection, cold pages) are not its baseline
TAIL_S = 0.5  # and after it, so a commit held up to the end is seen finishing
GOAL_MS = 100


def run(runs: int = 5, interval_ms: int = 1000) -> dict[str, Any]:
    r: dict[str, Any] = {"runs": runs, "interval_ms": interval_ms}
    work = Path(tempfile.mkdtemp(prefix="etl-bench-purge-", dir="/tmp"))
    try:
        with postgres() as admin_uri:
            hour = hour_floor(int(time.time() * 1000)) - 3 * HOUR_MS
            template = work / "template.sqlite3"
            r["ticks"] = stage_hours(template, SYMBOLS, hour, 1, interval_ms=interval_ms)
            path = work / "staging.sqlite3"
            keep = replace(
                load_settings(env={}),
                data_dir=work,
                sqlite_path=path,
                raw_retention_h=8e4,
            )
            per_run = [_one(template, path, admin_uri, keep) for _ in range(runs)]
        for key in per_run[0]:
            r[key] = [p[key] for p in per_run]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return r


def _one(template: Path, path: Path, admin_uri: str, settings: Any) -> dict[str, Any]:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    for suffix in ("", "-wal"):  # the WAL too, should the last close not have checkpointed it
        if Path(f"{template}{suffix}").exists():
            shutil.copy(f"{template}{suffix}", f"{path}{suffix}")
            # Flushed now, so that no fsync of the writer or the purge pays for the copy.
            with open(f"{path}{suffix}", "rb+") as fh:
                os.fsync(fh.fileno())
    keep = replace(settings, pg_dsn=fresh_database(admin_uri, "bench_purge"))
    purge = replace(keep, raw_retention_h=1.0)  # the hour ended 2 h ago: purged
    committed = run_rollup(keep)
    assert committed.hours == 1 and committed.purged == 0, committed
    writer = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.poll_writer",
            str(path),
            "--symbols",
            str(SYMBOLS),
            "--interval-ms",
            str(WRITE_EVERY_MS),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
        cwd=ROOT,
    )
    try:
        assert writer.stdout is not None and writer.stdin is not None
        if writer.stdout.readline().strip() != "ready":
            raise RuntimeError("bench.poll_writer did not start")
        time.sleep(IDLE_S)
        started = time.monotonic()
        summary = run_rollup(purge)
        ended = time.monotonic()
        noop_started = time.monotonic()
        run_rollup(purge)  # the same pass with nothing left to purge: its fixed cost
        noop = time.monotonic() - noop_started
        time.sleep(TAIL_S)
        out, _ = writer.communicate("stop\n", timeout=60)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    commits = json.loads(out)
    # A commit is "during" the purge if any of it overlaps the purge pass.
    during = [c for c in commits if c[0] < ended and c[0] + c[1] > started]
    before = [c for c in commits[WARMUP:] if c[0] + c[1] <= started]
    return {
        "purged": summary.purged,
        "purge_s": ended - started,
        "noop_s": noop,
        "max_ms": 1000 * max(c[1] for c in during),
        "p99_ms": 1000 * percentile([c[1] for c in during], 99),
        "commits": len(during),
        # Polls the collector would have made meanwhile but could not: each is a late poll.
        "missed": max(0, round((ended - started) * 1000 / WRITE_EVERY_MS) - len(during)),
        "failed": sum(1 for c in during if not c[2]),
        "idle_max_ms": 1000 * max(c[1] for c in before),
        "idle_p99_ms": 1000 * percentile([c[1] for c in before], 99),
        "idle_median_ms": 1000 * statistics.median(c[1] for c in before),
    }


def report(r: dict[str, Any]) -> list[str]:
    worst = max(r["max_ms"])
    return [
        f"part 3: purge vs collector: {r['ticks'] / 1e6:.1f} M ticks of one committed hour "
        f"({SYMBOLS:,} symbols at {r['interval_ms'] / 1000:g} s) purged by run_rollup "
        f"(raw_retention_h=1) while another process commits a {SYMBOLS:,}-tick poll every "
        f"{WRITE_EVERY_MS} ms; {r['runs']} runs (min / median / max over runs)",
        f"  {'writer max wait per commit, purge on':<40} {spread(r['max_ms'], 'ms', digits=1)}"
        f"   goal <= {GOAL_MS} ms (worst run): {'met' if worst <= GOAL_MS else 'MISSED'}",
        f"  {'writer p99 wait per commit, purge on':<40} {spread(r['p99_ms'], 'ms', digits=1)}",
        f"  {'writer max wait per commit, purge off':<40} "
        f"{spread(r['idle_max_ms'], 'ms', digits=1)}",
        f"  {'writer p99 / median, purge off':<40} {spread(r['idle_p99_ms'], 'ms', digits=1)}; "
        f"{spread(r['idle_median_ms'], 'ms', digits=1)}",
        f"  {'commits during the purge':<40} {spread(r['commits'], '', digits=0).strip()};"
        f" poll slots missed {spread(r['missed'], '', digits=0).strip()};"
        f" {sum(r['failed'])} failed in all",
        f"  {'purge pass (run_rollup)':<40} {spread(r['purge_s'])}, "
        f"{min(r['purged']) / 1e6:.2f} M ticks purged",
        f"  {'same pass, nothing to purge':<40} {spread(r['noop_s'])}",
    ]
