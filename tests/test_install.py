"""What users install, tested as they run it: the wheel and the sdist built from this checkout,
the wheel installed (with its dependencies) into a fresh virtual environment, and every step of
the pipeline run from a directory outside the checkout, with nothing of the checkout on the path.
The service unit is run the way systemd would: as an unprivileged user, from that install.

An editable install (what CI and the other tests use) finds ``sql/`` and ``notebooks/`` in the
checkout, so it cannot show a package that forgot them; these tests can."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import etl
from etl.config import load_settings, setting_fields
from etl.exchange.fake.rest import FakeExchange
from etl.hours import HOUR_MS, hour_floor
from tests.conftest import start, wait_for
from tests.pgutil import execute, query, seed_ticks

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "etl-collect.service"
ENV_EXAMPLE = ROOT / "deploy" / "etl.env.example"
SERVICE_USER = "nobody"


@dataclass
class Built:
    wheel: Path
    sdist: Path


@dataclass
class Installed:
    """A virtual environment holding the built wheel and its dependencies."""

    venv: Path
    unprivileged: bool  # its interpreter can be run by SERVICE_USER

    @property
    def etl(self) -> Path:
        return self.venv / "bin" / "etl"


def as_service_user() -> list[str]:
    """The command prefix that runs a program as SERVICE_USER, as systemd's ``User=`` does:
    ``setpriv`` changes the ids and executes the program in its own place (``runuser`` would stay
    as its parent, between a SIGTERM and the service)."""
    import pwd

    user = pwd.getpwnam(SERVICE_USER)
    return [
        str(shutil.which("setpriv")),
        f"--reuid={user.pw_uid}",
        f"--regid={user.pw_gid}",
        "--clear-groups",
        "--",
    ]


def _shared_dir(prefix: str) -> Path:
    """A temporary directory every user may enter (the service user runs from it)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


@pytest.fixture(scope="session")
def built() -> Iterator[Built]:
    """The sdist and the wheel, the wheel built from the sdist (as ``python -m build`` does), so
    a file the sdist forgot is missing from the wheel too."""
    out = _shared_dir("etl-build-")
    done = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # setuptools warns of every folder it would leave out: the package lists them all.
    assert "would be ignored" not in done.stdout + done.stderr, done.stderr[-3000:]
    (wheel,) = out.glob("etl-*.whl")
    (sdist,) = out.glob("etl-*.tar.gz")
    yield Built(wheel, sdist)
    shutil.rmtree(out, ignore_errors=True)


def _interpreter() -> tuple[str, bool]:
    """A Python >= 3.11 for the service venv, preferring one the unprivileged service user can
    run (this one may live under /root, which is closed to others); and whether it can. The
    same interpreter must answer for both users: where it cannot be reached, a sandbox may run
    another one in its place."""
    script = "import sys, venv, ensurepip; assert sys.version_info >= (3, 11); print(sys.version)"
    for python in [sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"]:
        if not Path(python).exists():
            continue
        mine = subprocess.run([python, "-c", script], capture_output=True, text=True, timeout=60)
        if mine.returncode != 0:
            continue
        if os.geteuid() != 0 or not shutil.which("setpriv"):
            return python, False
        theirs = subprocess.run(
            [*as_service_user(), python, "-c", script], capture_output=True, text=True, timeout=60
        )
        if theirs.returncode == 0 and theirs.stdout == mine.stdout:
            return python, True
    return sys.executable, False


@pytest.fixture(scope="session")
def installed(built: Built) -> Iterator[Installed]:
    """``python -m venv`` and ``pip install <wheel>``: what the service unit's comments say."""
    python, unprivileged = _interpreter()
    venv = _shared_dir("etl-venv-") / "venv"
    subprocess.run([python, "-m", "venv", str(venv)], check=True, timeout=300, env=clean_env())
    done = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", str(built.wheel)],
        capture_output=True,
        text=True,
        timeout=900,
        env=clean_env(),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (venv / "bin" / "etl").exists(), done.stdout + done.stderr
    yield Installed(venv, unprivileged)
    shutil.rmtree(venv.parent, ignore_errors=True)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a user's shell: no ETL_* settings, nothing of the checkout on the
    path, no virtual environment but the one whose command is run."""
    drop = ("ETL_", "PYTHON", "VIRTUAL_ENV", "TEST_PG", "COLUMNS", "LINES")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(str(ROOT))
    )
    return {**env, **extra}


def test_the_wheel_ships_every_module_migration_and_notebook_and_the_sdist_every_file_of_it(
    built: Built,
) -> None:
    wheel = set(zipfile.ZipFile(built.wheel).namelist())
    package = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "etl").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    # The checkout reaches sql/ and notebooks/ through symlinks inside the package: both are
    # there as files in the wheel.
    package |= {f"etl/warehouse/migrations/{p.name}" for p in (ROOT / "sql").glob("*.sql")}
    package |= {f"etl/jobs/notebooks/{p.name}" for p in (ROOT / "notebooks").glob("*.ipynb")}
    assert package - wheel == set()
    assert any(n.endswith("014_bar_rule_again.sql") for n in wheel)
    entry_points = next(n for n in wheel if n.endswith(".dist-info/entry_points.txt"))
    assert "etl = etl.cli.app:main" in zipfile.ZipFile(built.wheel).read(entry_points).decode()

    with tarfile.open(built.sdist) as tar:
        names = tar.getnames()
    top = names[0].split("/")[0]
    in_sdist = {n.removeprefix(top + "/") for n in names}
    assert {n for n in wheel if n.startswith("etl/")} - in_sdist == set()
    assert {"pyproject.toml", "README.md", "CHANGELOG.md"} <= in_sdist


@pytest.fixture
def elsewhere() -> Iterator[Path]:
    """A working directory outside the checkout that every user may enter."""
    path = _shared_dir("etl-elsewhere-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def run(
    installed: Installed, args: list[str], cwd: Path, env: dict[str, str], timeout: float = 180
):
    return subprocess.run(
        [str(installed.etl), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _past_hours(path: Path, symbols: list[str], hours: int) -> int:
    """Ticks of whole closed hours ending an hour ago, and of a whole closed day, as a
    collector would have staged them; how many distinct hours that is (fewer than 24 + hours
    in the small hours of the day, when the two overlap)."""
    now = int(time.time() * 1000)
    day = (now // (24 * HOUR_MS) - 1) * 24 * HOUR_MS  # yesterday, closed
    seed_ticks(path, symbols, day, polls=48, interval_ms=HOUR_MS // 2)
    first = hour_floor(now) - (hours + 1) * HOUR_MS
    seed_ticks(path, symbols, first, polls=hours * 12, interval_ms=300_000)
    return len({day + k * HOUR_MS for k in range(24)} | {first + k * HOUR_MS for k in range(hours)})


def count(installed: Installed, table: str, cwd: Path, env: dict[str, str]) -> int:
    """Rows of ``table``, through the installed ``etl db shell`` (psql of the embedded server)."""
    done = run(installed, ["db", "shell", "--", "-tAc", f"SELECT count(*) FROM {table}"], cwd, env)
    assert done.returncode == 0, done.stdout + done.stderr
    return int(done.stdout.strip())


def test_the_installed_package_runs_each_step_from_another_directory(
    installed: Installed, elsewhere: Path
) -> None:
    """The quick start's warehouse (the embedded server, in the data dir), every command a user
    runs, from a directory that is not the checkout."""
    data = elsewhere / "data"
    symbols = ["BTCUSDT", "ETHUSDT"]
    env = clean_env(ETL_SYMBOLS=",".join(symbols), ETL_INTERVAL_S="0.5")
    done = run(installed, ["--version"], elsewhere, env)
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"etl \d+\.\d+\.\d+", done.stdout.splitlines()[0]), done.stdout
    assert "none: no warehouse yet" in done.stdout

    done = run(installed, ["db", "init"], elsewhere, env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert all(f in done.stdout for f in ("014_bar_rule_again.sql", "016_coverage_daily.sql"))

    serving = start([str(installed.etl), "db", "serve"], env, cwd=elsewhere)
    try:
        wait_for(serving, "is up at", timeout=60)
        done = run(installed, ["--version"], elsewhere, env)
        assert "warehouse schema: 016_coverage_daily.sql" in done.stdout, done.stdout
        url = run(installed, ["db", "url"], elsewhere, env).stdout.strip()
        assert url.startswith("postgresql://") and str(data / "pg") in url, url
    finally:
        serving.send_signal(signal.SIGINT)
        out, _ = serving.communicate(timeout=30)
    assert serving.returncode == 0 and "stopped serving" in out, out

    with FakeExchange(symbols, ws=False) as exchange:
        collect = ["collect", "--polls", "3", "--no-rollup", "--binance-url", exchange.url]
        done = run(installed, collect, elsewhere, env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 polls ok" in done.stdout + done.stderr

    staged = _past_hours(data / "ticks.sqlite3", symbols, hours=3)
    done = run(installed, ["rollup"], elsewhere, env)
    assert done.returncode == 0, done.stdout + done.stderr
    hourly = count(installed, "metrics_hourly", elsewhere, env)
    assert hourly >= 2 * staged and count(installed, "metrics_daily", elsewhere, env) >= 2

    done = run(installed, ["status", "--json"], elsewhere, env)
    assert done.returncode in (0, 1), done.stdout + done.stderr
    assert json.loads(done.stdout)["warehouse"]["committed_hours"] >= staged

    done = run(installed, ["backup", str(elsewhere / "backup")], elsewhere, env)
    assert done.returncode == 0, done.stdout + done.stderr
    restored = {**env, "ETL_DATA_DIR": str(elsewhere / "restored")}
    done = run(installed, ["restore", str(elsewhere / "backup")], elsewhere, restored)
    assert done.returncode == 0, done.stdout + done.stderr
    assert count(installed, "metrics_hourly", elsewhere, restored) == hourly


def test_a_warehouse_migrated_by_a_newer_etl_is_refused_before_anything_is_written(
    installed: Installed, elsewhere: Path, make_db: Callable[[], str]
) -> None:
    dsn = make_db()
    env = clean_env(ETL_PG_DSN=dsn, ETL_DATA_DIR=str(elsewhere / "data"))
    assert run(installed, ["db", "init"], elsewhere, env).returncode == 0
    execute(
        dsn,
        "INSERT INTO etl_migrations (name, checksum, etl_version) "
        "VALUES ('099_from_the_future.sql', 'x', '9.9.9')",
    )
    before = query(dsn, "SELECT * FROM etl_migrations ORDER BY name").rows()
    done = run(installed, ["db", "init"], elsewhere, env)
    assert done.returncode == 2, done.stdout + done.stderr
    line = done.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line
    assert "099_from_the_future.sql" in line and "9.9.9" in line and etl.__version__ in line, line
    assert query(dsn, "SELECT * FROM etl_migrations ORDER BY name").rows() == before


def test_the_service_unit_runs_as_shipped_as_an_unprivileged_user_and_sigterm_stops_it(
    installed: Installed, elsewhere: Path
) -> None:
    """The unit's ExecStart, with its EnvironmentFile's settings, as its user, in its state
    directory, from the installed package: ticks staged, the hourly rollup child commits the
    closed hours (into the embedded server, started as that user), SIGTERM ends it with exit 0."""
    unit = _directives(UNIT.read_text())
    assert unit["Restart"] == ["on-failure"] and unit["KillSignal"] == ["SIGTERM"]
    assert unit["EnvironmentFile"] and unit["WorkingDirectory"] == ["/var/lib/etl"]
    example = _environment_file(ENV_EXAMPLE.read_text())
    known = {spec.metadata["env"] for spec in setting_fields()}
    assert set(example) <= known, set(example) - known
    load_settings(env=example)  # every value in the example is valid
    (exec_start,) = unit["ExecStart"]
    argv = shlex.split(exec_start)
    assert argv[0] == "/opt/etl/venv/bin/etl", "the unit's comments install into /opt/etl/venv"
    argv[0] = str(installed.etl)

    if shutil.which("systemd-analyze"):
        copy = elsewhere / UNIT.name
        copy.write_text(UNIT.read_text().replace("/opt/etl/venv/bin/etl", str(installed.etl)))
        done = subprocess.run(
            ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0 and not done.stderr.strip(), done.stderr

    if os.geteuid() != 0 or shutil.which("setpriv") is None or not installed.unprivileged:
        pytest.skip(
            "needs root (to become the service user), setpriv, and a Python the service user "
            "may run (none found outside /root)"
        )
    state = elsewhere / "state"  # StateDirectory=etl: /var/lib/etl, owned by the unit's user
    state.mkdir()
    shutil.chown(state, SERVICE_USER)
    env = clean_env(**example)
    data = Path(env["ETL_DATA_DIR"].replace("/var/lib/etl", str(state)))
    symbols = env["ETL_SYMBOLS"].split(",")
    with FakeExchange(symbols, ws=False) as exchange:
        env.update(ETL_DATA_DIR=str(data), ETL_BINANCE_URL=exchange.url, HOME=str(state))
        data.mkdir()
        _past_hours(data / "ticks.sqlite3", symbols, hours=2)
        for path in [data, *data.iterdir()]:
            shutil.chown(path, SERVICE_USER)
        proc = start([*as_service_user(), *argv], env, cwd=state)
        try:
            seen = wait_for(proc, "rollup finished", 1, timeout=120)
            assert "poll ok" in seen or "polls ok" in seen or wait_for(proc, "poll ok", 1, 30)
        finally:
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "stopped after" in out and "Traceback" not in out
    log = (data / "rollup.log").read_text()
    assert "hours rolled up" in log and "error" not in log.lower(), log
    owners = {p.stat().st_uid for p in data.rglob("*") if not p.is_symlink()}
    assert owners == {_uid(SERVICE_USER)}, "everything the service wrote is its user's"


def _uid(user: str) -> int:
    import pwd

    return pwd.getpwnam(user).pw_uid


def _directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def _environment_file(text: str) -> dict[str, str]:
    """systemd's EnvironmentFile= syntax: KEY=value lines, # and ; comments, optional quotes."""
    env = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key.strip()] = value
    return env
