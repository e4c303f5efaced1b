"""``etl seed-demo``: realistic generated history, offline, through the real staging and rollup.

Prices are a geometric random walk per symbol at the poll interval (about 60 % a year of
volatility), on each symbol's tick size as the (fake) exchange lists it, up to the last closed
hour, with a few hours missing and a few half covered, so that the notebooks' candles, coverage
heatmap and correlations have something to show at once instead of after days. The hours left
out on purpose are written down in the demo data dir (``etl-demo.json``), where ``etl status``
reads them as the history's planned gaps, and ``etl demo`` goes on from the history's last
closes (:func:`last_closes`), so the charts run on without a cliff.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Callable
from dataclasses import replace
from typing import TypeVar

import polars as pl

from etl.config import Settings
from etl.errors import ConfigError, NothingStaged
from etl.exchange.fake.market import Market, reference_price
from etl.hours import HOUR_MS, closed_before, iso, now_ms, utc
from etl.staging.store import Staging
from etl.warehouse.store import open_warehouse

Result = TypeVar("Result")

log = logging.getLogger("etl.demo")

_YEAR_S = 365.25 * 86400


def _uniform(k: pl.Expr, seed: int) -> pl.Expr:
    return (k.hash(seed) % 1_000_003).cast(pl.Float64) / 1_000_003


def generate_ticks(
    symbol: str,
    start_ms: int,
    end_ms: int,
    interval_ms: int,
    *,
    seed: int = 42,
    vol: float = 0.6,
    tick_size: float | None = None,
) -> pl.DataFrame:
    """``symbol, ts, price`` every ``interval_ms`` in ``[start_ms, end_ms)``, minus some gaps;
    prices on multiples of ``tick_size`` if given.

    >>> generate_ticks("BTCUSDT", 0, 3_600_000, 60_000).height <= 60
    True
    """
    n = (end_ms - start_ms) // interval_ms
    salt = seed + sum(map(ord, symbol)) * 7919
    sigma = vol * math.sqrt(interval_ms / 1000 / _YEAR_S)
    k = pl.int_range(0, n, dtype=pl.Int64)

    # Irwin-Hall: the sum of four uniforms is close enough to a normal draw for a demo. A
    # market factor shared by every symbol (same seed, same time index) plus the symbol's own
    # moves: crypto prices move together, with correlations around 0.6.
    def normal(seed_: int) -> pl.Expr:
        return (sum(_uniform(k, seed_ + i) for i in range(4)) - 2.0) * math.sqrt(3.0)

    z = 0.78 * normal(seed) + 0.63 * normal(salt)
    base = reference_price(symbol) or 1.0 + (salt % 500)
    hour = (pl.col("ts") // HOUR_MS).cast(pl.Int64)
    frame = (
        pl.select(ts=start_ms + k * interval_ms + 137, step=sigma * z)
        .with_columns(price=base * pl.col("step").cum_sum().exp(), symbol=pl.lit(symbol))
        .with_columns(roll=(hour.hash(salt) % 97).cast(pl.Int64))
    )
    # ~1 % of hours missing, ~1 % half covered: what real downtime looks like.
    keep = (pl.col("roll") != 0) & ~(
        (pl.col("roll") == 1) & (pl.col("ts") % HOUR_MS > HOUR_MS // 2)
    )
    if tick_size:
        frame = frame.with_columns(price=(pl.col("price") / tick_size).round() * tick_size)
    return frame.filter(keep).select("symbol", "ts", "price")


def planned_gaps(ticks: pl.DataFrame, start_ms: int, end_ms: int) -> list[str]:
    """The hours of ``[start_ms, end_ms)`` the generated ``ticks`` leave empty (ISO 8601)."""
    hours = set(range(start_ms - start_ms % HOUR_MS, end_ms, HOUR_MS))
    present = set((ticks["ts"] // HOUR_MS * HOUR_MS).unique().to_list())
    return [iso(h) for h in sorted(hours - present) if h >= start_ms]


def last_closes(settings: Settings) -> dict[str, float]:
    """The newest committed close per symbol of the warehouse ``settings`` point at (empty if
    there is none yet): where a demo's live prices go on from."""
    try:
        with open_warehouse(settings, create=False) as wh:
            if not wh.has_schema():
                return {}
            latest = wh.latest()
    except NothingStaged:
        return {}
    return dict(zip(latest["symbol"].to_list(), latest["price"].to_list(), strict=True))


def seed_demo(
    settings: Settings,
    rollup: Callable[[Settings], Result],
    *,
    days: int = 60,
    force: bool = False,
) -> Result:
    """Generate ``days`` of history for the configured symbols into a staging file of its own
    and hand it to ``rollup`` (the real one: ``etl.jobs.rollup.run_rollup``), which rolls it up
    into the warehouse ``settings`` point at (the CLI points them at the demo data dir).

    >>> seed_demo(settings, run_rollup, days=14)                  # doctest: +SKIP
    RollupResult(hours=1680, ...)
    """
    end = closed_before(now_ms())  # through the last closed hour
    start = end - days * 24 * HOUR_MS
    interval_ms = int(settings.interval_s * 1000)
    with open_warehouse(settings) as wh:
        wh.migrate()
        existing = wh.count_bars(settings.symbols, utc(start))
    if existing and not force:
        raise ConfigError(
            f"the warehouse {wh.label} already holds {existing} bars for these symbols in the "
            f"last {days} days: pass --force to add generated history to it anyway"
        )
    staging_path = settings.paths.seed_staging
    work = staging_path.parent
    shutil.rmtree(work, ignore_errors=True)
    market = Market(list(settings.symbols))  # its tick sizes: the exchange's grid of prices
    gaps = {}
    with Staging(staging_path, name="seed-demo") as st:
        st.state.record_interval(settings.interval_s, start)
        for symbol in settings.symbols:
            tick = float(market.tick_size(symbol))
            ticks = generate_ticks(symbol, start, end, interval_ms, tick_size=tick)
            st.ticks.append_frame(ticks)
            gaps[symbol] = planned_gaps(ticks, start, end)
            log.info("generated %s ticks for %s", f"{ticks.height:,}", symbol)
    seeded = replace(settings, sqlite_path=staging_path, raw_retention_h=1.0)
    try:
        result = rollup(seeded)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    settings.paths.mark_demo("seed-demo", gaps)
    return result
