"""Errors the command line turns into one line and an exit code.

Library code raises these; ``etl.cli`` prints ``str(error)`` literally and exits with
``error.exit_code``. Exit codes: 2 bad configuration or input, 3 a dependency unavailable.
"""

from __future__ import annotations


class EtlError(Exception):
    """Base class: a problem the user can act on, shown as one line."""

    exit_code = 1


class ConfigError(EtlError):
    """Bad configuration or input: unknown symbol, bad DSN, bad date, unwritable path."""

    exit_code = 2


class StagingBusy(ConfigError):
    """Another collector holds the staging file."""


class StagingCorrupt(ConfigError):
    """The staging file is malformed; the message carries a recovery recipe."""


class NothingStaged(ConfigError):
    """There is no staging file where the settings point (reading never creates one)."""


class DependencyError(EtlError):
    """A dependency is unavailable: PostgreSQL down or silent, exchange unreachable."""

    exit_code = 3


class DiskFull(DependencyError):
    """A write failed for lack of space."""
