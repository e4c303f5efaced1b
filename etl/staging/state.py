"""What must survive a restart, kept in the staging file: the exchange's ban and last weight, the
last rollup's outcome, and the poll interval in force since when (so coverage is measured against
what was collected)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from etl.drivers import sqlite as adbc_sqlite
from etl.hours import HOUR_MS, iso
from etl.staging.db import StagingDb

# State the rollup keeps in the file it rolls up: its last outcome, for `etl status`.
LAST_ROLLUP_KEY = "rollup.last"

_UPSERT_STATE = (
    "INSERT INTO state (key, value, updated_ms) VALUES (?, ?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_ms = excluded.updated_ms"
)


class State:
    """The ``state`` and ``intervals`` tables of one staging file."""

    def __init__(self, db: StagingDb) -> None:
        self.db = db

    def get(self, key: str, conn: adbc_sqlite.Connection | None = None) -> Any:
        """The stored value of ``key`` (None if never set), on ``conn`` if given (a
        :meth:`reader`)."""
        with self.db.cursor(conn) as cur:
            cur.execute("SELECT value FROM state WHERE key = ?", (key,))
            row = cur.fetchone()
        return json.loads(row[0]) if row else None

    def set(self, key: str, value: Any, now_ms: int) -> None:
        with self.db.transaction() as cur:
            cur.execute(_UPSERT_STATE, (key, json.dumps(value), now_ms))

    def remember_rollup(self, at_ms: int, error: str | None, seconds: float) -> None:
        """Keep a rollup's outcome (for `etl status` and the metrics), with the time of the last
        one that succeeded, carried over a failure."""
        before = self.get(LAST_ROLLUP_KEY) or {}
        at = iso(at_ms)
        outcome = {
            "at": at,
            "ok": error is None,
            "error": error,
            "seconds": round(seconds, 3),
            "last_ok_at": at if error is None else before.get("last_ok_at"),
        }
        self.set(LAST_ROLLUP_KEY, outcome, at_ms)

    def record_interval(self, interval_s: float, from_ms: int) -> None:
        """Note that polls from ``from_ms`` on come every ``interval_s`` (if that is new)."""
        with self.db.transaction() as cur:
            cur.execute("SELECT interval_s FROM intervals ORDER BY from_ms DESC LIMIT 1")
            row = cur.fetchone()
            if row is None or float(row[0]) != float(interval_s):
                cur.execute(
                    "INSERT OR REPLACE INTO intervals VALUES (?, ?)", (from_ms, float(interval_s))
                )

    def intervals(self) -> list[tuple[int, float]]:
        with self.db.cursor() as cur:
            cur.execute("SELECT from_ms, interval_s FROM intervals ORDER BY from_ms")
            return [(int(a), float(b)) for a, b in cur.fetchall()]

    def hour_intervals(self, hours: Iterable[int]) -> dict[int, float]:
        """The poll interval each hour was collected at (the shortest, if it changed within the
        hour); hours before any record are left out."""
        records = self.intervals()
        out: dict[int, float] = {}
        for hour in hours:
            in_force = [s for start, s in records if start < hour + HOUR_MS]
            during = [s for start, s in records if hour < start < hour + HOUR_MS]
            if in_force:
                out[hour] = min([in_force[-1], *during])
        return out
