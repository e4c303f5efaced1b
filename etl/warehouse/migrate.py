"""The warehouse's schema versions: the ``sql/`` files, applied once each, in order, with their
checksums recorded in ``etl_migrations``.

The files ship inside the installed package (``etl/warehouse/migrations``, which is the checkout's
top-level ``sql/``) and are read with :mod:`importlib.resources`, so an installed etl migrates an
empty warehouse from wherever it runs.

>>> [m.name for m in shipped()][:2]
['001_metrics_hourly.sql', '002_partitions.sql']
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.resources import files

_NAME = re.compile(r"\d{3}_\w+\.sql")
_SUPERSEDES = re.compile(r"^-- supersedes: (\S+)$", re.MULTILINE)


@dataclass(frozen=True)
class Migration:
    """One ``sql/NNN_name.sql`` file: its name and text."""

    name: str
    text: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    @property
    def supersedes(self) -> list[str]:
        """Files this one restates whole (``-- supersedes: NAME`` lines)."""
        return _SUPERSEDES.findall(self.text)


@functools.cache
def shipped() -> tuple[Migration, ...]:
    """The migrations of this installed etl, in the order they apply."""
    folder = files("etl.warehouse") / "migrations"
    found = [p for p in folder.iterdir() if _NAME.fullmatch(p.name)]
    return tuple(
        Migration(p.name, p.read_bytes().decode()) for p in sorted(found, key=lambda p: p.name)
    )


def newest() -> str:
    """The newest migration this etl ships: the schema version it makes."""
    return shipped()[-1].name


def changed(
    migrations: Sequence[Migration], done: Mapping[str, str], applied: Sequence[str] = ()
) -> list[str]:
    """Files applied before (``done``: name to checksum) whose content changed since, except
    those an applied file replaces whole (a ``-- supersedes: NAME`` line): their objects are
    that file's now, whatever the old one held."""
    applied_now = set(done) | set(applied)
    replaced = {name for m in migrations if m.name in applied_now for name in m.supersedes}
    return [
        m.name
        for m in migrations
        if m.name in done and m.name not in replaced and done[m.name] != m.checksum
    ]


def unknown(done: Mapping[str, str], migrations: Sequence[Migration]) -> list[str]:
    """Applied files this etl does not ship, newer than its newest: a warehouse a later release
    migrated (a downgrade)."""
    last = migrations[-1].name if migrations else ""
    return sorted(name for name in done if name > last)


@dataclass
class Migrations:
    """What :meth:`Warehouse.migrate` did: files applied now, files applied before, and files
    whose content changed after they were applied (they are not applied again)."""

    applied: list[str]
    present: list[str]
    changed: list[str]
