"""One writer per staging file: the collector's OS lock, held for its whole life."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from etl.errors import (
    StagingBusy,
)


class WriterLock:
    """The lock of the staging file at ``path``; a second holder gets :class:`StagingBusy`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock_file: IO[str] | None = None

    @property
    def lock_path(self) -> Path:
        # Beside the real file, symlinks resolved: two names for one file share one lock.
        real = self.path.resolve()
        return real.with_name(real.name + ".lock")

    def hold(self) -> None:
        """Take the collector's lock on this file for this process's lifetime.

        An OS lock (``flock``), so the kernel releases it when the process dies, ``kill -9``
        included. A second collector gets :class:`StagingBusy` naming the holder's pid.
        """
        if self._lock_file is not None:
            return
        handle = self.lock_path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise StagingBusy(
                f"another collector (pid {holder}) is writing to {self.path}: stop it first, "
                "or give this one its own ETL_DATA_DIR / ETL_SQLITE_PATH"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock_file = handle

    def release(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # closing the descriptor releases the flock
            self._lock_file = None
