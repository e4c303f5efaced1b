"""Binance price pipeline: poll into SQLite, roll up hourly with Polars, keep years in PostgreSQL."""

__version__ = "0.1.0"
