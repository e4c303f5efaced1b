"""Errors the command line turns into one line and an exit code.

Library code raises these; ``etl.cli`` prints ``str(error)`` and exits with ``error.exit_code``.
"""

from __future__ import annotations


class EtlError(Exception):
    """Base class: a problem the user can act on, shown as one line."""

    exit_code = 1


class ConfigError(EtlError):
    """Bad configuration or input: unknown symbol, bad DSN, bad date, unwritable path."""

    exit_code = 2


class DependencyError(EtlError):
    """A dependency is unavailable: PostgreSQL down, exchange unreachable at start-up."""

    exit_code = 3
