# Every recipe is a thin call of the `etl` command (see README.md).
set shell := ["bash", "-uc"]

# Poll Binance into the SQLite staging store; rolls up each hour as it closes.
collect *args:
    etl collect {{args}}

# Roll up every closed, uncommitted hour into PostgreSQL (then daily bars, purge, retention).
rollup *args:
    etl rollup {{args}}

# One screen for the whole pipeline (`just status --json` for scripts).
status *args:
    etl status {{args}}

# Apply sql/ to the configured PostgreSQL.
db-init:
    etl db init

# Apply (or, with --dry-run, list) the retention policies.
retention *args:
    etl retention {{args}}

# The whole test suite (what CI runs), after the lint gate.
test *args: lint
    python -m pytest {{args}}

# ruff check and ruff format --check.
lint:
    ruff check .
    ruff format --check .

# Benchmarks (`--part 1|2|3|4`, `--runs N`, `--quick`): collector, rollup vs DuckDB and pandas, purge vs collector, trade ingest.
bench *args:
    python -m bench {{args}}

# The fake exchange and the collector at a 1 s interval, fully offline (data in data/demo).
demo *args:
    etl demo {{args}}

# Generated history for the notebooks, through the real rollup (offline).
seed-demo *args:
    etl seed-demo {{args}}

# JupyterLab on notebooks/, reading this configuration's warehouse (`--demo`: `just seed-demo`'s).
notebook *args:
    etl notebook {{args}}
