"""The pure Polars transforms against independent plain-Python references (no database)."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etl.bars import hour_ledger, hourly_bars, kline_bars
from tests.reference import HOUR_MS, hourly_reference, ms

BASE = 1_780_000_000_000 // HOUR_MS * HOUR_MS  # an hour in 2026

# Offsets that sit on the edges: xx:00:00.000, xx:00:00.001, xx:59:59.999, and anywhere.
edge_offsets = st.one_of(
    st.sampled_from([0, 1, HOUR_MS - 1, HOUR_MS, HOUR_MS + 1, 2 * HOUR_MS - 1, 5 * HOUR_MS]),
    st.integers(min_value=0, max_value=6 * HOUR_MS - 1),
)
prices = st.floats(min_value=1e-8, max_value=1e7, allow_nan=False, allow_infinity=False)
tick_lists = st.lists(
    st.tuples(st.sampled_from(["BTCUSDT", "ETHUSDT", "XRPUSDT"]), edge_offsets, prices),
    min_size=1,
    max_size=300,
)


def frame_of(
    ticks: list[tuple[str, int, float]],
) -> tuple[pl.DataFrame, list[tuple[int, str, int, float]]]:
    rows = [
        (seq, symbol, BASE + offset, price) for seq, (symbol, offset, price) in enumerate(ticks, 1)
    ]
    frame = pl.DataFrame(rows, schema=["seq", "symbol", "ts", "price"], orient="row")
    return frame.sample(fraction=1.0, shuffle=True, seed=1), rows  # input order must not matter


def assert_bars_match(bars: pl.DataFrame, expected: dict) -> None:
    assert bars.height == len(expected)
    for row in bars.iter_rows(named=True):
        ref = expected[(row["symbol"], ms(row["bucket"]))]
        for key in ("open", "high", "low", "close", "samples", "max_seq"):
            assert row[key] == ref[key], (key, row, ref)
        assert row["mean"] == pytest.approx(ref["mean"], rel=1e-9)
        assert row["max_gap_s"] == pytest.approx(ref["max_gap_s"], abs=1e-9)
        assert (ms(row["first_at"]), ms(row["last_at"])) == (ref["first_at"], ref["last_at"])


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(tick_lists)
def test_hourly_bars_match_the_reference(ticks: list[tuple[str, int, float]]) -> None:
    frame, rows = frame_of(ticks)
    expected = hourly_reference(rows)
    assert_bars_match(hourly_bars(frame), expected)
    # the fast path for staging reads, which arrive ordered by ts, seq
    assert_bars_match(hourly_bars(frame.sort("ts", "seq"), ordered=True), expected)


@settings(max_examples=100, deadline=None)
@given(st.lists(prices, min_size=2, max_size=20))
def test_equal_timestamps_resolve_by_write_order(values: list[float]) -> None:
    frame, _rows = frame_of([("BTCUSDT", 1234, p) for p in values])
    bar = hourly_bars(frame).row(0, named=True)
    assert (bar["open"], bar["close"]) == (values[0], values[-1])


def test_hour_edges() -> None:
    frame, _rows = frame_of(
        [("BTCUSDT", HOUR_MS - 1, 1.0), ("BTCUSDT", HOUR_MS, 2.0), ("BTCUSDT", 0, 3.0)]
    )
    bars = hourly_bars(frame).sort("bucket")
    assert bars["samples"].to_list() == [2, 1]
    assert bars["close"].to_list() == [1.0, 2.0]  # 59:59.999 closes the first hour
    assert bars["open"].to_list() == [3.0, 2.0]  # 00:00.000 opens the next
    assert bars["bucket"].to_list() == [
        datetime.fromtimestamp(BASE / 1000, UTC),
        datetime.fromtimestamp((BASE + HOUR_MS) / 1000, UTC),
    ]


def test_single_sample_gap_counts_the_edges() -> None:
    frame, _ = frame_of([("BTCUSDT", HOUR_MS // 2, 5.0)])
    bar = hourly_bars(frame).row(0, named=True)
    assert (bar["samples"], bar["max_gap_s"], bar["mean"]) == (1, 1800.0, 5.0)


def test_empty_window_gives_empty_typed_bars() -> None:
    empty = pl.DataFrame(
        schema={"seq": pl.Int64, "symbol": pl.String, "ts": pl.Int64, "price": pl.Float64}
    )
    bars = hourly_bars(empty)
    assert bars.is_empty()
    assert bars.schema["samples"] == pl.Int32 and bars.schema["bucket"] == pl.Datetime("us", "UTC")


def test_ledger_counts_ticks_and_max_seq_per_hour() -> None:
    frame, _ = frame_of([("A", 0, 1.0), ("B", 5, 1.0), ("A", HOUR_MS, 1.0)])
    ledger = hour_ledger(hourly_bars(frame), datetime(2026, 1, 1, tzinfo=UTC))
    assert ledger.select("symbols", "rows", "ticks_read", "max_seq").rows() == [
        (2, 2, 2, 2),
        (1, 1, 1, 3),
    ]


def test_kline_bars_aggregate_minutes_to_the_hour() -> None:
    minutes = pl.DataFrame(
        {
            "open_ms": [BASE + m * 60_000 for m in range(60)] + [BASE + HOUR_MS],
            "open": [float(m) for m in range(61)],
            "high": [m + 0.5 for m in range(61)],
            "low": [m - 0.5 for m in range(61)],
            "close": [m + 0.25 for m in range(61)],
        }
    )
    bars = kline_bars(minutes, "BTCUSDT").sort("bucket")
    first = bars.row(0, named=True)
    assert (first["open"], first["high"], first["low"], first["close"]) == (0.0, 59.5, -0.5, 59.25)
    assert first["samples"] == 60 and first["max_gap_s"] == 0.0 and first["source"] == "kline"
    assert first["mean"] == pytest.approx(sum(m + 0.25 for m in range(60)) / 60)
    assert bars.row(1, named=True)["samples"] == 1
