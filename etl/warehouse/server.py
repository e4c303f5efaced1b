"""Which PostgreSQL is the warehouse, decided in one place: the configured ``pg_dsn``, or else the
embedded server in ``<data_dir>/pg``.

>>> where = resolve(load_settings(env={}))             # doctest: +SKIP
>>> where.embedded, where.label                        # doctest: +SKIP
(True, 'embedded (data/pg)')
>>> with running(where) as dsn:                       # doctest: +SKIP
...     dsn
'postgresql://postgres:@/etl?host=/…/data/pg'

``running`` starts (or joins) the embedded server for the block; ``uri_if_running`` only looks,
for commands that must not start a server of their own (``etl --version``, ``etl db url``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from etl.config import Settings, mask_dsn
from etl.errors import NothingStaged


@dataclass(frozen=True)
class Server:
    """The warehouse's server: an external DSN, or the embedded server's data dir."""

    dsn: str | None = None
    pgdata: Path | None = None

    @property
    def embedded(self) -> bool:
        return self.dsn is None

    @property
    def label(self) -> str:
        """How the server is named in messages: the DSN with its password masked."""
        return f"embedded ({self.pgdata})" if self.dsn is None else mask_dsn(self.dsn)

    @property
    def exists(self) -> bool:
        """Whether there is anything to look at (an external server always may be)."""
        return self.pgdata is None or (self.pgdata / "PG_VERSION").exists()

    def missing(self) -> NothingStaged:
        return NothingStaged(
            f"no warehouse yet in {self.pgdata}: the first `etl rollup` (or an hour of "
            "`etl collect`) creates it"
        )


def resolve(settings: Settings) -> Server:
    """The configured warehouse's server."""
    if settings.pg_dsn:
        return Server(dsn=settings.pg_dsn)
    return Server(pgdata=settings.paths.pg)


@contextmanager
def running(server: Server, *, create: bool = True, borrow: bool = False) -> Iterator[str]:
    """The server's DSN, with the embedded server running until the block ends (it stops then
    unless another etl process uses it). ``create=False`` (commands that only look) refuses to
    create an embedded server that does not exist yet (:class:`NothingStaged`).

    ``borrow`` (a quick look: ``etl status``): an embedded server another process runs is used
    as it is, without joining it (pgserver's start-up and its database check are most of a
    look's cost). Should that process stop the server meanwhile, the look fails as with any
    server gone; none running, it is started as without ``borrow``."""
    if server.dsn is not None:
        yield server.dsn
        return
    assert server.pgdata is not None
    if not create and not server.exists:
        raise server.missing()
    uri = uri_if_running(server) if borrow else None
    if uri is not None:
        yield uri
        return
    from etl.warehouse.embedded import embedded_server

    with embedded_server(server.pgdata) as uri:
        yield uri


def uri_if_running(server: Server) -> str | None:
    """The DSN, if the server can be reached without starting anything: an external server's
    as configured, the embedded server's only while some process runs it."""
    if server.dsn is not None:
        return server.dsn
    assert server.pgdata is not None
    from etl.warehouse.embedded import running_uri

    return running_uri(server.pgdata)
