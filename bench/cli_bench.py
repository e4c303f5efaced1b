"""Where a person waits on the command line: the whole process of ``etl --help``, ``etl status
--help``, ``etl --version``, ``etl status`` (a warehouse with 26 hours of 5 symbols, its server
running) and ``etl rollup`` with nothing to do, each timed from spawn to exit against the
interpreter's own start (``python -c pass``), alternating, in the same run. Then the embedded
server: ``etl status`` while another process holds it up (``etl db serve``, as a collector
does), and from cold (the server stopped: status starts it, and stops it after).
"""

from __future__ import annotations

import compileall
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import etl as etl_package
from bench.common import ROOT, child_env, fresh_database, postgres, ratio_line, spread, stage_hours

SYMBOLS = 5
HOURS = 26
GOALS_S = {"help": 0.15, "command help": 0.15, "version": 0.15, "status": 0.4, "no-op rollup": 0.3}


@dataclass
class Results:
    runs: int
    baseline: list[float] = field(default_factory=list)  # python -c pass
    commands: dict[str, list[float]] = field(default_factory=dict)
    embedded_warm: list[float] = field(default_factory=list)
    embedded_cold: list[float] = field(default_factory=list)


def _etl() -> list[str]:
    """The installed ``etl`` script beside this interpreter (what a user runs), else ``-m``."""
    script = Path(sys.executable).with_name("etl")
    return [str(script)] if script.exists() else [sys.executable, "-m", "etl"]


def _wall(argv: Sequence[str], env: dict[str, str], cwd: Path, ok: Sequence[int] = (0,)) -> float:
    started = time.perf_counter()
    done = subprocess.run(
        argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False
    )
    took = time.perf_counter() - started
    if done.returncode not in ok:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr[-500:]!r}")
    return took


def run(runs: int = 10) -> Results:
    out = Results(runs=runs)
    etl = _etl()
    # Compiled modules, as pip leaves them when it installs a wheel: an editable install run
    # under PYTHONDONTWRITEBYTECODE would compile etl's sources at every start (30 ms).
    compileall.compile_dir(Path(etl_package.__file__).parent, quiet=1)
    base = Path(tempfile.mkdtemp(prefix="etl-bench-cli-", dir="/tmp"))
    base.chmod(0o755)
    try:
        with postgres() as admin:
            dsn = fresh_database(admin, "etl_bench_cli")
            data = base / "data"
            names = ",".join(f"S{i:05d}USDT" for i in range(SYMBOLS))
            env = child_env(ETL_DATA_DIR=str(data), ETL_PG_DSN=dsn, ETL_SYMBOLS=names)
            now_hour = int(time.time() // 3600 * 3600 * 1000)
            stage_hours(data / "ticks.sqlite3", SYMBOLS, now_hour - HOURS * 3_600_000, HOURS)
            _wall([*etl, "rollup"], env, base)  # every closed hour committed: the next is a no-op
            commands = {
                "help": ([*etl, "--help"], (0,)),
                "command help": ([*etl, "status", "--help"], (0,)),
                "version": ([*etl, "--version"], (0,)),
                "status": ([*etl, "status"], (0, 1)),  # 1: degraded (no collector running)
                "no-op rollup": ([*etl, "rollup"], (0,)),
            }
            for name, (argv, ok) in commands.items():
                _wall(argv, env, base, ok)  # warm the page cache: every figure is a warm start
                out.commands[name] = []
            _wall([sys.executable, "-c", "pass"], env, base)
            for _ in range(runs):
                out.baseline.append(_wall([sys.executable, "-c", "pass"], env, base))
                for name, (argv, ok) in commands.items():
                    out.commands[name].append(_wall(argv, env, base, ok))
        # The embedded server, in a data dir of its own.
        home = base / "embedded"
        env = child_env(ETL_DATA_DIR=str(home), ETL_SYMBOLS=names)
        stage_hours(home / "ticks.sqlite3", SYMBOLS, now_hour - 3 * 3_600_000, 2)
        _wall([*etl, "rollup"], env, base)  # creates the server; it stops when rollup ends
        for _ in range(max(3, runs // 3)):
            out.embedded_cold.append(_wall([*etl, "status"], env, base, (0, 1)))
        serving = subprocess.Popen(
            [*etl, "db", "serve"], env=env, cwd=base, stdout=subprocess.PIPE, text=True
        )
        try:
            assert serving.stdout is not None
            while "is up at" not in serving.stdout.readline():
                if serving.poll() is not None:
                    raise RuntimeError("etl db serve did not start")
            for _ in range(runs):
                out.embedded_warm.append(_wall([*etl, "status"], env, base, (0, 1)))
        finally:
            serving.terminate()
            serving.wait(30)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return out


def report(r: Results) -> list[str]:
    lines = [
        f"part 7: the command line, whole process from spawn to exit, {r.runs} runs each "
        f"(warm starts; {SYMBOLS} symbols, {HOURS} hours in the warehouse)",
        f"  {'python -c pass (baseline)':<40} {spread(r.baseline, 's')}",
    ]
    for name, samples in r.commands.items():
        goal = GOALS_S[name]
        met = "met" if sorted(samples)[len(samples) // 2] <= goal else "MISSED"
        lines.append(f"  {'etl ' + name:<40} {spread(samples, 's')}   goal <= {goal} s: {met}")
    lines.append("  ratio to the interpreter's start (median; pairs min / median / max):")
    for name, samples in r.commands.items():
        lines.append(ratio_line(f"etl {name} / python -c pass", samples, r.baseline))
    lines += [
        f"  {'etl status, embedded held up by another':<40} {spread(r.embedded_warm, 's')}",
        f"  {'etl status, embedded from cold':<40} {spread(r.embedded_cold, 's')}"
        "   (starts the server, and stops it after)",
    ]
    return lines


if __name__ == "__main__":  # python -m bench.cli_bench [RUNS]
    os.chdir(ROOT)
    print("\n".join(report(run(int(sys.argv[1]) if len(sys.argv) > 1 else 10))))
