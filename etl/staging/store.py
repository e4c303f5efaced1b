"""The SQLite staging store for raw ticks: one file on disk in WAL mode, and its parts.

>>> with Staging(tmp_path / "ticks.sqlite3") as st:          # doctest: +SKIP
...     st.ticks.append(["BTCUSDT", "ETHUSDT"], [60262.05, 2594.25], ts_ms=1_767_225_600_000)
...     st.ticks.read_window(1_767_225_600_000, 1_767_229_200_000).height
2

Outside tools read and write the view ``ticks(symbol, ts, price)`` (``ts`` in epoch milliseconds,
UTC). The parts, each of its own module: :class:`~etl.staging.ticks.Ticks` (tick rows, the hourly
window, the purge), :class:`~etl.staging.trades.Trades` (trade rows, cursors, holes),
:class:`~etl.staging.state.State` (bans, weights, intervals, the last rollup),
:class:`~etl.staging.quarantine.Quarantine` (rows that cannot be ticks),
:class:`~etl.staging.archive_log.ArchiveLog` (what is archived, and the bars' context) and
:class:`~etl.staging.lock.WriterLock` (one collector per file); the file itself, its
transactions and checks are :class:`~etl.staging.db.StagingDb` (``st.db``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from etl.config import Settings
from etl.errors import ConfigError
from etl.staging import schema
from etl.staging.archive_log import ArchiveLog
from etl.staging.db import StagingDb
from etl.staging.lock import WriterLock
from etl.staging.quarantine import Quarantine
from etl.staging.state import State
from etl.staging.ticks import Ticks, Window
from etl.staging.trades import Trades


class Staging:
    """One staging file: its identity (``id``, ``name``) and its parts.

    ``create=False`` refuses a file that does not exist (:class:`NothingStaged`), so looking
    never creates state. ``name`` renames the file in the ledger (default: host and path).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "NORMAL",
        create: bool = True,
        name: str | None = None,
        writer: bool = False,
    ) -> None:
        """``writer``: become the file's one writer (:meth:`become_writer`) before SQLite opens
        it, so a second collector is told who has it, under whatever name it came."""
        self.lock = WriterLock(Path(path))
        if writer:
            try:
                if create and not Path(path).exists():
                    Path(path).parent.mkdir(parents=True, exist_ok=True)
                    Path(path).touch()  # an empty file is an empty SQLite database
                self.lock.hold()
            except OSError as exc:
                raise ConfigError(
                    f"cannot open the staging database {path} ({exc.strerror or exc}): set "
                    "ETL_DATA_DIR or ETL_SQLITE_PATH to a writable place"
                ) from None
        try:
            self.db = StagingDb(path, synchronous=synchronous, create=create)
        except BaseException:
            self.lock.close()
            raise
        self.path = self.db.path
        self.upgraded_from = schema.ensure(self.db)
        self.id, self.name = schema.identity(self.db, name)
        self.quarantine = Quarantine(self.db)
        self.ticks = Ticks(self.db, self.quarantine)
        self.trades = Trades(self.db)
        self.state = State(self.db)
        self.archive_log = ArchiveLog(self.db)

    def read_hours(
        self, hours: Sequence[int], *, threads: int = 2, trades: bool | None = None
    ) -> Window:
        """The ticks of ``hours`` as the rollup reads them (:meth:`Ticks.read_hours`), with the
        trade columns when the file holds any trade (so a poll-only file reads as before)."""
        if trades is None:
            trades = self.trades.exist()
        return self.ticks.read_hours(hours, trades=trades, threads=threads)

    def meta(self) -> dict[str, str]:
        return schema.meta(self.db)

    def become_writer(self) -> None:
        """Take this file's writer lock (:class:`StagingBusy` naming the collector that has it)."""
        self.lock.hold()

    def close(self) -> None:
        self.db.close()
        self.lock.close()

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_staging(settings: Settings, *, create: bool = True, writer: bool = False) -> Staging:
    """The configured staging file. ``create=False`` for commands that only look; ``writer``
    for the collector."""
    return Staging(
        settings.staging_path,
        synchronous=settings.sqlite_synchronous,
        create=create,
        name=settings.staging_name,
        writer=writer,
    )
