"""Binance price pipeline: poll into SQLite, roll up hourly with Polars, keep years in PostgreSQL."""

import os

# Polars allocates through jemalloc, which by default keeps freed pages for seconds: a rollup of a
# long backlog then holds every chunk's peak at once. Returning pages at once keeps memory flat.
# (Read when Polars' allocator starts, so it must be set before the first Polars allocation.)
os.environ.setdefault("_RJEM_MALLOC_CONF", "dirty_decay_ms:0,muzzy_decay_ms:0")

__version__ = "0.1.0"
