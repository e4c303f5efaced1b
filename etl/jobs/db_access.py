"""Reach the warehouse by hand: ``etl db shell`` (psql on it), ``etl db url`` (its URI), ``etl db
serve`` (the embedded server kept up) and ``etl db init`` (its schema applied).

The embedded server runs only while an etl process uses it, so ``db shell`` starts it for the
session (or joins it) and releases it when psql exits; the psql run is the one that ships with
the server (same major version). For an external server the user's psql from ``PATH`` is run.
Either way the password travels in ``PGPASSWORD``, never on psql's command line (``ps`` shows
that to every user).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from etl.config import Settings, mask_dsn
from etl.errors import ConfigError, DependencyError, ExitCode
from etl.warehouse.connect import connect, with_timeouts
from etl.warehouse.migrate import Migrations
from etl.warehouse.server import resolve, running, uri_if_running
from etl.warehouse.store import Warehouse, open_warehouse
from etl.warehouse.tools import (
    child_env,
    embedded_tool,
    path_tool,
    split_password,
)


def _ignore(signum: int, frame: Any) -> None:
    """SIGINT while psql runs is psql's (it cancels the query); a Python handler rather than
    SIG_IGN, because exec resets a handler to the default but passes an ignored signal on."""


def _hang_up(signum: int, frame: Any) -> None:
    sys.exit(
        ExitCode.of_signal(signum)
    )  # finally blocks run: psql is stopped, the server handle released


@contextlib.contextmanager
def _psql_owns_ctrl_c() -> Iterator[None]:
    """While psql runs, Ctrl-C reaches both of us: psql cancels its query, we must not exit.

    etl.shutdown's watchdog reads signals from the wakeup fd and ends the process a few seconds
    after a SIGINT; it is detached for the session and put back afterwards. SIGTERM keeps its
    handler: it ends the session (psql is stopped on the way out). So does SIGHUP (the terminal
    closed): by default it would kill us without releasing the embedded server.
    """
    old_handler = signal.signal(signal.SIGINT, _ignore)
    old_hup = signal.signal(signal.SIGHUP, _hang_up)
    old_fd = signal.set_wakeup_fd(-1)
    try:
        yield
    finally:
        if old_fd != -1:
            signal.set_wakeup_fd(old_fd, warn_on_full_buffer=False)
        signal.signal(signal.SIGHUP, old_hup)
        signal.signal(signal.SIGINT, old_handler)


def run_shell(settings: Settings, psql_args: Sequence[str] = ()) -> int:
    """psql on the configured warehouse, standard input and output passed through; psql's exit
    code. An unreachable server is a :class:`DependencyError` before psql starts."""
    server = resolve(settings)
    with running(server, create=False) as dsn:
        # Connect first: an unreachable server is one line and exit 3, as everywhere in etl.
        wh = Warehouse(connect(dsn, connect_timeout_s=settings.pg_connect_timeout_s), server.label)
        try:
            major, _version = wh.server_version()
        finally:
            wh.close()
        dsn = with_timeouts(dsn, settings.pg_connect_timeout_s)
        psql = (
            embedded_tool("psql", major)
            if server.embedded
            else path_tool("psql", why=" (etl db shell runs it)")
        )
        bare, password = split_password(dsn)
        extra = {"PGAPPNAME": "etl db shell"}
        if "PGTZ" not in os.environ:
            extra["PGTZ"] = "UTC"  # every time in the warehouse is UTC; show it that way
        env = child_env(password, **extra)
        with _psql_owns_ctrl_c():
            proc = subprocess.Popen([str(psql), f"--dbname={bare}", *psql_args], env=env)
            try:
                return proc.wait()
            finally:
                if proc.poll() is None:  # we are leaving (SIGTERM): psql goes too
                    proc.terminate()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(5)


def warehouse_url(settings: Settings, *, show_password: bool = False) -> str:
    """The warehouse's connection URI, its password masked unless ``show_password``. Nothing is
    started: an external DSN is given as configured, the embedded server's only while it runs
    (a :class:`DependencyError` says how to keep it up otherwise)."""
    server = resolve(settings)
    if not server.exists:
        raise server.missing()
    dsn = uri_if_running(server)
    if dsn is None:
        raise DependencyError(
            f"the embedded PostgreSQL in {server.pgdata} is not running: `etl db serve` keeps it "
            "up until Ctrl-C (run it in another terminal), or `etl db shell` opens psql on it"
        )
    return dsn if show_password else mask_dsn(dsn)  # a DSN with no password is left as it is


def serve(settings: Settings, ready: Callable[[str], None], stop: threading.Event) -> None:
    """Keep the embedded server up (starting it if needed) until ``stop`` is set; ``ready`` is
    handed its URI once it runs. An external server is not ours to serve (:class:`ConfigError`).
    """
    server = resolve(settings)
    if not server.embedded:
        raise ConfigError(
            f"ETL_PG_DSN names an external server ({server.label}): it runs on its own; "
            "`etl db serve` keeps up the embedded one only"
        )
    with running(server, create=False) as dsn:
        ready(dsn)
        while not stop.wait(0.5):
            pass


@dataclass
class Initialised:
    """What ``etl db init`` did: the migrations, the hourly partitions now, the server."""

    migrations: Migrations
    partitions: list[str]
    label: str


def init_warehouse(settings: Settings) -> Initialised:
    """Apply the migrations not applied yet and make the partitions ahead of need."""
    with open_warehouse(settings) as wh:
        done = wh.migrate()
        wh.ensure_partitions_ahead()
        return Initialised(done, [p["partition"] for p in wh.partitions()], wh.label)
