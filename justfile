# Every recipe is a thin call of the `etl` command (see README.md). Its exit code passes through
# as it is: etl says what went wrong in one line, so just adds no "recipe failed" line of its own.
set shell := ["bash", "-uc"]

# Poll Binance into the SQLite staging store; rolls up each hour as it closes.
[no-exit-message]
collect *args:
    etl collect {{args}}

# Roll up every closed, uncommitted hour into PostgreSQL (then daily bars, purge, retention).
[no-exit-message]
rollup *args:
    etl rollup {{args}}

# One screen for the whole pipeline (`just status --json` for scripts).
[no-exit-message]
status *args:
    etl status {{args}}

# Apply sql/ to the configured PostgreSQL.
[no-exit-message]
db-init:
    etl db init

# Apply (or, with --dry-run, list) the retention policies.
[no-exit-message]
retention *args:
    etl retention {{args}}

# The whole test suite (what CI runs), after the lint gate: three workers (most tests wait on
# processes, sockets and servers more than they compute; docs/testing.md has the figures).
test *args: lint
    python -m pytest -n 3 --dist worksteal --durations=20 {{args}}

# Everything but the tests marked slow (builds, installs, stories of a process or more, each
# test over 2 s): the quick loop, on four workers (the short tests wait more than they compute).
test-fast *args: lint
    python -m pytest -n 4 --dist worksteal -m "not slow" {{args}}

# ruff check and ruff format --check.
lint:
    ruff check .
    ruff format --check .

# Benchmarks (`--part 1|2|3|4`, `--runs N`, `--quick`): collector, rollup vs DuckDB and pandas, purge vs collector, trade ingest.
bench *args:
    python -m bench {{args}}

# The fake exchange and the collector at a 1 s interval (`--source trades`: every trade), offline.
[no-exit-message]
demo *args:
    etl demo {{args}}

# Generated history for the notebooks, through the real rollup (offline).
[no-exit-message]
seed-demo *args:
    etl seed-demo {{args}}

# JupyterLab on the notebooks (`--demo`: `just seed-demo`'s history; `--execute`: headless HTML).
[no-exit-message]
notebook *args:
    etl notebook {{args}}
