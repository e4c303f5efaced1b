"""One tree of errors, each with the exit code the command line ends with.

Everything the program raises on purpose derives from :class:`EtlError`; the exchange client's
errors too (:mod:`etl.exchange.errors`). ``etl.cli`` is the one place that turns an error into a
line and an exit code: it prints ``str(error)`` literally and exits with ``error.exit_code``.

>>> DependencyError("PostgreSQL down").advise("run it again once it is back").exit_code
<ExitCode.UNAVAILABLE: 3>
"""

from __future__ import annotations

from enum import IntEnum
from typing import Self


class ExitCode(IntEnum):
    """Every exit code of ``etl``; supervisors read them (systemd, cron, health checks)."""

    OK = 0
    DEGRADED = 1  # `etl status`: healthy enough to answer, with problems listed
    UNEXPECTED = 1  # any other command: an error the program did not expect (a bug to report)
    CONFIG = 2  # bad configuration or input
    UNAVAILABLE = 3  # a dependency unavailable (PostgreSQL, the exchange, the disk)
    INTERRUPTED = 130  # SIGINT (Ctrl-C)
    TERMINATED = 143  # SIGTERM

    @classmethod
    def of_signal(cls, signum: int) -> ExitCode:
        return cls(128 + signum)


class EtlError(Exception):
    """Base class: a problem the user can act on, shown as one line."""

    exit_code = ExitCode.UNEXPECTED

    def advise(self, advice: str) -> Self:
        """The same error (same kind, same exit code) with ``advice`` after its message."""
        copy = type(self).__new__(type(self))
        copy.__dict__.update(self.__dict__)
        copy.args = (f"{self}: {advice}",)
        return copy


class ConfigError(EtlError):
    """Bad configuration or input: unknown symbol, bad DSN, bad date, unwritable path."""

    exit_code = ExitCode.CONFIG


class StagingBusy(ConfigError):
    """Another collector holds the staging file."""


class StagingCorrupt(ConfigError):
    """The staging file is malformed; the message carries a recovery recipe."""


class NothingStaged(ConfigError):
    """There is no staging file where the settings point (reading never creates one)."""


class DependencyError(EtlError):
    """A dependency is unavailable: PostgreSQL down or silent, exchange unreachable."""

    exit_code = ExitCode.UNAVAILABLE


class DiskFull(DependencyError):
    """A write failed for lack of space."""
