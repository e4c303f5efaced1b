"""ADBC's DB-API for SQLite and PostgreSQL, imported without what etl never uses of it.

``adbc_driver_manager.dbapi`` imports Polars (for a result backend: etl reads Arrow and makes
its frames itself) and pyarrow's datasets (to ingest a dataset: etl ingests tables), 0.2 s
of every command's start. Here Polars stays out of that import and pyarrow's datasets load at
their first use, so a command that makes no frame never pays for them (``etl status``, a
rollup with nothing to do).

>>> with sqlite.connect(":memory:") as conn, conn.cursor() as cur:
...     _ = cur.execute("SELECT 1 AS one")
...     cur.fetchall()
[(1,)]
"""

from __future__ import annotations

from typing import Any

from etl.imports import defer, hiding

defer("pyarrow.dataset")
with hiding("polars"):
    import adbc_driver_manager.dbapi  # noqa: F401  (imported here, as said above)

import adbc_driver_postgresql.dbapi as postgresql  # noqa: E402
import adbc_driver_sqlite.dbapi as sqlite  # noqa: E402

__all__ = ["named", "postgresql", "sqlite"]


def named(cur: Any) -> list[dict[str, Any]]:
    """The rows of the statement ``cur`` ran, each a dict by column name: a small read with no
    frame (`etl status`, the rollup's bookkeeping).

    >>> with sqlite.connect(":memory:") as conn, conn.cursor() as cur:
    ...     _ = cur.execute("SELECT 1 AS one, 'a' AS letter")
    ...     named(cur)
    [{'one': 1, 'letter': 'a'}]
    """
    names = [column[0] for column in cur.description or []]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
