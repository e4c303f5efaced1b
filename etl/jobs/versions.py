"""``etl --version``: the installed package's version, and the warehouse's schema version (its
newest applied migration) when the warehouse can be reached without starting anything.

>>> versions(load_settings())                                  # doctest: +SKIP
Versions(package='0.5.2', schema='016_coverage_daily.sql', ...)
"""

from __future__ import annotations

from dataclasses import dataclass

from etl import version
from etl.config import Settings
from etl.errors import EtlError
from etl.warehouse.connect import probe
from etl.warehouse.server import resolve, uri_if_running

# A version query must answer at once: a server that does not is reported, not waited for.
TIMEOUT_S = 2.0
# The newest applied migration and the etl that applied it (a ledger from before versions were
# recorded has no such column: to_jsonb reads it as NULL).
_LEDGER = "SELECT to_regclass('etl_migrations') IS NOT NULL"
_SCHEMA = (
    "SELECT m.name, to_jsonb(m) ->> 'etl_version' FROM etl_migrations m "
    "ORDER BY m.name DESC LIMIT 1"
)


@dataclass
class Versions:
    """The package's version; the warehouse's schema (``None`` with ``note`` saying why)."""

    package: str
    warehouse: str
    schema: str | None = None
    applied_by: str | None = None
    note: str = ""

    def lines(self) -> list[str]:
        """What ``etl --version`` prints: plain lines, for people and ``head -1`` alike."""
        schema = self.schema or self.note
        if self.schema and self.applied_by:
            schema += f" (applied by etl {self.applied_by})"
        return [f"etl {self.package}", f"warehouse schema: {schema} [{self.warehouse}]"]


def versions(settings: Settings) -> Versions:
    server = resolve(settings)
    out = Versions(package=version(), warehouse=server.label)
    if not server.exists:
        out.note = "none: no warehouse yet"
        return out
    dsn = uri_if_running(server)
    if dsn is None:
        out.note = "unknown: the embedded server is not running (`etl db serve` starts it)"
        return out
    try:
        with probe(dsn, timeout_s=TIMEOUT_S) as read:
            rows = read(_SCHEMA) if read(_LEDGER)[0][0] else []
    except EtlError as exc:
        out.note = f"unknown: {exc}"
        return out
    if rows:
        out.schema, out.applied_by = rows[0]
    else:
        out.note = "none: no migration applied yet (`etl db init` applies them)"
    return out
