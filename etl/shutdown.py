"""Every command answers SIGINT and SIGTERM within a few seconds, even while blocked in a driver.

Python runs signal handlers only between bytecodes, so a main thread waiting inside libpq (a
server that accepted and went silent, a lock that never comes free) would ignore Ctrl-C and
SIGTERM until the call returned, perhaps never. The C-level handler still writes the signal's
number to a wakeup pipe at once; a watcher thread reads it and, if the process has not ended
``GRACE_S`` later, says so in one line and leaves with ``128 + signal``. Nothing committed is
lost by that: PostgreSQL rolls back an open transaction when its client goes, and SQLite's WAL
makes an interrupted write as if it never started (the same as ``kill -9``, which is tested).

The same thread runs the callbacks registered with :func:`on_signal` (a loop's stop
``Event.set``). A Python signal handler runs in the main thread between two bytecodes, even
inside ``Event.wait`` while that thread holds the event's lock: a handler that sets the event
then waits for a lock its own thread holds, for ever. From the watcher thread, ``set`` just
waits its turn.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from etl.errors import ExitCode

GRACE_S = 4.0
_installed = False
_callbacks: list[Callable[[], object]] = []


class Interrupted(BaseException):
    """Raised by a signal handler to abandon a wait on the network."""


def _watch(read_fd: int, grace_s: float) -> None:
    signum = 0
    while signum not in (signal.SIGINT, signal.SIGTERM):
        try:
            data = os.read(read_fd, 64)
        except OSError:
            return
        for byte in data:
            if byte in (signal.SIGINT, signal.SIGTERM):
                signum = byte
    for callback in list(_callbacks):
        with contextlib.suppress(Exception):
            callback()
    time.sleep(grace_s)
    name = signal.Signals(signum).name
    with contextlib.suppress(OSError):
        os.write(
            2,
            f"error: {name} received, but a call into a database or the network did not return "
            f"within {grace_s:g} s; leaving without waiting for it (nothing committed is lost)\n".encode(),
        )
    os._exit(ExitCode.of_signal(signum))


def _on_sigterm(signum: int, frame: object) -> None:
    # SIGTERM ends a command the way Ctrl-C does: finally blocks run, the embedded server's
    # handle is released.
    sys.exit(ExitCode.of_signal(signum))


def install(grace_s: float = GRACE_S) -> None:
    """Install the SIGTERM handler and the watcher (once, from the main thread)."""
    global _installed
    if _installed or threading.current_thread() is not threading.main_thread():
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    signal.signal(signal.SIGTERM, _on_sigterm)
    threading.Thread(target=_watch, args=(read_fd, grace_s), name="shutdown", daemon=True).start()
    _installed = True


@contextlib.contextmanager
def on_signal(callback: Callable[[], object]) -> Iterator[bool]:
    """Within the block, run ``callback`` from the watcher thread (not from a signal handler)
    as soon as SIGINT or SIGTERM arrives. Yields whether it will: False when :func:`install`
    was not called (a library caller's process), where the caller must do without."""
    if not _installed:
        yield False
        return
    _callbacks.append(callback)
    try:
        yield True
    finally:
        _callbacks.remove(callback)


@contextlib.contextmanager
def until_signal() -> Iterator[threading.Event]:
    """An event set when SIGINT or SIGTERM arrives, for a command whose work is waiting (``etl
    db serve``): within the block neither signal raises, so the command ends as it chose to."""
    stop = threading.Event()
    quiet = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with on_signal(stop.set) as watched:
        if quiet:
            for sig in previous:
                # The watcher thread sets the event; without it, the handler must.
                signal.signal(sig, (lambda *_: None) if watched else (lambda *_: stop.set()))
        try:
            yield stop
        finally:
            if quiet:
                for sig, old in previous.items():
                    signal.signal(sig, old)


def fault_point(name: str) -> None:
    """A test hook at a named point of a job: ``ETL_CRASH_AT=name`` dies at once (as ``kill -9``
    would); ``ETL_STOP_AT=name`` stops the process (SIGSTOP), so a test can break something
    underneath it (kill its PostgreSQL, fill its disk) and let it go on (SIGCONT)."""
    if os.environ.get("ETL_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get("ETL_STOP_AT") == name:
        os.kill(os.getpid(), signal.SIGSTOP)


def _parent_is_just() -> bool:
    try:
        return Path(f"/proc/{os.getppid()}/comm").read_text().strip() == "just"
    except OSError:
        return False


@contextlib.contextmanager
def own_terminal() -> Iterator[None]:
    """Under ``just`` on a terminal, take the terminal's foreground for this process.

    Ctrl-C goes to the terminal's foreground process group. Under ``just`` that group holds
    ``just`` too, which then reports "interrupted by SIGINT" and exits 130 even after the
    collector stopped cleanly. In a process group of its own that owns the terminal, the
    collector alone hears Ctrl-C, prints its summary and exits 0, and so does ``just``. The
    terminal is handed back on the way out.
    """
    if not (os.isatty(0) and _parent_is_just()):
        yield
        return
    try:
        previous = os.tcgetpgrp(0)
        os.setpgid(0, 0)
        with _ignoring(signal.SIGTTOU):  # a background group may not otherwise take it
            os.tcsetpgrp(0, os.getpgrp())
    except OSError:
        yield
        return
    try:
        yield
    finally:
        with _ignoring(signal.SIGTTOU), contextlib.suppress(OSError):
            os.tcsetpgrp(0, previous)


@contextlib.contextmanager
def _ignoring(signum: int) -> Iterator[None]:
    old = signal.signal(signum, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signum, old)
