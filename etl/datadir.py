"""The data dir's layout: every file and folder etl keeps under ``data_dir``, named once.

::

    <data_dir>/
      ticks.sqlite3        the staging file (ETL_SQLITE_PATH may put it elsewhere)
      pg/                  the embedded PostgreSQL (when no ETL_PG_DSN is set)
        log, pg_log/       its start-up log and its hourly logs
      .pgserver.lock       serialises starting and stopping the embedded server
      rollup.log*          the collector's hourly rollup children
      notebooks/           your copies of the notebooks (`etl notebook`)
      demo/                `etl demo` and `etl seed-demo`: a data dir of their own
        etl-demo.json      says the data dir is a demo's (and the generated history's gaps)
        seed-demo/         the generated history's staging file

>>> DataDir(Path("data")).staging
PosixPath('data/ticks.sqlite3')
>>> DataDir(Path("data")).demo.pg
PosixPath('data/demo/pg')
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STAGING_FILE = "ticks.sqlite3"
ROLLUP_LOG = "rollup.log"


@dataclass(frozen=True)
class DataDir:
    """Paths under ``root``; ``staging_file`` overrides where the staging file is."""

    root: Path
    staging_file: Path | None = None

    @property
    def staging(self) -> Path:
        return self.staging_file if self.staging_file is not None else self.root / STAGING_FILE

    @property
    def pg(self) -> Path:
        """The embedded server's data directory."""
        return self.root / "pg"

    @property
    def pg_lock(self) -> Path:
        return self.root / ".pgserver.lock"

    @property
    def rollup_log(self) -> Path:
        return self.root / ROLLUP_LOG

    @property
    def notebooks(self) -> Path:
        return self.root / "notebooks"

    @property
    def demo(self) -> DataDir:
        """Where ``etl demo`` and ``etl seed-demo`` keep their data: never the real store."""
        return DataDir(self.root / "demo")

    @property
    def demo_marker(self) -> Path:
        """Present in a demo's data dir: what made it, the gaps planned in its history."""
        return self.root / "etl-demo.json"

    @property
    def seed_staging(self) -> Path:
        """The staging file ``etl seed-demo`` generates its history in."""
        return self.root / "seed-demo" / STAGING_FILE

    def logs(self) -> list[Path]:
        """Every log file etl and the embedded server write here, for their sizes."""
        patterns = (f"{ROLLUP_LOG}*", "pg/log*", "pg/pg_log/*.log*")
        return sorted(p for pattern in patterns for p in self.root.glob(pattern) if p.is_file())

    def demo_info(self) -> dict[str, Any] | None:
        """What :attr:`demo_marker` says (``None``: not a demo's data dir)."""
        try:
            info = json.loads(self.demo_marker.read_text())
        except (OSError, ValueError):
            return None
        return info if isinstance(info, dict) else None

    def mark_demo(self, made_by: str, planned_gaps: dict[str, list[str]] | None = None) -> None:
        """Say this data dir is a demo's, made (also) by ``made_by``; ``planned_gaps``: per
        symbol, the hours its generated history leaves without a bar on purpose."""
        info = self.demo_info() or {}
        info["made_by"] = sorted({*info.get("made_by", []), made_by})
        if planned_gaps is not None:
            info["planned_gaps"] = planned_gaps
        self.root.mkdir(parents=True, exist_ok=True)
        self.demo_marker.write_text(json.dumps(info, indent=2) + "\n")
