"""The hourly rollup child: ``etl rollup`` started in its own process once each hour has closed, and watched."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

from etl.collect.events import RollupEnded
from etl.collect.view import CollectorView
from etl.config import Settings
from etl.hours import closed_before, iso, ms
from etl.logs import rotate
from etl.staging.store import Staging

ROLLUP_RETRY_S = 300.0
# How long a stopped rollup child gets to exit on SIGTERM before it is killed.
ROLLUP_KILL_AFTER_S = 5.0


class RollupLauncher:
    """Starts ``etl rollup`` in a child process once each hour has closed, and watches it.

    A child that runs longer than ``rollup_timeout_s`` is stopped (SIGTERM, then SIGKILL) and
    reported; the next hour's rollup starts as usual. Its output goes to ``rollup.log`` in the
    data dir, rotated before a launch once it holds ``LOG_MAX_BYTES``: a file ends at most one
    run's output past it, and a run is never split between two files.
    """

    LOG_MAX_BYTES = 1 << 20
    LOG_KEEP = 3

    def __init__(
        self,
        settings: Settings,
        view: CollectorView,
        clock: Callable[[], float],
        command: Sequence[str] | None = None,
        emit: Callable[[RollupEnded], None] | None = None,
        staging: Staging | None = None,
    ) -> None:
        """``emit`` hands each child's end to the collector's listeners; ``staging`` keeps the
        outcome of a child that was stopped (it could not say so itself)."""
        self.settings, self.view, self.clock = settings, view, clock
        self.emit, self.staging = emit, staging
        self.command = list(command or [sys.executable, "-m", "etl", "rollup"])
        self.log_path = settings.paths.rollup_log
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0  # monotonic: the child runs in real time, whatever our clock
        self.done_boundary: int | None = None
        self.not_before = 0.0
        self.launched = 0
        self.failed = 0
        self.stopped = 0

    def tick(self) -> None:
        now = self.clock()
        if self.proc is not None and not self._reap(now):
            return
        boundary = closed_before(ms(now))
        if now < self.not_before or boundary == self.done_boundary:
            return
        self.done_boundary = boundary
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        rotate(self.log_path, self.LOG_MAX_BYTES, self.LOG_KEEP)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command,
                env={**os.environ, **self.settings.env(), "ETL_LOG_FORMAT": "plain"},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C of the collector must not cut a rollup short
            )
        self.started_at = time.monotonic()
        self.launched += 1
        self.view.event(f"rollup started for hours before {iso(boundary)}")

    def _reap(self, now: float) -> bool:
        """True once the child is gone (and counted); stops one that has run too long."""
        assert self.proc is not None
        code = self.proc.poll()
        ran = time.monotonic() - self.started_at
        if code is None:
            if ran <= self.settings.rollup_timeout_s:
                return False
            self.stop()
            self.stopped += 1
            self._done("stopped", ran, now)
            self.view.event(
                f"rollup ran {ran:.0f} s, past ETL_ROLLUP_TIMEOUT_S "
                f"({self.settings.rollup_timeout_s:g} s): stopped it; the next hour's rollup "
                f"starts as usual (details in {self.log_path})",
                logging.WARNING,
            )
            return True
        self.proc = None
        if code == 0:
            self._done("ok", ran, now)
            self.view.event(f"rollup finished (log: {self.log_path})")
            return True
        self.failed += 1
        self._done("failed", ran, now)
        self.view.event(
            f"rollup failed with exit {code}; retrying in {ROLLUP_RETRY_S:.0f} s "
            f"(details in {self.log_path})",
            logging.WARNING,
        )
        self.done_boundary = None
        self.not_before = now + ROLLUP_RETRY_S
        return False

    def _done(self, result: str, seconds: float, now: float) -> None:
        if self.emit is not None:
            self.emit(RollupEnded(now, result, seconds))
        if result == "stopped" and self.staging is not None:  # the child could not say so
            self.staging.state.remember_rollup(
                ms(now), f"stopped after {seconds:.0f} s (ETL_ROLLUP_TIMEOUT_S)", seconds
            )

    def stop(self) -> None:
        """Stop a running child: SIGTERM, then SIGKILL if it does not exit in time."""
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(ROLLUP_KILL_AFTER_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
