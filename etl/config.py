"""Settings: command-line flag > environment variable > ``etl.toml`` > default.

Each setting is declared once, as a field of :class:`Settings` with its environment variable,
parser (type and bounds), help text and metavar. That one declaration drives the dataclass, the
environment, ``etl.toml``, the command-line options (before and after every command), the
configuration table of docs/configuration.md and validation.

>>> s = load_settings(env={"ETL_SYMBOLS": "btcusdt,ETHUSDT", "ETL_INTERVAL_S": "2"})
>>> s.symbols, s.interval_s
(('BTCUSDT', 'ETHUSDT'), 2.0)
>>> mask_dsn("postgresql://etl:s3cret@db.example:5432/etl")
'postgresql://etl:***@db.example:5432/etl'
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import Field, dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from etl import dsn as dsns
from etl import redact
from etl.datadir import DataDir
from etl.errors import ConfigError

DEFAULT_SYMBOLS = ("BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT", "XRPUSDT")
DEFAULT_BINANCE_URL = "https://api.binance.com"
DEFAULT_WS_URL = "wss://stream.binance.com:9443"
SYMBOL_RE = re.compile(r"[A-Z0-9]{2,20}")
_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def mask_dsn(dsn: str) -> str:
    """Hide the password of a DSN (URI or ``key=value`` form) so it can be printed.

    Read by libpq's rules (:mod:`etl.dsn`) and rebuilt with each secret as ``***``; a
    malformed DSN has everything that may hold a piece of its password hidden.
    """
    return dsns.mask(dsn)


# -- parsers: text (or a TOML value) in, typed value out; ValueError names what is wrong -------


def _symbols(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise ValueError(
            f"{value!r} is not a list of symbols; write them as a comma list (ETL_SYMBOLS, "
            '--symbols) or a TOML list (symbols = ["BTCUSDT", "ETHUSDT"])'
        )
    cleaned = [str(s).strip().upper() for s in items if str(s).strip()]
    if not cleaned:
        raise ValueError("no symbols given; list at least one, e.g. BTCUSDT,ETHUSDT")
    bad = [s for s in cleaned if not SYMBOL_RE.fullmatch(s)]
    if bad:
        names = ", ".join(repr(s) for s in bad[:5])
        more = f" and {len(bad) - 5:,} more" if len(bad) > 5 else ""
        raise ValueError(
            f"invalid symbol(s) {names}{more}: a symbol is 2-20 upper-case letters and digits, "
            "e.g. BTCUSDT"
        )
    return tuple(dict.fromkeys(cleaned))  # Binance rejects duplicates (-1151): keep the first


# A number as people write it: no digit separators ("1_0" is 10 to Python), no "inf" or "nan".
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_INTEGER = re.compile(r"[+-]?\d+")


def _number(kind: type, lo: float, hi: float, unit: str = "") -> Callable[[Any], Any]:
    """A number in ``[lo, hi]``; zero and below always read "must be greater than 0"."""
    suffix = f" {unit}" if unit else ""
    shape = _INTEGER if kind is int else _NUMBER

    def parse(value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError(f"{value!r} is not a number")
        if isinstance(value, str) and not shape.fullmatch(value.strip()):
            raise ValueError(f"{value!r} is not a {'whole ' if kind is int else ''}number")
        try:
            number = kind(value)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"{value!r} is not a number") from None
        if not math.isfinite(number) or number <= 0:
            raise ValueError(f"{value!r} must be greater than 0")
        if not lo <= number <= hi:
            raise ValueError(f"{value!r} must be between {lo:g} and {hi:g}{suffix}")
        return number

    return parse


def _fraction(lo: float) -> Callable[[Any], float]:
    """A fraction in ``[lo, 1]``."""

    def parse(value: Any) -> float:
        number = _number(float, 0, math.inf)(value)
        if not lo <= number <= 1:
            raise ValueError(f"{value!r} must be a fraction between {lo:g} and 1")
        return number

    return parse


def _url_of(kind: str, *schemes: str) -> Callable[[Any], str]:
    """A parser of URLs with a host and one of ``schemes``; ``kind`` names them in errors."""

    def parse(value: Any) -> str:
        text = str(value).strip().rstrip("/")
        try:
            parts = urlsplit(text)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a URL ({exc})") from None
        if parts.scheme not in schemes or not parts.netloc:
            raise ValueError(f"{value!r} is not {kind} URL")
        return text

    return parse


def _dsn(value: Any) -> str | None:
    """A DSN libpq reads as its author meant (:meth:`etl.dsn.Dsn.check`), in either form."""
    text = str(value).strip()
    if not text:
        return None
    parsed = dsns.parse(text)
    if parsed.problem:
        raise ValueError(f"bad PostgreSQL DSN {parsed.masked()}: {parsed.problem}")
    sslmode = parsed.params.get("sslmode")
    if sslmode is not None and sslmode not in _SSLMODES:
        raise ValueError(
            f"bad PostgreSQL DSN {parsed.masked()}: sslmode={sslmode!r} is not one of "
            f"{', '.join(_SSLMODES)}"
        )
    return text


def _port(value: Any) -> int:
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ValueError(f"{value!r} is not a port number") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"{value!r} must be a port number, 0 to 65535")
    return number


def _choice(*options: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = str(value).strip().lower()
        if text not in options:
            raise ValueError(f"{value!r} must be one of {', '.join(options)}")
        return text

    return parse


def _synchronous(value: Any) -> str:
    return _choice("normal", "full")(value).upper()


def _path(value: Any) -> Path:
    text = str(value).strip()
    if not text:
        raise ValueError("an empty path")
    return Path(text).expanduser()


def _name(value: Any) -> str:
    text = str(value).strip()
    if not text or len(text) > 200 or any(ord(c) < 32 for c in text):
        raise ValueError(f"{value!r} must be 1-200 printable characters")
    return text


def _archive_target(value: Any) -> str:
    """A local directory, or an ``s3://bucket/prefix`` URL (query options such as
    ``?endpoint_override=host:port&scheme=http`` go to pyarrow's S3 filesystem)."""
    text = str(value).strip()
    if not text:
        raise ValueError("an empty archive target")
    if "://" not in text:
        return str(Path(text).expanduser())
    parts = urlsplit(text)
    if parts.scheme != "s3":
        raise ValueError(
            f"{value!r} is not an archive target: give a directory or an s3://bucket/prefix URL"
        )
    if not parts.netloc or "@" in parts.netloc:
        raise ValueError(
            f"{value!r} names no bucket (s3://bucket/prefix; credentials come from the AWS "
            "environment variables or config, never the URL)"
        )
    return text.rstrip("/")


def _setting(
    default: Any,
    *,
    env: str,
    parse: Callable[[Any], Any],
    help: str,
    metavar: str,
    shown: str | None = None,
    empty_means_unset: bool = False,
    secret: bool = False,
) -> Any:
    """Declare a setting: its default, environment variable, parser, help and metavar.

    ``shown`` is how the default reads in help and docs when it is computed from others;
    ``secret`` (a DSN) keeps it out of ``repr``, and its passwords out of all output
    (:mod:`etl.redact`).
    """
    return field(
        default=default,
        repr=not secret,
        metadata={
            "env": env,
            "parse": parse,
            "help": help,
            "metavar": metavar,
            "shown": shown,
            "empty_means_unset": empty_means_unset,
            "secret": secret,
        },
    )


@dataclass(frozen=True)
class Settings:
    """Resolved configuration. Build it with :func:`load_settings`."""

    symbols: tuple[str, ...] = _setting(
        DEFAULT_SYMBOLS,
        env="ETL_SYMBOLS",
        parse=_symbols,
        metavar="LIST",
        help="symbols to collect (comma list); checked against exchangeInfo (status TRADING)",
    )
    interval_s: float = _setting(
        5.0,
        env="ETL_INTERVAL_S",
        parse=_number(float, 0.1, 3600, "seconds"),
        metavar="SECONDS",
        help="poll interval in seconds, 0.1 to 3600",
    )
    binance_url: str = _setting(
        DEFAULT_BINANCE_URL,
        env="ETL_BINANCE_URL",
        parse=_url_of("an http(s)", "http", "https"),
        metavar="URL",
        help="exchange REST base URL",
    )
    source: str = _setting(
        "poll",
        env="ETL_SOURCE",
        parse=_choice("poll", "trades"),
        metavar="poll|trades",
        help="what `etl collect` stores: poll samples the ticker every interval_s; trades "
        "stores every aggregate trade from the WebSocket streams (bars equal the exchange's)",
    )
    ws_url: str = _setting(
        DEFAULT_WS_URL,
        env="ETL_WS_URL",
        parse=_url_of("a ws(s)", "ws", "wss"),
        metavar="URL",
        help="exchange WebSocket streams base URL (source trades)",
    )
    data_dir: Path = _setting(
        Path("data"),
        env="ETL_DATA_DIR",
        parse=_path,
        metavar="DIR",
        shown="./data",
        help="where the SQLite file and the embedded PostgreSQL live (relative: to the working "
        "directory)",
    )
    sqlite_path: Path | None = _setting(
        None,
        env="ETL_SQLITE_PATH",
        parse=_path,
        metavar="FILE",
        shown="<data_dir>/ticks.sqlite3",
        help="staging database",
    )
    pg_dsn: str | None = _setting(
        None,
        env="ETL_PG_DSN",
        parse=_dsn,
        metavar="DSN",
        shown="unset: embedded server in <data_dir>/pg",
        empty_means_unset=True,
        secret=True,
        help="PostgreSQL URI; its password is never printed",
    )
    raw_retention_h: float = _setting(
        24.0,
        env="ETL_RAW_RETENTION_H",
        parse=_number(float, 0, 87_600, "hours"),
        metavar="HOURS",
        help="staged ticks older than this are purged once rolled up",
    )
    hourly_retention_d: float = _setting(
        400.0,
        env="ETL_HOURLY_RETENTION_D",
        parse=_number(float, 0, 36_500, "days"),
        metavar="DAYS",
        help="hourly partitions older than this are dropped (daily bars are kept)",
    )
    weight_budget: float = _setting(
        0.5,
        env="ETL_WEIGHT_BUDGET",
        parse=_fraction(0.01),
        metavar="FRACTION",
        help="fraction of the exchange's per-minute weight limit the collector may use, 0.01 to 1",
    )
    staging_name: str | None = _setting(
        None,
        env="ETL_STAGING_NAME",
        parse=_name,
        metavar="NAME",
        shown="host:staging path",
        help="readable name of this staging file in the warehouse's ledger",
    )
    pg_connect_timeout_s: float = _setting(
        10.0,
        env="ETL_PG_CONNECT_TIMEOUT_S",
        parse=_number(float, 2, 3600, "seconds"),
        metavar="SECONDS",
        help="give up connecting to PostgreSQL after this (exit 3)",
    )
    metrics_port: int | None = _setting(
        None,
        env="ETL_METRICS_PORT",
        parse=_port,
        metavar="PORT",
        shown="off",
        empty_means_unset=True,
        help="serve Prometheus /metrics of `etl collect` on this port (0: any free port, logged)",
    )
    metrics_host: str = _setting(
        "127.0.0.1",
        env="ETL_METRICS_HOST",
        parse=_name,
        metavar="HOST",
        help="address /metrics listens on (0.0.0.0 for every interface)",
    )
    log_format: str = _setting(
        "auto",
        env="ETL_LOG_FORMAT",
        parse=_choice("auto", "rich", "plain", "json"),
        metavar="auto|plain|json",
        help="log lines: auto is coloured on a terminal and plain when piped; json for log "
        "shippers",
    )
    sqlite_synchronous: str = _setting(
        "NORMAL",
        env="ETL_SQLITE_SYNCHRONOUS",
        parse=_synchronous,
        metavar="NORMAL|FULL",
        help="FULL for power-loss safety of the last polls",
    )
    rollup_chunk_hours: int = _setting(
        24,
        env="ETL_ROLLUP_CHUNK_HOURS",
        parse=_number(int, 1, 744),
        metavar="HOURS",
        help="most hours per rollup chunk (also capped at about 2.5 M ticks)",
    )
    rollup_timeout_s: float = _setting(
        1800.0,
        env="ETL_ROLLUP_TIMEOUT_S",
        parse=_number(float, 1, 86_400, "seconds"),
        metavar="SECONDS",
        help="the collector stops an hourly rollup child that runs longer than this",
    )
    backfill_min_coverage: float = _setting(
        0.9,
        env="ETL_BACKFILL_MIN_COVERAGE",
        parse=_fraction(0.01),
        metavar="FRACTION",
        help="a poll bar below this coverage is replaced by a kline bar, 0.01 to 1",
    )
    archive_dir: str | None = _setting(
        None,
        env="ETL_ARCHIVE_DIR",
        parse=_archive_target,
        metavar="DIR|s3://BUCKET/PREFIX",
        shown="off",
        empty_means_unset=True,
        help="before the purge, write each hour's staged ticks as Parquet here (a directory or "
        "an s3:// URL; docs/archive.md); a failing archive stops the purge",
    )
    config_file: Path | None = None

    @property
    def paths(self) -> DataDir:
        """Everything under the data dir (:mod:`etl.datadir`)."""
        return DataDir(self.data_dir, self.sqlite_path)

    @property
    def staging_path(self) -> Path:
        return self.paths.staging

    def for_demo(self, *, keep_pg_dsn: bool = False) -> Settings:
        """These settings moved to the demo data dir, with its own embedded server (unless
        ``keep_pg_dsn``): generated or fake prices never land in the real warehouse."""
        return replace(
            self,
            data_dir=self.paths.demo.root,
            sqlite_path=None,
            pg_dsn=self.pg_dsn if keep_pg_dsn else None,
            staging_name=None,
        )

    def command(self, *words: str) -> str:
        """An ``etl`` command line for advice, keeping where these settings point when that is not
        the default, so the advice works as written: ``etl --data-dir /srv/etl rollup``."""
        flags: list[str] = []
        if self.config_file is not None and self.config_file != Path("etl.toml"):
            flags += ["--config", str(self.config_file)]
        if self.data_dir != Path("data"):
            flags += ["--data-dir", str(self.data_dir)]
        if self.sqlite_path is not None:
            flags += ["--sqlite-path", str(self.sqlite_path)]
        return " ".join(["etl", *map(_quoted, flags), *words])

    @property
    def expected_samples_per_hour(self) -> float:
        return 3600.0 / self.interval_s

    @property
    def masked_dsn(self) -> str:
        return mask_dsn(self.pg_dsn) if self.pg_dsn else f"embedded ({self.paths.pg})"

    def env(self) -> dict[str, str]:
        """These settings as ``ETL_*`` variables, to hand to a child process.

        Paths are made absolute, so a child started elsewhere finds the same files.
        """
        out: dict[str, str] = {}
        for spec in setting_fields():
            value = getattr(self, spec.name)
            if spec.name == "sqlite_path":
                value = self.staging_path
            if spec.name == "archive_dir" and value is not None and "://" not in value:
                value = Path(value)  # a child started elsewhere finds the same directory
            if value is None:
                continue
            out[spec.metadata["env"]] = _format(value)
        return out


def _quoted(word: str) -> str:
    """A word as a shell reads it back (quoted when it holds spaces or shell characters)."""
    import shlex

    return shlex.quote(word)


def _format(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, Path):
        return str(value.absolute())
    if isinstance(value, float):
        return repr(value)
    return str(value)


def setting_fields() -> tuple[Field[Any], ...]:
    """Every declared setting, in declaration order."""
    return tuple(f for f in fields(Settings) if "env" in f.metadata)


def shown_default(spec: Field[Any]) -> str:
    """How a setting's default reads in help and in docs/configuration.md."""
    if spec.metadata["shown"]:
        return str(spec.metadata["shown"])
    default = spec.default
    if isinstance(default, tuple):
        return ",".join(default)
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    return str(default)


def markdown_table() -> list[str]:
    """The configuration table of docs/configuration.md, generated from the declarations."""
    lines = ["| key (toml) | env | default | meaning |", "|---|---|---|---|"]
    for spec in setting_fields():
        lines.append(
            f"| `{spec.name}` | `{spec.metadata['env']}` | {shown_default(spec)} | "
            f"{spec.metadata['help']} |"
        )
    return lines


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {exc.start}): save it as UTF-8"
        ) from None
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found: fix --config / ETL_CONFIG") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not valid TOML ({exc}): fix or remove it"
        ) from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read ({exc.strerror})") from None
    known = [spec.name for spec in setting_fields()]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(known)}"
        )
    return data


def _sources(
    spec: Field[Any],
    overrides: Mapping[str, Any],
    env: Mapping[str, str],
    toml: dict,
    toml_path: Path,
) -> Iterator[tuple[str, Any]]:
    """Where a setting may come from, strongest first: ``(label, raw value)``."""
    yield f"--{spec.name.replace('_', '-')}", overrides.get(spec.name)
    yield spec.metadata["env"], env.get(spec.metadata["env"])
    yield f"{toml_path}: {spec.name}", toml.get(spec.name)


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    *,
    config_path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve settings from flags (``overrides``), environment, ``etl.toml`` and defaults.

    ``overrides`` keys are the toml keys; ``None`` values mean "not given". An empty value is
    refused (``ETL_SYMBOLS=""`` is a mistake, not "the defaults"), except where empty means
    "off" (``ETL_PG_DSN=""``: the embedded server). Raises :class:`ConfigError` with a one-line
    message naming the source of the bad value.
    """
    env = os.environ if env is None else env
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}

    path_text = config_path or env.get("ETL_CONFIG")
    toml_path = Path(path_text).expanduser() if path_text else Path("etl.toml")
    toml: dict[str, Any] = {}
    if path_text or toml_path.exists():
        toml = _read_toml(toml_path)

    values: dict[str, Any] = {}
    for spec in setting_fields():
        if spec.metadata["secret"]:  # every source's, the ones overridden too: all are secrets
            for _label, raw in _sources(spec, overrides, env, toml, toml_path):
                if isinstance(raw, str):
                    redact.remember_dsn(raw.strip(), env)
        for label, raw in _sources(spec, overrides, env, toml, toml_path):
            if raw is None:
                continue
            if isinstance(raw, str) and not raw.strip():
                if spec.metadata["empty_means_unset"]:
                    values[spec.name] = None
                    break
                raise ConfigError(f"{label} is set but empty: give a value or unset it")
            try:
                values[spec.name] = spec.metadata["parse"](raw)
            except ValueError as exc:
                raise ConfigError(f"{label}: {exc}") from None
            break
    return Settings(**values, config_file=toml_path if toml else None)
