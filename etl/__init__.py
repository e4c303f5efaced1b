"""Binance price pipeline: poll into SQLite, roll up hourly with Polars, keep years in PostgreSQL.

The stages are sub-packages: ``exchange`` (the REST client and streams, and a fake exchange),
``staging`` (the SQLite tick store), ``collect`` (the poll loop and trade feed), ``warehouse``
(PostgreSQL), ``jobs`` (rollup, backfill, status, backups ...) and ``cli`` (the ``etl`` command).
"""

import os

# Polars allocates through jemalloc, which by default keeps freed pages for seconds: a rollup of a
# long backlog then holds every chunk's peak at once. Returning pages at once keeps memory flat.
# (Read when Polars' allocator starts, so it must be set before the first Polars allocation.)
os.environ.setdefault("_RJEM_MALLOC_CONF", "dirty_decay_ms:0,muzzy_decay_ms:0")


# Declared once, here: pyproject.toml reads it for the package's metadata. (Reading it back from
# that metadata with importlib.metadata costs every command 25 ms of its start.)
__version__ = "0.5.2"


def version() -> str:
    """The package's version."""
    return __version__
