"""``etl retention``: drop (or, dry, list) the hourly partitions past ``hourly_retention_d``,
only once their days are in ``metrics_daily``. The rollup applies it too.

>>> run_retention(load_settings(), dry_run=True)                 # doctest: +SKIP
RetentionResult(keep_days=400.0, dry_run=True, partitions=shape: (0, 0) ...)
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from etl.config import Settings
from etl.warehouse.store import open_warehouse


@dataclass
class RetentionResult:
    """The partitions past retention: ``partition, range_start, range_end, action``
    (``dropped``, ``kept`` with ``missing_days``, or what a dry run would do)."""

    keep_days: float
    dry_run: bool
    partitions: pl.DataFrame


def run_retention(settings: Settings, *, dry_run: bool) -> RetentionResult:
    """Apply the policy to the configured warehouse; a warehouse not made yet has nothing to
    drop, and looking never makes one."""
    keep = settings.hourly_retention_d
    with open_warehouse(settings, create=False) as wh:
        if not wh.has_schema():
            return RetentionResult(keep, dry_run, pl.DataFrame())
        if not dry_run:
            wh.migrate()
        rows = wh.retention(keep, dry_run=dry_run)
        return RetentionResult(keep, dry_run, pl.DataFrame(rows) if rows else pl.DataFrame())
