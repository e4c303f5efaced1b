"""Helpers for tests that write the staging file as another program would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def outside_tool(
    path: Path, *statements: str, params: list | None = None
) -> subprocess.CompletedProcess:
    """Another program writing the staging file with Python's own sqlite3 module (in its own
    process: stdlib sqlite3 and ADBC must not share a file in one process)."""
    script = (
        "import json, sqlite3, sys\n"
        "conn = sqlite3.connect(sys.argv[1])\n"
        "for sql in json.loads(sys.argv[2]):\n"
        "    conn.execute(sql)\n"
        "conn.commit()\n"
    )
    return subprocess.run(
        [sys.executable, "-c", script, str(path), json.dumps(list(statements))],
        capture_output=True,
        text=True,
    )


# Rows an outside tool may write that cannot be ticks (each kind of wrong).
BAD_ROWS = [
    "('BTCUSDT', 1790000000000, 'abc')",  # a text price
    "(x'00', 1790000000000, 1.0)",  # a BLOB symbol
    "('BTCUSDT', 1790000000000, x'00')",  # a BLOB price
    "('ETHUSDT', 1790000000000, -5.0)",
    "('ETHUSDT', 1790000000000, 0.0)",
    "('ETHUSDT', 1790000000000, 9e999)",  # infinity
    "('ETHUSDT', 1790000000000, NULL)",
    "('btcusdt', 1790000000000, 1.0)",  # not the symbol rule
    "('ETHUSDT', 'soon', 1.0)",
    "('ETHUSDT', -1, 1.0)",
]
