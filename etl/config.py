"""Settings: command-line flag > environment variable > ``etl.toml`` > default.

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from etl.errors import ConfigError

DEFAULT_SYMBOLS = ("BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT", "XRPUSDT")
DEFAULT_BINANCE_URL = "https://api.binance.com"
SYMBOL_RE = re.compile(r"[A-Z0-9]{2,20}")


@dataclass(frozen=True)
class Settings:
    """Resolved configuration. Build it with :func:`load_settings`."""

    symbols: tuple[str, ...] = DEFAULT_SYMBOLS
    interval_s: float = 5.0
    binance_url: str = DEFAULT_BINANCE_URL
    data_dir: Path = Path("data")
    sqlite_path: Path | None = None  # None: <data_dir>/ticks.sqlite3
    pg_dsn: str | None = field(default=None, repr=False)
    raw_retention_h: float = 24.0
    hourly_retention_d: float = 400.0
    weight_budget: float = 0.5
    # Extensions beyond DESIGN.md's table (documented in the README).
    sqlite_synchronous: str = "NORMAL"
    rollup_chunk_hours: int = 24
    backfill_min_coverage: float = 0.9
    config_file: Path | None = None

    @property
    def staging_path(self) -> Path:
        return self.sqlite_path if self.sqlite_path is not None else self.data_dir / "ticks.sqlite3"

    @property
    def embedded_pgdata(self) -> Path:
        return self.data_dir / "pg"

    @property
    def expected_samples_per_hour(self) -> float:
        return 3600.0 / self.interval_s

    @property
    def full_samples_per_hour(self) -> int:
        """Samples that make a poll bar complete (``backfill_min_coverage`` of the expected)."""
        return math.ceil(self.expected_samples_per_hour * self.backfill_min_coverage)

    @property
    def masked_dsn(self) -> str:
        return mask_dsn(self.pg_dsn) if self.pg_dsn else f"embedded ({self.embedded_pgdata})"

    def env(self) -> dict[str, str]:
        """These settings as ``ETL_*`` variables, to hand to a child process."""
        out = {
            "ETL_SYMBOLS": ",".join(self.symbols),
            "ETL_INTERVAL_S": repr(self.interval_s),
            "ETL_BINANCE_URL": self.binance_url,
            "ETL_DATA_DIR": str(self.data_dir),
            "ETL_SQLITE_PATH": str(self.staging_path),
            "ETL_RAW_RETENTION_H": repr(self.raw_retention_h),
            "ETL_HOURLY_RETENTION_D": repr(self.hourly_retention_d),
            "ETL_WEIGHT_BUDGET": repr(self.weight_budget),
            "ETL_SQLITE_SYNCHRONOUS": self.sqlite_synchronous,
            "ETL_ROLLUP_CHUNK_HOURS": str(self.rollup_chunk_hours),
            "ETL_BACKFILL_MIN_COVERAGE": repr(self.backfill_min_coverage),
        }
        if self.pg_dsn:
            out["ETL_PG_DSN"] = self.pg_dsn
        return out


def mask_dsn(dsn: str) -> str:
    """Hide the password of a DSN (URI or ``key=value`` form) so it can be printed."""
    if "://" in dsn:
        parts = urlsplit(dsn)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            if ":" in userinfo:
                userinfo = userinfo.split(":", 1)[0] + ":***"
            netloc = f"{userinfo}@{host}"
        query = re.sub(r"(?i)(password=)[^&]*", r"\1***", parts.query)
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    return re.sub(r"(?i)(password\s*=\s*)('[^']*'|\S+)", r"\1***", dsn)


def _symbols(value: Any) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else list(value)
    cleaned = [str(s).strip().upper() for s in items if str(s).strip()]
    if not cleaned:
        raise ValueError("no symbols given; list at least one, e.g. BTCUSDT,ETHUSDT")
    bad = [s for s in cleaned if not SYMBOL_RE.fullmatch(s)]
    if bad:
        names = ", ".join(repr(s) for s in bad)
        raise ValueError(
            f"invalid symbol(s) {names}: a symbol is 2-20 upper-case letters and digits, e.g. BTCUSDT"
        )
    return tuple(dict.fromkeys(cleaned))  # Binance rejects duplicates (-1151): keep the first


def _positive(kind: type) -> Callable[[Any], Any]:
    def parse(value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError(f"{value!r} is not a number")
        try:
            number = kind(value)
        except (TypeError, ValueError):
            raise ValueError(f"{value!r} is not a number") from None
        if not math.isfinite(number) or number <= 0:
            raise ValueError(f"{value!r} must be greater than 0")
        return number

    return parse


def _fraction(value: Any) -> float:
    number = _positive(float)(value)
    if number > 1:
        raise ValueError(f"{value!r} must be a fraction in (0, 1]")
    return number


def _url(value: Any) -> str:
    text = str(value).strip().rstrip("/")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{value!r} is not an http(s) URL")
    return text


def _dsn(value: Any) -> str | None:
    text = str(value).strip()
    if not text:
        return None
    if "://" in text and not text.startswith(("postgresql://", "postgres://")):
        raise ValueError(f"{mask_dsn(text)!r} is not a PostgreSQL URI (postgresql://...)")
    return text


def _synchronous(value: Any) -> str:
    text = str(value).strip().upper()
    if text not in ("NORMAL", "FULL"):
        raise ValueError(f"{value!r} must be NORMAL or FULL")
    return text


def _path(value: Any) -> Path:
    return Path(str(value)).expanduser()


# key -> (environment variable, parser)
_KEYS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "symbols": ("ETL_SYMBOLS", _symbols),
    "interval_s": ("ETL_INTERVAL_S", _positive(float)),
    "binance_url": ("ETL_BINANCE_URL", _url),
    "data_dir": ("ETL_DATA_DIR", _path),
    "sqlite_path": ("ETL_SQLITE_PATH", _path),
    "pg_dsn": ("ETL_PG_DSN", _dsn),
    "raw_retention_h": ("ETL_RAW_RETENTION_H", _positive(float)),
    "hourly_retention_d": ("ETL_HOURLY_RETENTION_D", _positive(float)),
    "weight_budget": ("ETL_WEIGHT_BUDGET", _fraction),
    "sqlite_synchronous": ("ETL_SQLITE_SYNCHRONOUS", _synchronous),
    "rollup_chunk_hours": ("ETL_ROLLUP_CHUNK_HOURS", _positive(int)),
    "backfill_min_coverage": ("ETL_BACKFILL_MIN_COVERAGE", _fraction),
}


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found: fix --config / ETL_CONFIG") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not valid TOML ({exc}): fix or remove it"
        ) from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read ({exc.strerror})") from None
    unknown = sorted(set(data) - set(_KEYS))
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(_KEYS)}"
        )
    return data


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    *,
    config_path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve settings from flags (``overrides``), environment, ``etl.toml`` and defaults.

    ``overrides`` keys are the toml keys; ``None`` values mean "not given".
    Raises :class:`ConfigError` with a one-line message naming the bad value.
    """
    env = os.environ if env is None else env
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}

    path_text = config_path or env.get("ETL_CONFIG")
    toml_path = Path(path_text).expanduser() if path_text else Path("etl.toml")
    toml: dict[str, Any] = {}
    if path_text or toml_path.exists():
        toml = _read_toml(toml_path)

    values: dict[str, Any] = {}
    for key, (env_name, parse) in _KEYS.items():
        for source, raw in (
            (f"--{key.replace('_', '-')}", overrides.get(key)),
            (env_name, env.get(env_name)),
            (f"{toml_path}: {key}", toml.get(key)),
        ):
            if raw is None or (source == env_name and raw == "" and key != "pg_dsn"):
                continue
            try:
                values[key] = parse(raw)
            except ValueError as exc:
                raise ConfigError(f"{source}: {exc}") from None
            break
    known = {f.name for f in fields(Settings)}
    return Settings(
        **{k: v for k, v in values.items() if k in known},
        config_file=toml_path if toml else None,
    )
