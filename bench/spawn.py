"""``python -m bench.spawn CMD [ARG...]``: run CMD (its stdout discarded) and print its wall time
from spawn to exit and its peak RSS as ``{"wall_s": ..., "rss_mib": ..., "exit": ...}``.

Why a launcher of its own: Linux carries a process's peak RSS over ``fork`` and ``exec``, so a
child spawned straight from the benchmark (hundreds of MiB of frames by then) would report at
least the benchmark's own peak. Spawned from this small process, the figure is the child's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time


def main() -> None:
    argv = sys.argv[1:]
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = code = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    rss = usage.ru_maxrss / 1024  # Linux reports KiB
    print(json.dumps({"wall_s": wall, "rss_mib": rss, "exit": code}), flush=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
