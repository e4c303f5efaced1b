"""The Parquet archive of staged ticks: where each hour goes, how it is written so that a crash
leaves no file or a whole one, its checksums, and reading it back verified.

Layout (Hive partitions; docs/archive.md)::

    <archive>/source=poll/date=2026-12-04/hour=13/<staging id>.parquet
    <archive>/source=trade/date=2026-12-04/hour=13/<staging id>.parquet
    <archive>/_manifests/<staging id>/date=2026-12-04/hour=13.json

One file per source, hour and staging file, every staged column in it (``seq, symbol, ts,
price, agg_id, qty, trades``; the trade columns null in poll files), zstd-compressed, sorted by
symbol then time (poll) or aggregate trade id (trade). The manifest of an hour lists its files
(rows, bytes, sha256, first and last times and ids) and what its bars took from outside the
ticks (the poll interval, the trade context), so the archive alone rebuilds the bars the rollup
made. The staging file records the same in its ``archive_*`` tables
(:class:`~etl.staging.archive_log.ArchiveLog`); the purge deletes only what is recorded there.

A local file is written to a hidden temporary name, fsynced, renamed into place and its folder
fsynced; an S3 object appears whole when its upload completes, or not at all.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import polars as pl
import pyarrow as pa

from etl.bars import TRADE_CONTEXT_SCHEMA, trade_context
from etl.errors import ConfigError, DependencyError, DiskFull, EtlError
from etl.hours import HOUR_MS, iso, utc

if TYPE_CHECKING:
    from etl.staging.store import Staging

FORMAT = "etl-archive/1"
SOURCES = ("poll", "trade")
MANIFESTS = "_manifests"
ZSTD_LEVEL = 3
ROW_GROUP = 512 * 1024

ARCHIVE_SCHEMA = pa.schema(
    [
        ("seq", pa.int64()),
        ("symbol", pa.string()),
        ("ts", pa.timestamp("ms", tz="UTC")),
        ("price", pa.float64()),
        ("agg_id", pa.int64()),
        ("qty", pa.float64()),
        ("trades", pa.int64()),
    ]
)

_KEY = re.compile(r"date=(\d{4}-\d{2}-\d{2})/hour=(\d{2})")


def no_crash(name: str) -> None:
    """The default crash hook: called at each named step, does nothing (the rollup hands in its
    ``crash_point``, which a test makes kill the process there)."""


def hour_path(hour: int) -> str:
    """``date=YYYY-MM-DD/hour=HH`` of the hour starting at ``hour`` (epoch ms)."""
    at = utc(hour)
    return f"date={at:%Y-%m-%d}/hour={at:%H}"


def data_key(source: str, hour: int, staging_id: str) -> str:
    return f"source={source}/{hour_path(hour)}/{staging_id}.parquet"


def manifest_key(staging_id: str, hour: int) -> str:
    return f"{MANIFESTS}/{staging_id}/{hour_path(hour)}.json"


def hour_of(key: str) -> int | None:
    """The hour (epoch ms) a key's ``date=.../hour=..`` names, if it names one."""
    found = _KEY.search(key)
    if not found:
        return None
    date, hh = found.groups()
    from datetime import UTC, datetime

    at = datetime.strptime(f"{date} {hh}", "%Y-%m-%d %H").replace(tzinfo=UTC)
    return int(at.timestamp() * 1000)


def encode(table: pa.Table) -> bytes:
    """One Parquet file: zstd, symbols dictionary-encoded, the integer columns delta-encoded."""
    import pyarrow.parquet as pq  # here: every rollup imports this module, few archive

    sink = pa.BufferOutputStream()
    pq.write_table(
        table,
        sink,
        compression="zstd",
        compression_level=ZSTD_LEVEL,
        use_dictionary=["symbol"],
        column_encoding={
            "seq": "DELTA_BINARY_PACKED",
            "ts": "DELTA_BINARY_PACKED",
            "agg_id": "DELTA_BINARY_PACKED",
            "trades": "DELTA_BINARY_PACKED",
        },
        row_group_size=ROW_GROUP,
    )
    return sink.getvalue().to_pybytes()


def archive_table(rows: pl.DataFrame, symbols: pl.DataFrame, source: str) -> pa.Table:
    """Staged rows (``seq, sym, ts, price`` and, for trades, ``agg_id, qty, trades``) as the
    archive keeps them: symbol names, ``ts`` a UTC timestamp, sorted by symbol then ``ts, seq``
    (poll) or ``agg_id`` (trade)."""
    frame = rows.join(symbols.select("sym", "symbol"), on="sym", how="left")
    order = ["symbol", "agg_id"] if source == "trade" else ["symbol", "ts", "seq"]
    frame = frame.sort(order).select(
        "seq",
        "symbol",
        pl.from_epoch("ts", "ms").dt.replace_time_zone("UTC").alias("ts"),
        "price",
        *(
            ("agg_id", "qty", "trades")
            if source == "trade"
            else (
                pl.lit(None, pl.Int64).alias("agg_id"),
                pl.lit(None, pl.Float64).alias("qty"),
                pl.lit(None, pl.Int64).alias("trades"),
            )
        ),
    )
    return frame.to_arrow().cast(ARCHIVE_SCHEMA)


def _stats(rows: pl.DataFrame, source: str) -> dict[str, Any]:
    def edge(col: str, fn: str) -> int | None:
        value = getattr(rows[col], fn)() if rows.height else None
        return None if value is None else int(value)

    trade = source == "trade"
    return {
        "rows": rows.height,
        "min_ts": edge("ts", "min"),
        "max_ts": edge("ts", "max"),
        "min_seq": edge("seq", "min"),
        "max_seq": edge("seq", "max"),
        "min_id": edge("agg_id", "min") if trade else None,
        "max_id": edge("agg_id", "max") if trade else None,
    }


# -- where the bytes go -------------------------------------------------------------------------


class _Local:
    """A directory on a local (or mounted) file system."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def where(self, key: str) -> str:
        return str(self.root / key)

    def write(self, key: str, data: bytes, crash: Callable[[str], None]) -> None:
        path = self.root / key
        made = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as fh:
            half = len(data) // 2
            fh.write(data[:half])
            fh.flush()
            crash("archive_partial")
            fh.write(data[half:])
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        for folder in [path.parent, *(p.parent for p in made)]:
            _fsync_dir(folder)

    def read(self, key: str) -> bytes | None:
        try:
            return (self.root / key).read_bytes()
        except FileNotFoundError:
            return None

    def size(self, key: str) -> int | None:
        try:
            return (self.root / key).stat().st_size
        except FileNotFoundError:
            return None

    def keys(self, prefix: str) -> list[str]:
        base = self.root / prefix
        if not base.is_dir():
            return []
        return sorted(
            str(p.relative_to(self.root))
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".")
        )


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Remote:
    """An object store through pyarrow's file systems (``s3://bucket/prefix``)."""

    def __init__(self, url: str) -> None:
        import pyarrow.fs as pafs

        self.url = url
        try:
            self.fs, self.root = pafs.FileSystem.from_uri(_one_request_writes(url))
        except (OSError, pa.ArrowInvalid) as exc:
            raise ConfigError(f"archive_dir {url} cannot be used ({_first_line(exc)})") from None
        self.root = self.root.rstrip("/")

    def where(self, key: str) -> str:
        return f"{self.url.split('?', 1)[0]}/{key}"

    def _path(self, key: str) -> str:
        return f"{self.root}/{key}"

    def write(self, key: str, data: bytes, crash: Callable[[str], None]) -> None:
        # The object exists once the upload completes (close): a crash before leaves none.
        with self.fs.open_output_stream(self._path(key)) as out:
            half = len(data) // 2
            out.write(data[:half])
            crash("archive_partial")
            out.write(data[half:])

    def read(self, key: str) -> bytes | None:
        import pyarrow.fs as pafs

        if self.fs.get_file_info(self._path(key)).type == pafs.FileType.NotFound:
            return None
        with self.fs.open_input_stream(self._path(key)) as src:
            return bytes(src.read())

    def size(self, key: str) -> int | None:
        import pyarrow.fs as pafs

        info = self.fs.get_file_info(self._path(key))
        return None if info.type == pafs.FileType.NotFound else int(info.size)

    def keys(self, prefix: str) -> list[str]:
        import pyarrow.fs as pafs

        selector = pafs.FileSelector(self._path(prefix), recursive=True, allow_not_found=True)
        start = len(self.root) + 1
        return sorted(
            info.path[start:]
            for info in self.fs.get_file_info(selector)
            if info.type == pafs.FileType.File and not info.base_name.startswith(".")
        )


def _one_request_writes(url: str) -> str:
    """``url`` with pyarrow's ``allow_delayed_open=true`` on S3, unless it names the option: a
    file smaller than one part (an hour's file, nearly always) is then one ``PutObject`` at
    close instead of a multipart upload's three requests, and a crash before close leaves
    nothing, not even invisible parts. Larger files still go as a multipart upload."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or "allow_delayed_open" in parse_qs(parts.query):
        return url
    query = f"{parts.query}&allow_delayed_open=true" if parts.query else "allow_delayed_open=true"
    return urlunsplit(parts._replace(query=query))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# -- the archive ---------------------------------------------------------------------------------


@dataclass
class Manifest:
    """One archived hour of one staging file, as its manifest says."""

    key: str
    staging_id: str
    staging_name: str
    hour: int
    max_seq: int
    interval_s: float | None
    files: list[dict[str, Any]]
    context: pl.DataFrame  # symbol, gaps, edges, holed
    context_from: str = "rollup"
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class HourFrames:
    """An archived hour read back, verified: poll ticks ``seq, symbol, ts (epoch ms), price``
    and trades ``seq, symbol, ts, price, agg_id, qty, trades``."""

    manifest: Manifest
    polls: pl.DataFrame
    trades: pl.DataFrame


class Archive:
    """The archive at ``target``: a directory, or an ``s3://bucket/prefix`` URL (pyarrow's S3
    file system: credentials and region from the AWS environment variables and config files,
    ``AWS_ENDPOINT_URL`` or ``?endpoint_override=`` for an S3-compatible server)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._io: _Local | _Remote = (
            _Remote(target) if "://" in target else _Local(Path(target).absolute())
        )

    def where(self, key: str) -> str:
        """A key as a person finds it: a path, or an ``s3://`` URL."""
        return self._io.where(key)

    def _failed(self, action: str, key: str, exc: BaseException) -> EtlError:
        reason = getattr(exc, "strerror", None) or _first_line(exc)
        full = getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or any(
            marker in str(exc) for marker in ("No space left", "QuotaExceeded", "EntityTooLarge")
        )
        where = self.where(key)
        if full:
            return DiskFull(
                f"the archive is full: cannot write {where} ({reason}): the ticks stay staged; "
                "free space on the archive target, then run `etl rollup` again"
            )
        return DependencyError(
            f"cannot {action} the archive at {where} ({reason}): the ticks stay staged; fix "
            "the archive target (ETL_ARCHIVE_DIR), then run `etl rollup` again"
        )

    def _write(self, key: str, data: bytes, crash: Callable[[str], None]) -> None:
        try:
            self._io.write(key, data, crash)
        except (OSError, pa.ArrowException) as exc:
            raise self._failed("write", key, exc) from None

    def _read(self, key: str) -> bytes | None:
        try:
            return self._io.read(key)
        except (OSError, pa.ArrowException) as exc:
            raise DependencyError(
                f"cannot read the archive at {self.where(key)} ({_first_line(exc)})"
            ) from None

    def size(self, key: str) -> int | None:
        try:
            return self._io.size(key)
        except (OSError, pa.ArrowException) as exc:
            raise DependencyError(
                f"cannot reach the archive at {self.where(key)} ({_first_line(exc)})"
            ) from None

    def _keys(self, prefix: str) -> list[str]:
        try:
            return self._io.keys(prefix)
        except (OSError, pa.ArrowException) as exc:
            raise DependencyError(
                f"cannot list the archive at {self.where(prefix)} ({_first_line(exc)})"
            ) from None

    # -- writing -------------------------------------------------------------------------------

    def write_hour(
        self,
        *,
        staging_id: str,
        staging_name: str,
        hour: int,
        max_seq: int,
        polls: pl.DataFrame,
        trades: pl.DataFrame,
        symbols: pl.DataFrame,
        interval_s: float | None,
        context: pl.DataFrame,
        context_from: str = "rollup",
        crash: Callable[[str], None] = no_crash,
    ) -> tuple[str, list[dict[str, Any]]]:
        """Write an hour's files, then its manifest; the manifest's key and the files' records.

        The same rows give the same bytes, so writing an hour again (after a crash before it
        was recorded) replaces each file with its twin."""
        files = []
        for source, rows in (("poll", polls), ("trade", trades)):
            if not rows.height:
                continue
            data = encode(archive_table(rows, symbols, source))
            key = data_key(source, hour, staging_id)
            self._write(key, data, crash)
            files.append(
                {
                    "source": source,
                    "path": key,
                    "bytes": len(data),
                    "sha256": hashlib.sha256(data).hexdigest(),
                    **_stats(rows, source),
                }
            )
        crash("archive_written")
        named = context.join(symbols.select("sym", "symbol"), on="sym", how="inner").sort("symbol")
        manifest = {
            "format": FORMAT,
            "staging_id": staging_id,
            "staging_name": staging_name,
            "hour": iso(hour),
            "hour_ms": hour,
            "max_seq": max_seq,
            "interval_s": interval_s,
            "files": files,
            "context_from": context_from,
            "trade_context": {c: named[c].to_list() for c in ("symbol", "gaps", "edges", "holed")},
        }
        key = manifest_key(staging_id, hour)
        self._write(key, json.dumps(manifest, indent=1).encode(), lambda _: None)
        crash("archive_manifest")
        return key, files

    # -- reading -------------------------------------------------------------------------------

    def manifests(
        self, lo_ms: int | None = None, hi_ms: int | None = None, staging_id: str | None = None
    ) -> list[Manifest]:
        """Every manifest of an hour in ``[lo_ms, hi_ms)`` (of one staging file, or all), by
        hour then staging file. A manifest that cannot be read as one is refused (exit 2)."""
        out = []
        prefix = f"{MANIFESTS}/{staging_id}" if staging_id else MANIFESTS
        for key in self._keys(prefix):
            hour = hour_of(key)
            if hour is None or not key.endswith(".json"):
                continue
            if (lo_ms is not None and hour < lo_ms) or (hi_ms is not None and hour >= hi_ms):
                continue
            out.append(self._manifest(key))
        return sorted(out, key=lambda m: (m.hour, m.staging_id))

    def _manifest(self, key: str) -> Manifest:
        data = self._read(key)
        try:
            raw = json.loads(data or b"")
            ctx = raw["trade_context"]
            context = pl.DataFrame(
                {c: ctx[c] for c in ("symbol", "gaps", "edges", "holed")},
                schema={
                    "symbol": pl.String,
                    "gaps": pl.Int64,
                    "edges": pl.Int64,
                    "holed": pl.Int64,
                },
            )
            if raw.get("format") != FORMAT:
                raise ValueError(f"format {raw.get('format')!r}, not {FORMAT}")
            return Manifest(
                key=key,
                staging_id=str(raw["staging_id"]),
                staging_name=str(raw["staging_name"]),
                hour=int(raw["hour_ms"]),
                max_seq=int(raw["max_seq"]),
                interval_s=None if raw["interval_s"] is None else float(raw["interval_s"]),
                files=list(raw["files"]),
                context=context,
                context_from=str(raw.get("context_from", "rollup")),
                raw=raw,
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"the archive manifest {self.where(key)} is damaged or missing "
                f"({_first_line(exc)}): it cannot be used; restore it from a copy"
            ) from None

    def unrecorded(
        self, manifests: Sequence[Manifest], lo_ms: int | None, hi_ms: int | None
    ) -> list[str]:
        """Data files of hours in ``[lo_ms, hi_ms)`` no manifest names (a write a crash cut
        before its manifest, or a stranger's file): skipped by every reader, and counted."""
        named = {f["path"] for m in manifests for f in m.files}
        out = []
        for source in SOURCES:
            for key in self._keys(f"source={source}"):
                hour = hour_of(key)
                if hour is None or not key.endswith(".parquet"):
                    continue
                if (lo_ms is not None and hour < lo_ms) or (hi_ms is not None and hour >= hi_ms):
                    continue
                if key not in named:
                    out.append(key)
        return out

    def verify(self, entry: dict[str, Any]) -> None:
        """Check a file a manifest names against its sha256 and size (:meth:`read_verified`)."""
        self._checked(entry)

    def read_verified(self, entry: dict[str, Any]) -> pa.Table:
        """A file a manifest names, read whole and checked against its sha256 and size: a
        tampered, truncated or missing file is refused, naming it (exit 2)."""
        import pyarrow.parquet as pq

        data = self._checked(entry)
        table = pq.read_table(pa.BufferReader(data))
        if table.num_rows != int(entry["rows"]):
            raise ConfigError(
                f"the archive file {self.where(entry['path'])} holds {table.num_rows:,} rows, "
                f"not {int(entry['rows']):,} as its manifest says: it is refused"
            )
        return table

    def _checked(self, entry: dict[str, Any]) -> bytes:
        key = entry["path"]
        data = self._read(key)
        where = self.where(key)
        if data is None:
            raise ConfigError(
                f"the archive file {where} is missing (its manifest names it): it cannot be used"
            )
        digest = hashlib.sha256(data).hexdigest()
        if digest != entry["sha256"] or len(data) != int(entry["bytes"]):
            raise ConfigError(
                f"the archive file {where} does not match its checksum ({len(data):,} bytes, "
                f"sha256 {digest[:12]}...; recorded {int(entry['bytes']):,} bytes, "
                f"{str(entry['sha256'])[:12]}...): it was changed or truncated, and is refused"
            )
        return data

    def read_hour(self, manifest: Manifest, *, sources: Iterable[str] = SOURCES) -> HourFrames:
        """An archived hour's ticks, every file verified (:meth:`read_verified`)."""
        wanted = set(sources)
        polls = pl.DataFrame(schema=POLL_SCHEMA)
        trades = pl.DataFrame(schema=TRADE_SCHEMA)
        for entry in manifest.files:
            if entry["source"] not in wanted:
                continue
            frame = _as_ticks(self.read_verified(entry))
            if entry["source"] == "trade":
                trades = frame.select(list(TRADE_SCHEMA))
            else:
                polls = frame.select(list(POLL_SCHEMA))
        return HourFrames(manifest, polls, trades)


POLL_SCHEMA = {"seq": pl.Int64, "symbol": pl.String, "ts": pl.Int64, "price": pl.Float64}
TRADE_SCHEMA = {**POLL_SCHEMA, "agg_id": pl.Int64, "qty": pl.Float64, "trades": pl.Int64}


def _as_ticks(table: pa.Table) -> pl.DataFrame:
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame.with_columns(ts=pl.col("ts").dt.epoch("ms")).cast(TRADE_SCHEMA)  # type: ignore[arg-type]


# -- archiving before the purge ----------------------------------------------------------------


@dataclass
class Archived:
    """What one archiving pass did, counted by what happened to each hour."""

    hours: int = 0  # hours written and recorded
    files: int = 0
    rows: int = 0
    bytes: int = 0
    already: int = 0  # recorded before with the same max_seq: not written again
    rewritten: int = 0  # recorded before, but rolled up again since (late ticks): written anew
    empty: int = 0  # nothing staged left (every row quarantined): a manifest without files
    context_at_archive: int = 0  # rolled up before etl kept the bar context: worked out now
    seconds: float = 0.0


def archive_hours(
    staging: Staging,
    archive: Archive,
    candidates: Sequence[tuple[int, int]],
    *,
    default_interval_s: float,
    now_ms: int,
    crash: Callable[[str], None] = no_crash,
) -> Archived:
    """Archive each ``(hour, max_seq)`` about to be purged, unless recorded already with that
    ``max_seq``: write its files and manifest, then record them in the staging file. Returns
    counts; any failure raises (:class:`DiskFull`, :class:`DependencyError`), and the hours
    not recorded by then must not be purged."""
    import time

    started = time.perf_counter()
    done = Archived()
    recorded = staging.archive_log.archived([hour for hour, _ in candidates])
    symbols = staging.ticks.symbols()
    for hour, max_seq in candidates:
        if recorded.get(hour) == max_seq:
            done.already += 1
            continue
        if hour in recorded:
            done.rewritten += 1
        polls, trades = staging.ticks.hour_rows(hour, max_seq)
        interval, context = staging.archive_log.context(hour)
        context_from = "rollup"
        if interval is None:
            interval = staging.state.hour_intervals([hour]).get(hour, default_interval_s)
            context_from = "archive"
        if trades.height and context.is_empty():
            context = trade_context(
                trades,
                cursors=staging.trades.cursors(),
                holes=staging.trades.holes(hour, hour + HOUR_MS),
            )
            context_from = "archive"
        if context_from == "archive":
            done.context_at_archive += 1
        key, files = archive.write_hour(
            staging_id=staging.id,
            staging_name=staging.name,
            hour=hour,
            max_seq=max_seq,
            polls=polls,
            trades=trades,
            symbols=symbols,
            interval_s=interval if polls.height else None,
            context=context.select(list(TRADE_CONTEXT_SCHEMA)),
            context_from=context_from,
            crash=crash,
        )
        staging.archive_log.record(hour, max_seq, key, files, now_ms)
        crash("archive_recorded")
        done.hours += 1
        done.empty += not files
        done.files += len(files)
        done.rows += sum(int(f["rows"]) for f in files)
        done.bytes += sum(int(f["bytes"]) for f in files)
    done.seconds = time.perf_counter() - started
    return done


def check_recorded(staging: Staging, archive: Archive, hours: Iterable[int]) -> None:
    """Before a purge: every recorded file of ``hours`` is still where it was written, with its
    size (one stat or HEAD each); one gone is refused (exit 3), and nothing is purged."""
    for hour in hours:
        for row in staging.archive_log.files(hour).iter_rows(named=True):
            size, wanted = archive.size(row["path"]), int(row["bytes"])
            if size != wanted:
                state = "gone" if size is None else f"{size:,} bytes, not {wanted:,}"
                raise DependencyError(
                    f"the archive file {archive.where(row['path'])} recorded for {iso(hour)} is "
                    f"{state}: "
                    "nothing was purged; restore it, or remove the hour's row from the staging "
                    "file's archive_hours to write it again"
                )
