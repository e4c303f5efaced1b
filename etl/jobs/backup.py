"""Backup and restore: a consistent snapshot of the staging file and the warehouse, taken while the
collector keeps running, and its restore into an empty data dir.

A backup is a directory::

    manifest.json    versions, the staging file's identity, row counts, sha256 of each file, time
    ticks.sqlite3    the staging file, by SQLite's online backup API (one file, no WAL)
    warehouse.dump   the warehouse, ``pg_dump -Fc`` (absent while no warehouse exists yet)

It is written to a hidden ``.DEST.partial-PID`` beside ``DEST`` and renamed into place once
complete, so a backup that failed half-way never looks like one.

Consistency. The whole backup holds the rollup's run lock (the advisory lock every rollup and
backfill holds for its whole run), so no bar, ledger row or purge lands between the two
snapshots; the collector only appends to staging, and keeps doing so. The warehouse is dumped
first, the staging file second: the staging copy can then only be *ahead* of the ledger (ticks
of hours not yet committed), which the next rollup handles as it would after any crash. Row
counts are read in the very snapshot ``pg_dump`` dumps (``pg_export_snapshot``), so the
manifest's counts are exactly the dump's.

>>> run_backup(load_settings(), Path("/backups/etl-2026-01-05"))       # doctest: +SKIP
BackupResult(dest=PosixPath('/backups/etl-2026-01-05'), ...)
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from etl import version
from etl.config import Settings
from etl.datadir import STAGING_FILE
from etl.errors import ConfigError, DependencyError, DiskFull, NothingStaged
from etl.hours import iso, ms
from etl.shutdown import fault_point
from etl.staging.db import StagingDb
from etl.staging.schema import describe
from etl.staging.store import Staging
from etl.warehouse.connect import connect, with_timeouts
from etl.warehouse.server import resolve, running
from etl.warehouse.store import Warehouse
from etl.warehouse.tools import (
    embedded_tool,
    path_tool,
    run_tool,
    tool_version,
)

log = logging.getLogger("etl.backup")

FORMAT = 1
MANIFEST = "manifest.json"
WAREHOUSE_FILE = "warehouse.dump"
WAREHOUSE_TABLES = ("metrics_hourly", "metrics_daily", "rollup_runs")


@dataclass
class BackupResult:
    dest: Path
    manifest: dict[str, Any]
    seconds: float


@dataclass
class RestoreResult:
    src: Path
    staging_path: Path
    warehouse: str | None
    manifest: dict[str, Any]
    seconds: float


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


# -- backup ------------------------------------------------------------------------------------


def run_backup(
    settings: Settings,
    dest: Path,
    *,
    now: Callable[[], float] = time.time,
    on_wait: Callable[[], None] | None = None,
) -> BackupResult:
    """Write a backup of the configured staging file and warehouse to the new directory ``dest``.

    Refuses a ``dest`` that exists and is not an empty directory (:class:`ConfigError`). A
    missing staging file is :class:`NothingStaged`; an embedded warehouse that does not exist yet
    is left out (the manifest says so); an external one that cannot be reached, or a missing or
    too old ``pg_dump``, is a :class:`DependencyError`. ``on_wait`` is called once if a
    running rollup makes the backup wait (default: a log line).
    """
    started = time.perf_counter()
    dest = dest.expanduser().absolute()
    if dest.exists() and not _is_empty_dir(dest):
        raise ConfigError(f"{dest} exists and is not an empty directory: name a new one")
    source = settings.staging_path.absolute()
    if not source.exists():
        raise NothingStaged(
            f"nothing to back up: no staging file at {source} (set ETL_DATA_DIR or ETL_SQLITE_PATH)"
        )
    work = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    try:
        work.mkdir(parents=True)
    except OSError as exc:
        raise ConfigError(f"cannot write the backup to {dest.parent} ({exc.strerror})") from None
    try:
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "etl_version": version(),
            "created_at": iso(ms(now())),
        }
        rows: dict[str, int | None] = dict.fromkeys(("ticks", "ticks_rejected", *WAREHOUSE_TABLES))
        with ExitStack() as stack:
            server = resolve(settings)
            manifest["postgresql"] = None
            if server.exists:  # else no rollup has created the embedded server yet
                dsn = stack.enter_context(running(server, create=False))
                label, embedded = server.label, server.embedded
                wh = Warehouse(connect(dsn, connect_timeout_s=settings.pg_connect_timeout_s), label)
                stack.callback(wh.close)
                stack.enter_context(
                    wh.run_lock(on_wait or (lambda: log.info("a rollup is running; waiting")))
                )
                pg, counts = _dump_warehouse(settings, wh, dsn, embedded, work / WAREHOUSE_FILE)
                manifest["postgresql"] = pg
                rows.update(counts)
            staging, counts = _snapshot_staging(source, work / STAGING_FILE)
            manifest["staging"] = staging
            rows.update(counts)
        manifest["rows"] = rows
        manifest["files"] = {}
        for path in sorted(work.iterdir()):
            _fsync(path)
            manifest["files"][path.name] = {"sha256": sha256(path), "bytes": path.stat().st_size}
        (work / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        _fsync(work / MANIFEST)
        if dest.exists():
            dest.rmdir()  # empty (checked above): the rename replaces it
        work.rename(dest)
        _fsync(dest.parent)
    except OSError as exc:
        shutil.rmtree(work, ignore_errors=True)
        if exc.errno == errno.ENOSPC:
            raise DiskFull(
                f"disk full writing the backup to {dest.parent}: free some space and run it "
                "again (nothing of this backup was left behind)"
            ) from None
        raise DependencyError(
            f"cannot write the backup to {dest.parent} ({exc.strerror or exc}): nothing of it "
            "was left behind"
        ) from None
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return BackupResult(dest, manifest, time.perf_counter() - started)


def _dump_warehouse(
    settings: Settings, wh: Warehouse, dsn: str, embedded: bool, out: Path
) -> tuple[dict[str, Any], dict[str, int | None]]:
    major, version = wh.server_version()
    if embedded:
        pg_dump = embedded_tool("pg_dump", major)
    else:
        # pg_dump refuses a server newer than itself
        pg_dump = path_tool(
            "pg_dump", major, why=f" (the warehouse {wh.label} runs PostgreSQL {version})"
        )
    with wh.exported_snapshot(WAREHOUSE_TABLES) as (snapshot, found):
        fault_point("backup_dumping")
        run_tool(
            [pg_dump, "--format=custom", f"--snapshot={snapshot}", f"--file={out}"],
            with_timeouts(dsn, settings.pg_connect_timeout_s),
            "pg_dump",
        )
    counts: dict[str, int | None] = {table: found.get(table) for table in WAREHOUSE_TABLES}
    pg = {
        "version": version,
        "server": wh.label,
        "embedded": embedded,
        "pg_dump": tool_version(pg_dump)[1],
    }
    return pg, counts


# Run as ``python -c _ONLINE_BACKUP SOURCE OUT``; the last stderr line names a failure.
# mode=rw: never create a missing source. A busy timeout rides over the collector's commits.
_ONLINE_BACKUP = """
import sqlite3, sys
try:
    src = sqlite3.connect(f"file:{sys.argv[1]}?mode=rw", uri=True, timeout=10)
    dst = sqlite3.connect(sys.argv[2])
    src.backup(dst)
    src.close()
    dst.execute("PRAGMA journal_mode=DELETE")
    dst.close()
except sqlite3.Error as exc:
    sys.exit(str(exc))
"""


def _snapshot_staging(source: Path, out: Path) -> tuple[dict[str, Any], dict[str, int | None]]:
    """Copy the staging file consistently while the collector writes to it.

    The copy is made by SQLite's online backup API (``sqlite3_backup_*``, all pages in one step,
    so inside one read transaction: the file as of one commit; in WAL mode the collector's writes
    go on meanwhile). ADBC's connection offers no backup call, so a child process does it with
    the standard library's ``sqlite3``: SQLite's POSIX locks belong to a process, and two SQLite
    libraries in one process release each other's locks (the reason this project never opens a
    staging file with both). Page copies keep every row id, so the ledger's ``max_seq`` stays
    valid; the copy is then switched out of WAL mode so it is one self-contained file.
    """
    done = subprocess.run(
        [sys.executable, "-c", _ONLINE_BACKUP, str(source), str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        text = lines[-1] if lines else f"exit {done.returncode}"
        if "full" in text.lower():
            raise DiskFull(f"disk full writing {out}: free some space")
        raise DependencyError(f"snapshot of {source} failed ({text})")
    snap = StagingDb(out, create=False, read_only=True)
    try:
        found, check = describe(snap), snap.quick_check()
    finally:
        snap.close()
    if check != "ok":
        raise DependencyError(f"the snapshot of {source} fails SQLite's quick_check: {check}")
    meta = found["meta"]
    staging = {
        "id": meta.get("staging_id"),
        "name": meta.get("name"),
        "schema_version": meta.get("schema_version"),
        "source": str(source),
        "max_seq": found["max_seq"],
    }
    return staging, {"ticks": found["rows"], "ticks_rejected": found["rejected"]}


# -- restore -----------------------------------------------------------------------------------


def read_manifest(src: Path) -> dict[str, Any]:
    """The manifest of backup ``src``, every file checked against its sha256."""
    path = src / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{src} is not an etl backup: no {MANIFEST} in it") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path} ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ConfigError(f"{path} is not a backup manifest this etl reads (format {FORMAT})")
    for name, meta in manifest.get("files", {}).items():
        if name not in (STAGING_FILE, WAREHOUSE_FILE):
            raise ConfigError(f"{path} lists {name!r}, which is not part of an etl backup")
        if not (src / name).exists():
            raise ConfigError(f"the backup {src} is incomplete: {name} is missing")
        if sha256(src / name) != meta["sha256"]:
            raise ConfigError(
                f"the backup {src} is damaged: {name} does not match its sha256 in {MANIFEST}"
            )
    if STAGING_FILE not in manifest.get("files", {}):
        raise ConfigError(f"the backup {src} is incomplete: {MANIFEST} lists no {STAGING_FILE}")
    return manifest


def run_restore(settings: Settings, src: Path) -> RestoreResult:
    """Restore backup ``src`` into the configured data dir, which must be empty or absent.

    The staging file keeps its identity (its ``meta``), so the restored ledger and the restored
    file belong together and the next rollup goes on where the original would have. The
    warehouse goes into the embedded server of the new data dir, or into ``pg_dsn`` if set
    (an empty database). On failure, whatever was restored is removed again.
    """
    started = time.perf_counter()
    src = src.expanduser().absolute()
    manifest = read_manifest(src)
    data_dir = settings.data_dir.expanduser().absolute()
    if data_dir.exists() and not _is_empty_dir(data_dir):
        raise ConfigError(
            f"refusing to restore into {data_dir}: it is not empty; give an empty or new "
            "directory with --data-dir"
        )
    staging_path = settings.staging_path.expanduser().absolute()
    if staging_path.exists():
        raise ConfigError(f"refusing to restore over the staging file {staging_path}")
    created = [p for p in (data_dir, staging_path.parent) if not p.exists()]
    label = None
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        staging_path.parent.mkdir(parents=True, exist_ok=True)
        if manifest.get("postgresql"):
            label = _restore_warehouse(settings, src / WAREHOUSE_FILE, manifest)
        _restore_staging(settings, src / STAGING_FILE, staging_path, manifest)
    except BaseException:
        # Leave things as found, so the same command can simply be run again.
        with suppress(OSError):
            staging_path.unlink(missing_ok=True)
        if data_dir.exists():
            for child in data_dir.iterdir():
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        for path in reversed(created):
            with suppress(OSError):
                path.rmdir()
        raise
    return RestoreResult(src, staging_path, label, manifest, time.perf_counter() - started)


def _restore_warehouse(settings: Settings, dump: Path, manifest: dict[str, Any]) -> str:
    dumped_by = int(str(manifest["postgresql"]["pg_dump"]).split(".")[0])
    server = resolve(settings)
    label, embedded = server.label, server.embedded
    with running(server) as dsn:
        probe = Warehouse(connect(dsn, connect_timeout_s=settings.pg_connect_timeout_s), label)
        try:
            major, version = probe.server_version()
            present = probe.public_objects()  # pg_dump qualifies every object with public.
        finally:
            probe.close()
        if present:
            raise ConfigError(
                f"refusing to restore into {label}: its schema public already holds {present} "
                "table(s), view(s) or sequence(s); restore into an empty database"
            )
        if embedded:
            if dumped_by > major:
                raise DependencyError(
                    f"the dump was made by pg_dump {dumped_by}, newer than the embedded "
                    f"PostgreSQL {version}: restore it into an external PostgreSQL {dumped_by} "
                    "(ETL_PG_DSN) instead"
                )
            pg_restore = embedded_tool("pg_restore", major)
        else:
            # pg_restore reads archives of its own version and older ones
            pg_restore = path_tool(
                "pg_restore",
                max(dumped_by, major),
                why=" (the dump was made by pg_dump "
                f"{manifest['postgresql']['pg_dump']}, the server runs {version})",
            )
        run_tool(
            [
                pg_restore,
                "--exit-on-error",
                "--single-transaction",
                "--no-owner",
                "--no-privileges",
                str(dump),
            ],
            with_timeouts(dsn, settings.pg_connect_timeout_s),
            "pg_restore",
        )
        wh = Warehouse(connect(dsn, connect_timeout_s=settings.pg_connect_timeout_s), label)
        try:
            for table in WAREHOUSE_TABLES:
                want = manifest["rows"].get(table)
                if want is not None and wh.count_rows(table) != want:
                    raise DependencyError(
                        f"restored {wh.count_rows(table):,} rows of {table} into {label}, but "
                        f"the backup holds {want:,}: the restore was undone"
                    )
        finally:
            wh.close()
    return label


def _restore_staging(
    settings: Settings, snapshot: Path, staging_path: Path, manifest: dict[str, Any]
) -> None:
    partial = staging_path.with_name(f".{staging_path.name}.restoring")
    shutil.copyfile(snapshot, partial)
    _fsync(partial)
    partial.replace(staging_path)
    # Opening it puts it back in WAL mode; name=None keeps the backup's name with its id.
    with Staging(staging_path, synchronous=settings.sqlite_synchronous, create=False) as st:
        want = manifest["staging"]
        if not want.get("id"):
            return  # a file from 0.1.0: opening it just upgraded it, and moved bad rows aside
        if st.id != want["id"]:
            raise ConfigError(f"the restored staging file has id {st.id}, not {want['id']}")
        if st.ticks.count() != manifest["rows"]["ticks"]:
            raise DependencyError(
                f"restored {st.ticks.count():,} ticks, but the backup holds {manifest['rows']['ticks']:,}"
            )
