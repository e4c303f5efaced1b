"""Reach the warehouse by hand: ``etl db shell`` (psql on it) and ``etl db url`` (its URI).

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
from collections.abc import Iterator, Sequence
from typing import Any

from etl.config import Settings, mask_dsn
from etl.pg_tools import (
    child_env,
    embedded_tool,
    path_tool,
    server_version,
    split_password,
    warehouse_dsn,
)
from etl.warehouse import connect, with_timeouts


def _ignore(signum: int, frame: Any) -> None:
    """SIGINT while psql runs is psql's (it cancels the query); a Python handler rather than
    SIG_IGN, because exec resets a handler to the default but passes an ignored signal on."""


def _hang_up(signum: int, frame: Any) -> None:
    sys.exit(128 + signum)  # finally blocks run: psql is stopped, the server handle released


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
    with warehouse_dsn(settings) as (dsn, _label, embedded):
        # Connect first: an unreachable server is one line and exit 3, as everywhere in etl.
        conn = connect(dsn, connect_timeout_s=settings.pg_connect_timeout_s)
        try:
            major, _version = server_version(conn)
        finally:
            conn.close()
        dsn = with_timeouts(dsn, settings.pg_connect_timeout_s)
        psql = (
            embedded_tool("psql", major)
            if embedded
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


def has_password(dsn: str) -> bool:
    return split_password(dsn)[1] is not None


def warehouse_url(settings: Settings, *, show_password: bool = False) -> tuple[str, bool]:
    """The warehouse's connection URI (password masked unless ``show_password``) and whether it
    is the embedded server. An external DSN is printed as configured, without connecting; the
    embedded server is started (or joined) to learn where its socket is."""
    if settings.pg_dsn:
        dsn = settings.pg_dsn
        return (dsn if show_password or not has_password(dsn) else mask_dsn(dsn)), False
    with warehouse_dsn(settings) as (dsn, _label, _embedded):
        return dsn, True
