"""Configuration: flag > environment > etl.toml > default, and one clear line for bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from etl.config import DEFAULT_SYMBOLS, load_settings, mask_dsn
from etl.errors import ConfigError


def test_defaults_are_the_documented_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = load_settings(env={})
    assert s.symbols == DEFAULT_SYMBOLS
    assert (s.interval_s, s.raw_retention_h, s.hourly_retention_d, s.weight_budget) == (
        5,
        24,
        400,
        0.5,
    )
    assert s.staging_path == Path("data") / "ticks.sqlite3"
    assert s.pg_dsn is None
    assert s.binance_url == "https://api.binance.com"


def test_precedence_flag_over_env_over_toml(tmp_path: Path) -> None:
    toml = tmp_path / "etl.toml"
    toml.write_text('symbols = ["ethusdt"]\ninterval_s = 7\nweight_budget = 0.25\n')
    env = {"ETL_CONFIG": str(toml), "ETL_INTERVAL_S": "3"}
    s = load_settings({"interval_s": "1.5"}, env=env)
    assert s.interval_s == 1.5  # flag
    s = load_settings({}, env=env)
    assert s.interval_s == 3.0  # env
    assert s.symbols == ("ETHUSDT",)  # toml, upper-cased
    assert s.weight_budget == 0.25
    assert s.config_file == toml


def test_etl_toml_in_the_working_directory_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("etl.toml").write_text('data_dir = "elsewhere"\n')
    assert load_settings(env={}).staging_path == Path("elsewhere") / "ticks.sqlite3"


def test_sqlite_path_defaults_under_data_dir() -> None:
    s = load_settings(env={"ETL_DATA_DIR": "/srv/etl"})
    assert s.staging_path == Path("/srv/etl/ticks.sqlite3")
    assert s.paths.pg == Path("/srv/etl/pg")


def test_duplicate_symbols_are_collapsed() -> None:
    assert load_settings(env={"ETL_SYMBOLS": "BTCUSDT, btcusdt,ETHUSDT"}).symbols == (
        "BTCUSDT",
        "ETHUSDT",
    )


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"ETL_SYMBOLS": "BTC USDT"}, "'BTC USDT'"),
        ({"ETL_SYMBOLS": 'BTCUSDT,"X"'}, "'\"X\"'"),
        ({"ETL_SYMBOLS": "A"}, "2-20 upper-case"),
        ({"ETL_SYMBOLS": ","}, "no symbols"),
        ({"ETL_INTERVAL_S": "0"}, "ETL_INTERVAL_S: '0' must be greater than 0"),
        ({"ETL_INTERVAL_S": "-5"}, "greater than 0"),
        ({"ETL_INTERVAL_S": "fast"}, "is not a number"),
        ({"ETL_WEIGHT_BUDGET": "1.5"}, "fraction"),
        ({"ETL_BINANCE_URL": "ftp://x"}, "http(s) URL"),
        ({"ETL_PG_DSN": "mysql://u:pw@h/db"}, "not a PostgreSQL URI"),
    ],
)
def test_bad_values_name_the_setting(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(env=env)
    message = str(err.value)
    assert fragment in message
    assert "\n" not in message


def test_unparsable_toml_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "etl.toml"
    bad.write_text("symbols = [\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(config_path=bad, env={})


def test_unknown_toml_key_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "etl.toml"
    bad.write_text("interval = 5\n")
    with pytest.raises(ConfigError, match="unknown key"):
        load_settings(config_path=bad, env={})


@pytest.mark.parametrize(
    ("dsn", "masked"),
    [
        ("postgresql://etl:s3cret@db:5432/etl", "postgresql://etl:***@db:5432/etl"),
        ("postgresql://etl@db/etl", "postgresql://etl@db/etl"),
        (
            "postgresql://db/etl?password=s3cret&sslmode=require",
            "postgresql://db/etl?password=***&sslmode=require",
        ),
        ("host=db user=etl password=s3cret dbname=etl", "host=db user=etl password=*** dbname=etl"),
    ],
)
def test_mask_dsn(dsn: str, masked: str) -> None:
    assert mask_dsn(dsn) == masked
    assert "s3cret" not in mask_dsn(dsn)


def test_settings_repr_hides_the_dsn() -> None:
    s = load_settings(env={"ETL_PG_DSN": "postgresql://u:s3cret@h/db"})
    assert "s3cret" not in repr(s)
    assert "s3cret" not in s.masked_dsn
