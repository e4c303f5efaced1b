"""Connecting to PostgreSQL through ADBC: bounded waits, UTC, and one-line errors with the password masked."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import adbc_driver_manager

from etl import dsn as dsns
from etl import redact
from etl.config import mask_dsn
from etl.errors import ConfigError, DependencyError, EtlError

if TYPE_CHECKING:
    from etl.drivers import postgresql as pg

_DSN_ERRORS = (
    "invalid connection option",
    "invalid uri",
    "invalid integer value",
    'missing "="',
    "invalid sslmode value",
    "invalid value for parameter",
    "invalid percent-encoded token",
    "unexpected spaces",
    "invalid ipv6",
    "end of string reached",
)
_TIMEOUT_ERRORS = ("timeout expired", "canceling statement due to statement timeout")


def with_timeouts(dsn: str, connect_timeout_s: float) -> str:
    """The DSN with libpq's connect timeout and TCP keepalives, unless it sets them itself.

    ``connect_timeout`` bounds the whole start-up, so a server that accepts and never answers
    is given up on; keepalives notice a peer that vanished mid-query. Where the query starts is
    libpq's reading (a password may hold a '?').

    >>> with_timeouts("postgresql://u:a?b@db/etl?connect_timeout=5", 10).split("&")[:2]
    ['postgresql://u:a?b@db/etl?connect_timeout=5', 'keepalives=1']
    """
    return dsns.parse(dsn).with_params(
        {
            "connect_timeout": str(max(2, round(connect_timeout_s))),
            "keepalives": "1",
            "keepalives_idle": "30",
            "keepalives_interval": "10",
            "keepalives_count": "3",
        }
    )


def first_line(exc: BaseException, *dsns_used: str) -> str:
    """The first line of an error's message, every DSN in it masked and every known password
    scrubbed (libpq quotes parts of a DSN it cannot read)."""
    text = str(exc).strip()
    reason = text.splitlines()[0] if text else type(exc).__name__
    for dsn in dsns_used:
        reason = reason.replace(dsn, mask_dsn(dsn))
    return redact.scrub(reason)


def connect(
    dsn: str, *, connect_timeout_s: float = 10.0, statement_timeout_s: float | None = None
) -> pg.Connection:
    """Open an ADBC connection in UTC with bounded waits.

    A bad DSN is a :class:`ConfigError`; an unreachable or silent server a
    :class:`DependencyError`: one line each, with the password masked.
    """
    from etl.drivers import postgresql as pg

    redact.remember_dsn(dsn)  # whoever built it, its password never reaches output
    dsns.parse(dsn).check()  # libpq would quote pieces of a password it misreads
    full = with_timeouts(dsn, connect_timeout_s)
    try:
        conn = pg.connect(full)
        with conn.cursor() as cur:
            for statement in _session(statement_timeout_s):
                cur.execute(statement)
        conn.commit()
        return conn
    except adbc_driver_manager.Error as exc:
        raise _failure(exc, dsn, full, connect_timeout_s) from None


@contextmanager
def probe(dsn: str, *, timeout_s: float) -> Iterator[Callable[[str], list[tuple[Any, ...]]]]:
    """A session for a few small reads through ADBC's core alone: a tenth of the start-up of
    :func:`connect` (whose DB-API layer loads pyarrow's datasets and Polars), for commands that
    must answer at once (``etl --version``). Yields ``rows(sql)``; errors as :func:`connect`'s.

    >>> with probe(dsn, timeout_s=2) as rows:                     # doctest: +SKIP
    ...     rows("SELECT 1")
    [(1,)]
    """
    import adbc_driver_postgresql
    from adbc_driver_manager import _lib

    redact.remember_dsn(dsn)
    dsns.parse(dsn).check()
    full = with_timeouts(dsn, timeout_s)

    def rows(sql: str) -> list[tuple[Any, ...]]:
        import pyarrow.lib

        try:
            stmt.set_sql_query(sql)
            stream, _ = stmt.execute_query()
            table = pyarrow.lib.RecordBatchReader._import_from_c(stream.address).read_all()
        except adbc_driver_manager.Error as exc:
            raise _failure(exc, dsn, full, timeout_s) from None
        return [tuple(row.values()) for row in table.to_pylist()]

    try:
        database = _lib.AdbcDatabase(driver=adbc_driver_postgresql._driver_path(), uri=full)
        conn = _lib.AdbcConnection(database)
        stmt = _lib.AdbcStatement(conn)
    except adbc_driver_manager.Error as exc:
        raise _failure(exc, dsn, full, timeout_s) from None
    try:
        for statement in _session(timeout_s):
            try:
                stmt.set_sql_query(statement)
                stmt.execute_update()
            except adbc_driver_manager.Error as exc:
                raise _failure(exc, dsn, full, timeout_s) from None
        yield rows
    finally:
        stmt.close()
        conn.close()
        database.close()


def _session(statement_timeout_s: float | None) -> list[str]:
    """How every session starts: in UTC (every date and hour is UTC, whatever the server's
    zone), statements bounded if asked, and a client that dies mid-transaction never holding its
    locks for ever."""
    out = ["SET TIME ZONE 'UTC'"]
    if statement_timeout_s:
        out.append(f"SET statement_timeout = '{int(statement_timeout_s * 1000)}ms'")
    out.append("SET idle_in_transaction_session_timeout = '10min'")
    return out


def _failure(exc: Exception, dsn: str, full: str, timeout_s: float) -> EtlError:
    """A failure to connect as one line: a bad DSN (exit 2) or a server unreachable or silent
    (exit 3), the password masked."""
    reason = first_line(exc, full, dsn)
    lowered = reason.lower()
    if any(marker in lowered for marker in _DSN_ERRORS):
        return ConfigError(f"bad PostgreSQL DSN {mask_dsn(dsn)}: {reason}")
    if any(marker in lowered for marker in _TIMEOUT_ERRORS):
        return DependencyError(
            f"PostgreSQL at {mask_dsn(dsn)} did not answer within {timeout_s:g} s: "
            "check that it is up and reachable (or raise ETL_PG_CONNECT_TIMEOUT_S)"
        )
    return DependencyError(
        f"PostgreSQL unreachable at {mask_dsn(dsn)} ({reason}): start it or fix ETL_PG_DSN"
    )


def is_lost(exc: Exception) -> bool:
    """The server went away or gave up on the statement (a timeout, a cancel): a dependency
    failure, exit 3, not a bug. ADBC reports a cancel found while preparing as a
    ProgrammingError, and Polars wraps a read's error in its own: the message decides."""
    text = str(exc).lower()
    markers = (
        "canceling statement due to",
        "server closed the connection",
        "terminating connection",
    )
    return isinstance(exc, adbc_driver_manager.OperationalError) or any(m in text for m in markers)
